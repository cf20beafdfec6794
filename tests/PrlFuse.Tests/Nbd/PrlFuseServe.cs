using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using System.Text;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Nbd;

/// <summary>
/// `prlfuse serve` of the installed binary, in the foreground on a Unix socket: started and waited for until the socket
/// accepts a connection; stopped with SIGTERM (the graceful stop), or killed, whatever happened, when disposed.
/// </summary>
public sealed class PrlFuseServe : IDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _stderr = new();

    public PrlFuseServe(string disk, string socket, params string[] options)
    {
        Socket = socket;
        var psi = new ProcessStartInfo(PrlFuseCli.Binary)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (string arg in (string[])["serve", disk, "--socket", socket, .. options])
        {
            psi.ArgumentList.Add(arg);
        }

        _process = Process.Start(psi) ?? throw new InvalidOperationException("cannot start prlfuse serve");
        _process.StandardInput.Close();
        _process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is not null)
            {
                lock (_stderr)
                {
                    _stderr.AppendLine(e.Data);
                }
            }
        };
        _process.OutputDataReceived += (_, _) => { };
        _process.BeginErrorReadLine();
        _process.BeginOutputReadLine();

        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (!Accepts(socket))
        {
            if (_process.HasExited)
            {
                _process.WaitForExit();
                Assert.Fail($"prlfuse serve exited {_process.ExitCode} before it served: {Stderr}");
            }

            Assert.True(DateTime.UtcNow < deadline, $"prlfuse serve did not accept connections within 60 s: {Stderr}");
            Thread.Sleep(50);
        }
    }

    public string Socket { get; }

    public int Pid => _process.Id;

    public bool HasExited => _process.HasExited;

    public string Stderr
    {
        get
        {
            lock (_stderr)
            {
                return _stderr.ToString();
            }
        }
    }

    /// <summary>The NBD URI of an export ("current", or a snapshot's {GUID}, its braces escaped as a URI wants).</summary>
    public string Uri(string export) => $"nbd+unix:///{System.Uri.EscapeDataString(export)}?socket={Socket}";

    public string Uri(Guid snapshot) => Uri(snapshot.ToString("B"));

    /// <summary>SIGTERM, then its exit code once it has ended (it flushes and closes the images first).</summary>
    public int Stop()
    {
        if (!_process.HasExited)
        {
            ProcessRunner.Run("kill", "-TERM", _process.Id.ToString(CultureInfo.InvariantCulture));
        }

        Assert.True(_process.WaitForExit(TimeSpan.FromSeconds(60)), $"prlfuse serve did not end within 60 s of SIGTERM: {Stderr}");
        _process.WaitForExit();
        return _process.ExitCode;
    }

    public void Dispose()
    {
        try
        {
            if (!_process.HasExited)
            {
                ProcessRunner.Run("kill", ["-TERM", _process.Id.ToString(CultureInfo.InvariantCulture)], check: false);
                if (!_process.WaitForExit(TimeSpan.FromSeconds(30)))
                {
                    _process.Kill();
                    _process.WaitForExit();
                }
            }
        }
        finally
        {
            _process.Dispose();
        }
    }

    /// <summary>Whether a Unix socket at <paramref name="path"/> accepts a connection now.</summary>
    public static bool Accepts(string path)
    {
        if (!File.Exists(path))
        {
            return false;
        }

        using var probe = new System.Net.Sockets.Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            probe.Connect(new UnixDomainSocketEndPoint(path));
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }
}
