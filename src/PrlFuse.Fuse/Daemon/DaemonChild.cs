using PrlFuse.Core;

namespace PrlFuse.Fuse.Daemon;

/// <summary>
/// A daemon's side of <see cref="DaemonLauncher"/> (the mount daemon, the NBD server): a session of its own, so it
/// outlives the terminal and the command that started it; then, once it serves, the ready line to the waiting parent
/// and its way out of the parent's pipes. /dev/null and the log file are opened before it mounts or listens (so a
/// failure is still reported to the parent), and swapped in for stdio once readiness is told.
/// </summary>
public sealed class DaemonChild
{
    private readonly int _devNull;
    private readonly int _log;

    private DaemonChild(int devNull, int log)
    {
        _devNull = devNull;
        _log = log;
    }

    /// <summary>Starts the daemon's own session and opens what stdio becomes: /dev/null, and <paramref name="log"/> (a full path) for stderr.</summary>
    public static DaemonChild Begin(string? log)
    {
        Posix.SetSid();
        int devNull = Posix.Open("/dev/null", Posix.OReadWrite | Posix.OCloexec, 0);
        if (devNull < 0)
        {
            throw new PrlFuseException("/dev/null", $"cannot be opened (errno {Posix.LastError})");
        }

        int logFd = devNull;
        if (log is not null)
        {
            logFd = Posix.Open(log, Posix.OWriteOnly | Posix.OCreate | Posix.OAppend | Posix.OCloexec, 0x180 /* 0600 */);
            if (logFd < 0)
            {
                throw new PrlFuseException(log, $"cannot open the log file (errno {Posix.LastError}); choose a writable path for --log");
            }
        }

        return new DaemonChild(devNull, logFd);
    }

    /// <summary>Tells the waiting parent we serve, then points stdio away from its pipes.</summary>
    public void ReportReady()
    {
        Console.Out.WriteLine(DaemonLauncher.ReadyLine);
        Console.Out.Flush();
        Console.Error.Flush();
        Posix.Dup2(_devNull, 0);
        Posix.Dup2(_devNull, 1);
        Posix.Dup2(_log, 2);

        // .NET's console streams write to their own duplicates of fds 1 and 2, made when first used: they still
        // lead to the parent's pipe, whose reader is gone. New ones duplicate the new fds, so the log gets our lines.
        Console.SetOut(new StreamWriter(Console.OpenStandardOutput()) { AutoFlush = true });
        Console.SetError(new StreamWriter(Console.OpenStandardError()) { AutoFlush = true });
    }
}
