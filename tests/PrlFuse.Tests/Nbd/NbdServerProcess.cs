using System.Diagnostics;
using System.Globalization;
using System.Text;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Nbd;

/// <summary>
/// An NBD server under test, running in the foreground as a child process: the installed `prlfuse serve`, or with
/// PRLFUSE_NBD_SERVER=qemu-nbd, qemu-nbd of the same disk (the stand-in the tests were first written against, and a
/// check that they judge servers by the protocol, not by one implementation). Stopped with SIGTERM when disposed.
/// </summary>
public sealed class NbdServerProcess : IDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _output = new();

    private NbdServerProcess(Process process, string address, string commandLine)
    {
        _process = process;
        Address = address;
        CommandLine = commandLine;
    }

    /// <summary>"qemu-nbd" when PRLFUSE_NBD_SERVER says so, else "prlfuse".</summary>
    public static string Kind => Environment.GetEnvironmentVariable("PRLFUSE_NBD_SERVER") == "qemu-nbd" ? "qemu-nbd" : "prlfuse";

    public static bool IsQemu => Kind == "qemu-nbd";

    /// <summary>The Unix socket path, or HOST:PORT.</summary>
    public string Address { get; }

    public string CommandLine { get; }

    public int Pid => _process.Id;

    public bool HasExited => _process.HasExited;

    public string Output
    {
        get
        {
            lock (_output)
            {
                return _output.ToString();
            }
        }
    }

    /// <summary>
    /// Serves the top of <paramref name="chain"/> as export "current" at <paramref name="address"/> (a Unix socket path,
    /// or 127.0.0.1:PORT): `prlfuse serve BUNDLE`, or qemu-nbd of the chain's top (its only export; no snapshots). With
    /// <paramref name="tlsDir"/> (ca-cert.pem, server-cert.pem, server-key.pem) the server requires TLS.
    /// </summary>
    public static NbdServerProcess ServeChain(QemuChain chain, string address, bool readOnly, string? tlsDir = null)
    {
        bool unix = address.StartsWith('/');
        string host = unix ? "" : address[..address.LastIndexOf(':')];
        string port = unix ? "" : address[(address.LastIndexOf(':') + 1)..];
        var args = new List<string>();
        string program;
        if (IsQemu)
        {
            program = "qemu-nbd";
            args.AddRange(["--image-opts", Qemu.ChainOptions(chain.ChainFiles(chain.Levels.Count - 1, 0)), "--persistent", "--shared=8", "-x", "current"]);
            args.AddRange(unix ? ["--socket", address] : ["-b", host, "-p", port]);
            if (readOnly)
            {
                args.Add("--read-only");
            }

            if (tlsDir is not null)
            {
                // qemu-nbd asks clients for certificates unless told not to; prlfuse does not.
                args.AddRange(["--object", $"tls-creds-x509,id=tls0,dir={tlsDir},endpoint=server,verify-peer=off", "--tls-creds", "tls0"]);
            }
        }
        else
        {
            program = PrlFuseCli.Binary;
            args.AddRange(["serve", chain.Bundle]);
            args.AddRange(unix ? ["--socket", address] : ["--listen", address]);
            if (readOnly)
            {
                args.Add("--read-only");
            }

            if (tlsDir is not null)
            {
                args.AddRange(["--tls-cert", Path.Combine(tlsDir, "server-cert.pem"), "--tls-key", Path.Combine(tlsDir, "server-key.pem")]);
            }
        }

        return Start(program, args, address, probe: tlsDir is null);
    }

    /// <summary>A TCP port on 127.0.0.1 that nothing listens on (just now).</summary>
    public static int FreePort()
    {
        var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        int port = ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return port;
    }

    /// <summary>
    /// Starts <paramref name="program"/> and waits until <paramref name="address"/> accepts connections (and, with
    /// <paramref name="probe"/>, answers a plaintext handshake).
    /// </summary>
    public static NbdServerProcess Start(string program, IReadOnlyList<string> args, string address, bool probe = true)
    {
        var psi = new ProcessStartInfo(program)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }

        var process = Process.Start(psi) ?? throw new InvalidOperationException($"cannot start {program}");
        var server = new NbdServerProcess(process, address, program + " " + string.Join(' ', args));
        process.OutputDataReceived += (_, e) => server.Append(e.Data);
        process.ErrorDataReceived += (_, e) => server.Append(e.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        try
        {
            server.WaitUntilServing(TimeSpan.FromSeconds(30), probe);
        }
        catch
        {
            server.Dispose();
            throw;
        }

        return server;
    }

    private void Append(string? line)
    {
        if (line is not null)
        {
            lock (_output)
            {
                _output.AppendLine(line);
            }
        }
    }

    private void WaitUntilServing(TimeSpan limit, bool handshake)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            if (_process.HasExited)
            {
                _process.WaitForExit();
                throw new InvalidOperationException($"{CommandLine} exited {_process.ExitCode} before serving:\n{Output}");
            }

            if (!Address.StartsWith('/') || File.Exists(Address))
            {
                try
                {
                    using var probe = NbdTestClient.Connect(Address, TimeSpan.FromSeconds(5));
                    probe.ReadGreeting();
                    probe.Send(NbdTestClient.ClientFlagBytes(NbdWire.ClientFixedNewstyle));
                    if (handshake)
                    {
                        probe.SendOption(NbdWire.OptAbort, []);
                    }

                    probe.ShutdownSend();
                    probe.WaitForClose(TimeSpan.FromSeconds(5));
                    return;
                }
                catch (IOException) when (clock.Elapsed < limit)
                {
                }
            }

            if (clock.Elapsed > limit)
            {
                throw new TimeoutException($"{CommandLine} did not serve {Address} within {limit.TotalSeconds:0} s:\n{Output}");
            }

            Thread.Sleep(50);
        }
    }

    /// <summary>The server's open sockets: entries of /proc/PID/fd that link to "socket:[...]".</summary>
    public int CountSockets()
    {
        int count = 0;
        foreach (string fd in Directory.EnumerateFileSystemEntries($"/proc/{Pid}/fd"))
        {
            try
            {
                if (new FileInfo(fd).LinkTarget?.StartsWith("socket:", StringComparison.Ordinal) == true)
                {
                    count++;
                }
            }
            catch (IOException)
            {
                // closed while listed
            }
        }

        return count;
    }

    /// <summary>The fewest sockets the server held over a second: its listeners, once the readiness probe is closed.</summary>
    public int IdleSockets()
    {
        int least = int.MaxValue;
        for (int i = 0; i < 10; i++)
        {
            least = Math.Min(least, CountSockets());
            Thread.Sleep(100);
        }

        return least;
    }

    /// <summary>Waits until the server holds at most <paramref name="baseline"/> sockets; the count it settled at.</summary>
    public int WaitForSockets(int baseline, TimeSpan limit)
    {
        var clock = Stopwatch.StartNew();
        int count;
        while ((count = CountSockets()) > baseline && clock.Elapsed < limit)
        {
            Thread.Sleep(50);
        }

        return count;
    }

    /// <summary>SIGTERM, then waits for the exit (SIGKILL after <paramref name="limit"/>); the exit code.</summary>
    public int Stop(TimeSpan limit)
    {
        if (!_process.HasExited)
        {
            ProcessRunner.Run("kill", ["-TERM", Pid.ToString(CultureInfo.InvariantCulture)], check: false);
            if (!_process.WaitForExit(limit))
            {
                _process.Kill(entireProcessTree: true);
                _process.WaitForExit();
                throw new TimeoutException($"{CommandLine} did not exit within {limit.TotalSeconds:0} s of SIGTERM:\n{Output}");
            }
        }

        _process.WaitForExit();
        return _process.ExitCode;
    }

    public void Dispose()
    {
        try
        {
            if (!_process.HasExited)
            {
                Stop(TimeSpan.FromSeconds(30));
            }
        }
        catch (TimeoutException)
        {
        }
        finally
        {
            _process.Dispose();
        }
    }
}
