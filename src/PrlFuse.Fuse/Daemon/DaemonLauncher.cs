using System.Diagnostics;
using System.Text;
using PrlFuse.Core;

namespace PrlFuse.Fuse.Daemon;

/// <summary>A daemon that ended without reporting ready: its exit status and what it said on stderr.</summary>
public sealed record DaemonFailure(int ExitCode, string Said);

/// <summary>
/// What a daemon is to <see cref="DaemonLauncher"/>: what to call it in messages (<paramref name="What"/>), the path its
/// failures name (<paramref name="Place"/>), the option that runs it in the foreground instead, and the check that
/// it answers once it said it serves (throws <see cref="PrlFuseException"/> when it does not).
/// </summary>
public sealed record DaemonKind(string What, string Place, string ForegroundHint, Action ConfirmAnswers);

/// <summary>
/// Starts prlfuse again as a detached daemon (.NET cannot fork): the mount daemon, or the NBD server. It waits until
/// the daemon answers (the mount a lookup, the server a connection). Until it serves, the daemon's stdout is a pipe
/// to us: it writes its notices there (relayed to the user), then <see cref="ReadyLine"/> (see
/// <see cref="DaemonChild"/>). Its stderr says why when it fails.
/// </summary>
public static class DaemonLauncher
{
    internal const string ReadyLine = "PRLFUSE-READY";

    private static readonly TimeSpan ReadyTimeout = TimeSpan.FromSeconds(60);

    /// <summary>Starts the mount daemon: ready once <paramref name="mountpoint"/> answers a lookup (see <see cref="Start(IEnumerable{string}, DaemonKind, TextWriter)"/>).</summary>
    public static DaemonFailure? Start(IEnumerable<string> arguments, string mountpoint, TextWriter notices) =>
        Start(arguments, new DaemonKind("mount daemon", mountpoint, "--foreground", () => ConfirmAnswers(mountpoint)), notices);

    /// <summary>
    /// Runs this program with <paramref name="arguments"/> from "/" and waits: null once the daemon reports ready and
    /// answers (<see cref="DaemonKind.ConfirmAnswers"/>), or how it failed. Lines it writes before that go to
    /// <paramref name="notices"/>. Throws <see cref="PrlFuseException"/> when it cannot be started, hangs, or fails
    /// without saying why.
    /// </summary>
    public static DaemonFailure? Start(IEnumerable<string> arguments, DaemonKind kind, TextWriter notices)
    {
        string program = Environment.ProcessPath ?? throw new PrlFuseException(null, $"cannot find the prlfuse program to start the {kind.What}");
        var psi = new ProcessStartInfo(program)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
            WorkingDirectory = "/",
        };

        // Under `dotnet prlfuse.dll` the process is the host: it needs the assembly again. The apphost and the
        // single-file binary are the program itself (there argv[0] is the dll or the binary, never to be repeated).
        if (Path.GetFileNameWithoutExtension(program) == "dotnet")
        {
            psi.ArgumentList.Add(Path.GetFullPath(Environment.GetCommandLineArgs()[0]));
        }

        foreach (var arg in arguments)
        {
            psi.ArgumentList.Add(arg);
        }

        using var child = Process.Start(psi) ?? throw new PrlFuseException(null, $"cannot start the {kind.What}");
        child.StandardInput.Close();
        var stderr = new StringBuilder();
        child.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is not null)
            {
                lock (stderr)
                {
                    stderr.AppendLine(e.Data);
                }
            }
        };
        child.BeginErrorReadLine();

        var deadline = DateTime.UtcNow + ReadyTimeout;
        while (DateTime.UtcNow < deadline)
        {
            var line = child.StandardOutput.ReadLineAsync();
            if (!line.Wait(deadline - DateTime.UtcNow) || line.Result is null)
            {
                break;
            }

            if (line.Result == ReadyLine)
            {
                kind.ConfirmAnswers();
                return null;
            }

            notices.WriteLine(line.Result);
        }

        if (!child.WaitForExit(5000))
        {
            child.Kill(entireProcessTree: true);
            throw new PrlFuseException(kind.Place, $"the {kind.What} did not become ready in time; rerun with {kind.ForegroundHint} to see what it does");
        }

        child.WaitForExit();
        string said = Snapshot(stderr);
        if (said.Trim().Length == 0)
        {
            throw new PrlFuseException(kind.Place, $"the {kind.What} exited with status {child.ExitCode} without saying why; rerun with {kind.ForegroundHint} --debug");
        }

        return new DaemonFailure(child.ExitCode, said);
    }

    /// <summary>The daemon said it serves: the mount must answer a lookup before the launch counts as a success.</summary>
    private static void ConfirmAnswers(string mountpoint)
    {
        string current = Path.Combine(mountpoint, BundleFileSystem.CurrentFileName);
        var probe = Task.Run(() => File.Exists(current));
        if (!probe.Wait(TimeSpan.FromSeconds(30)))
        {
            throw new PrlFuseException(mountpoint, "the mount does not answer (the daemon hangs); see 'prlfuse status', and 'fusermount3 -uz' clears it");
        }

        if (!probe.Result)
        {
            throw new PrlFuseException(mountpoint, $"the daemon reported the mount ready, but {current} is not there; see the daemon's --log");
        }
    }

    private static string Snapshot(StringBuilder sb)
    {
        lock (sb)
        {
            return sb.ToString();
        }
    }
}
