using System.Diagnostics;
using System.Runtime.InteropServices;
using PrlFuse.Core;
using PrlFuse.Core.Engine;
using PrlFuse.Core.IO;
using PrlFuse.Core.Images;
using PrlFuse.Fuse;
using PrlFuse.Fuse.Native;

namespace PrlFuse.Cli.Commands;

/// <summary>
/// `prlfuse mount`. Without --foreground the command starts itself again as a detached daemon (.NET cannot fork)
/// and returns once the daemon reports, on a pipe, that the mount is ready or why it failed.
/// </summary>
internal static class MountCommand
{
    private const string ReadyLine = "PRLFUSE-READY";
    private static readonly TimeSpan ReadyTimeout = TimeSpan.FromSeconds(60);

    public static int Run(MountOptions o)
    {
        return o.Foreground || o.DaemonChild ? Serve(o) : StartDaemon(o);
    }

    private static int StartDaemon(MountOptions o)
    {
        // Fail fast on what the parent can see, so the common mistakes need no daemon round trip.
        string mountpoint = CheckMountpoint(o.MountPoint, clearStale: false);
        var psi = new ProcessStartInfo(Environment.ProcessPath!)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        string self = Environment.GetCommandLineArgs()[0];
        if (self.EndsWith(".dll", StringComparison.OrdinalIgnoreCase))
        {
            psi.ArgumentList.Add(self); // running as `dotnet prlfuse.dll`
        }

        foreach (var arg in DaemonArguments(o, mountpoint))
        {
            psi.ArgumentList.Add(arg);
        }

        using var child = Process.Start(psi) ?? throw new PrlFuseException(null, "cannot start the mount daemon");
        child.StandardInput.Close();
        var stderr = new System.Text.StringBuilder();
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
        // Before it is ready the daemon writes its notices (warnings, a cleared stale mount) on stdout: relay them.
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
                return Program.ExitOk;
            }

            Console.Error.WriteLine(line.Result);
        }

        if (!child.WaitForExit(5000))
        {
            child.Kill(entireProcessTree: true);
            throw new PrlFuseException(mountpoint, "the mount daemon did not become ready in time");
        }

        child.WaitForExit();
        Console.Error.Write(Snapshot(stderr));
        return child.ExitCode == 0 ? Program.ExitError : child.ExitCode;
    }

    private static string Snapshot(System.Text.StringBuilder sb)
    {
        lock (sb)
        {
            return sb.ToString();
        }
    }

    private static IEnumerable<string> DaemonArguments(MountOptions o, string mountpoint)
    {
        yield return "mount";
        yield return Path.GetFullPath(o.Disk);
        yield return mountpoint;
        yield return "--daemon-child";
        yield return "--cache-size";
        yield return o.CacheSize;
        if (o.ReadOnly)
        {
            yield return "--read-only";
        }

        if (o.PageCache)
        {
            yield return "--page-cache";
        }

        if (o.NoSplice)
        {
            yield return "--no-splice";
        }

        if (o.BufferedWrites)
        {
            yield return "--buffered-writes";
        }

        if (o.AllowOutsideImages)
        {
            yield return "--allow-outside-images";
        }

        if (o.Repair)
        {
            yield return "--repair";
        }

        if (o.Debug)
        {
            yield return "--debug";
        }

        if (o.Threads > 0)
        {
            yield return "--threads";
            yield return o.Threads.ToString(System.Globalization.CultureInfo.InvariantCulture);
        }

        if (o.Log is not null)
        {
            yield return "--log";
            yield return Path.GetFullPath(o.Log);
        }

        var fuseOptions = o.FuseOptions.ToList();
        if (fuseOptions.Count > 0)
        {
            yield return "-o";
            yield return string.Join(',', fuseOptions);
        }
    }

    /// <summary>The mountpoint as a full path, after checking it can take a mount. Clears a stale prlfuse mount.</summary>
    private static string CheckMountpoint(string path, bool clearStale, TextWriter? notices = null)
    {
        string mountpoint = Path.TrimEndingDirectorySeparator(Path.GetFullPath(path));
        if (FuseHost.IsStaleMount(mountpoint))
        {
            if (!clearStale)
            {
                return mountpoint; // the daemon clears it and says so
            }

            int rc = FuseHost.ClearStaleMount(mountpoint);
            if (rc != 0)
            {
                throw new PrlFuseException(mountpoint, $"a stale mount (its daemon was killed) is left here and could not be cleared (errno {rc}); run 'fusermount3 -uz {mountpoint}'");
            }

            (notices ?? Console.Error).WriteLine($"prlfuse: cleared a stale mount at {mountpoint} left by a daemon that was killed");
        }

        if (!Directory.Exists(mountpoint))
        {
            throw new PrlFuseException(mountpoint, "mountpoint does not exist; create the folder first");
        }

        string? mounted = MountTable.FileSystemTypeAt(mountpoint);
        if (mounted is not null)
        {
            throw new PrlFuseException(mountpoint, $"is already a mount point ({mounted}); unmount it first");
        }

        if (!File.Exists("/dev/fuse"))
        {
            throw new PrlFuseException("/dev/fuse", "does not exist: load the fuse kernel module (modprobe fuse) or, in a container, pass the device in");
        }

        if (!LibFuse.IsAvailable)
        {
            throw new PrlFuseException(null, LibFuse.NotInstalledMessage);
        }

        return mountpoint;
    }

    private static int Serve(MountOptions o)
    {
        if (o.DaemonChild)
        {
            // Our own session: the daemon outlives the terminal and the command that started it.
            Posix.SetSid();
        }

        // A daemon child's stdout goes to the waiting parent, which shows these lines to the user.
        var notices = o.DaemonChild ? Console.Out : Console.Error;
        string mountpoint = CheckMountpoint(o.MountPoint, clearStale: true, notices);
        long cacheBytes = Sizes.Parse(o.CacheSize, "--cache-size");
        if (o.Repair && !o.ReadOnly)
        {
            RepairFirst(o.Disk, notices);
        }

        var openOptions = new DiskOpenOptions { ReadOnly = o.ReadOnly, CacheBytes = cacheBytes, AllowImagesOutsideBundle = o.AllowOutsideImages };
        if (o.BufferedWrites)
        {
            openOptions = openOptions with { OpenFile = static (path, writable) => PositionalImageFile.Open(path, writable, exclusive: false, directWrites: false) };
        }

        var disk = VirtualDisk.Open(o.Disk, openOptions);
        int exit;
        try
        {
            RefuseUnwritableTop(disk, o);
            foreach (var warning in disk.Warnings)
            {
                notices.WriteLine($"prlfuse: warning: {warning}");
            }

            exit = ServeDisk(disk, mountpoint, o);
        }
        finally
        {
            disk.Dispose(); // flush, trim and mark the top image clean; throws (exit 1) if that fails
        }

        return exit;
    }

    /// <summary>--repair: what 'prlfuse check --repair' would fix is fixed before the images are opened.</summary>
    private static void RepairFirst(string disk, TextWriter notices)
    {
        var report = PrlFuse.Core.Checking.DiskChecker.Check(disk, repair: true);
        int repaired = report.Images.Sum(i => i.RepairedCount);
        if (report.ExitCode is not (0 or 3))
        {
            var first = report.DiskProblems.Concat((report.After ?? report.Images).SelectMany(i => i.Problems)).FirstOrDefault(p => p.Severity is PrlFuse.Core.Checking.CheckSeverity.Error or PrlFuse.Core.Checking.CheckSeverity.Corruption);
            throw new PrlFuseException(first?.File ?? disk, $"repair did not make the disk consistent: {first?.What ?? "see 'prlfuse check'"}");
        }

        if (repaired > 0)
        {
            notices.WriteLine($"prlfuse: repaired {repaired} problem{(repaired == 1 ? "" : "s")} before mounting (see 'prlfuse check' for details)");
        }
    }

    /// <summary>A read-write mount whose top cannot be written fails with what to do, never silently read-only.</summary>
    private static void RefuseUnwritableTop(VirtualDisk disk, MountOptions o)
    {
        if (o.ReadOnly || disk.Top.IsWritable)
        {
            return;
        }

        foreach (var storage in disk.Storages)
        {
            if (storage.Images[disk.Top.Id] is ExpandableImage { WasUnclean: true } image)
            {
                throw new PrlFuseException(image.Path, $"image was not closed cleanly (a crash or a killed writer); run 'prlfuse check --repair {o.Disk}' first, mount with --repair, or mount with --read-only");
            }

            if (storage.Images[disk.Top.Id] is ExpandableImage { WriteBlockedReason: { } reason } blocked)
            {
                throw new PrlFuseException(blocked.Path, reason + "; mount with --read-only");
            }
        }

        if (disk.Tree.ChildrenOf(disk.Top.Id).Count > 0)
        {
            throw new PrlFuseException(disk.SourcePath, "the top snapshot has child snapshots, so writing it would change them; mount with --read-only");
        }

        throw new PrlFuseException(disk.SourcePath, "the top snapshot's image cannot be opened for writing; mount with --read-only");
    }

    private static int ServeDisk(VirtualDisk disk, string mountpoint, MountOptions o)
    {
        var fuseOptions = o.FuseOptions.Select(x => x.Trim()).Where(x => x.Length > 0).ToList();
        bool allowOther = fuseOptions.Remove("allow_other");
        bool defaultPermissions = fuseOptions.Remove("default_permissions") || allowOther;
        var fs = new BundleFileSystem(disk, new BundleFileSystemOptions
        {
            DirectIo = !o.PageCache,
            Splice = !o.NoSplice,
            Uid = Posix.GetUid(),
            Gid = Posix.GetGid(),
            Log = message => Console.Error.WriteLine($"prlfuse: {message}"),
        });
        var options = new FuseMountOptions
        {
            FsName = Path.GetFullPath(o.Disk),
            AllowOther = allowOther,
            DefaultPermissions = defaultPermissions,
            ReadOnly = o.ReadOnly,
            Debug = o.Debug,
            OnCallbackException = e => Console.Error.WriteLine($"prlfuse: internal error in a FUSE request: {e}"),
        };
        if (!o.NoSplice)
        {
            // Large reads go as spliced file ranges only if libfuse's pipe can hold a whole reply.
            options.MaxRead = FuseSplice.LargestSplicedRead();
        }

        if (fuseOptions.FirstOrDefault(x => x.StartsWith("max_read=", StringComparison.Ordinal)) is { } userMaxRead)
        {
            fuseOptions.Remove(userMaxRead);
            options.MaxRead = uint.Parse(userMaxRead["max_read=".Length..], System.Globalization.CultureInfo.InvariantCulture);
        }
        if (o.Threads > 0)
        {
            options.MaxThreads = o.Threads;
        }

        foreach (var extra in fuseOptions)
        {
            options.ExtraOptions.Add(extra);
        }

        using var host = FuseHost.Mount(mountpoint, fs, options);
        using var signals = RegisterSignals(host, mountpoint);
        if (o.DaemonChild)
        {
            ReportReadyAndDetach(o.Log);
        }
        else
        {
            Console.Error.WriteLine($"prlfuse: mounted {disk.SourcePath} on {mountpoint}; Ctrl-C or 'prlfuse unmount {mountpoint}' ends it");
        }

        int status = host.Run();
        disk.Flush();
        return status == 0 ? Program.ExitOk : Program.ExitError;
    }

    /// <summary>SIGINT, SIGTERM and SIGHUP unmount (non-lazily); if a loop device still holds a file, keep serving.</summary>
    private static IDisposable RegisterSignals(FuseHost host, string mountpoint)
    {
        var registrations = new List<PosixSignalRegistration>();
        foreach (var signal in new[] { PosixSignal.SIGINT, PosixSignal.SIGTERM, PosixSignal.SIGHUP })
        {
            registrations.Add(PosixSignalRegistration.Create(signal, context =>
            {
                context.Cancel = true;
                int rc = host.TryUnmount();
                if (rc == Errno.EBUSY)
                {
                    Console.Error.WriteLine($"prlfuse: not unmounting {mountpoint}: {UnmountCommand.DescribeUsers(mountpoint)}");
                }
                else if (rc != 0)
                {
                    Console.Error.WriteLine($"prlfuse: unmounting {mountpoint} failed (errno {rc})");
                }
            }));
        }

        return new Registrations(registrations);
    }

    private sealed class Registrations(List<PosixSignalRegistration> list) : IDisposable
    {
        public void Dispose() => list.ForEach(r => r.Dispose());
    }

    /// <summary>Tells the waiting parent we are mounted, then points stdio away from its pipes.</summary>
    private static void ReportReadyAndDetach(string? log)
    {
        Console.Out.WriteLine(ReadyLine);
        Console.Out.Flush();
        Console.Error.Flush();
        int devNull = Posix.Open("/dev/null", Posix.OReadWrite, 0);
        int logFd = log is null
            ? devNull
            : Posix.Open(log, Posix.OWriteOnly | Posix.OCreate | Posix.OAppend, 0x180);
        if (devNull >= 0)
        {
            Posix.Dup2(devNull, 0);
            Posix.Dup2(devNull, 1);
            Posix.Dup2(logFd >= 0 ? logFd : devNull, 2);
        }
    }
}
