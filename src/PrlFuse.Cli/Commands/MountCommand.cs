using System.Runtime.InteropServices;
using PrlFuse.Core;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.IO;
using PrlFuse.Core.Images;
using PrlFuse.Fuse;
using PrlFuse.Fuse.Daemon;
using PrlFuse.Fuse.Native;

namespace PrlFuse.Cli.Commands;

/// <summary>
/// `prlfuse mount`. Without --foreground the command has <see cref="DaemonLauncher"/> start prlfuse again as the
/// detached daemon, and returns once the mount answers, or exits non-zero with the daemon's own message. The daemon works from "/" and checks that nothing it needs lies below the mountpoint before it mounts:
/// a lookup of its own mountpoint before the loop serves would block it, and every process that stats mounts after it.
/// </summary>
internal static class MountCommand
{
    /// <summary>Test seam: a daemon started with this variable set fails right after fuse_mount, before it serves.</summary>
    internal const string FaultAfterMountVariable = "PRLFUSE_FAULT_AFTER_MOUNT";

    public static int Run(MountOptions o)
    {
        if (o.ForceShare && !o.ReadOnly)
        {
            throw new PrlFuseException(null, "--force-share opens images that another process may be writing, so it goes with --read-only only");
        }

        if (o.Repair && o.ReadOnly)
        {
            throw new PrlFuseException(null, "--repair writes the images, so it does not go with --read-only; run 'prlfuse check --repair' first if you want both");
        }

        return o.Foreground || o.DaemonChild ? Serve(o) : StartDaemon(o);
    }

    private static int StartDaemon(MountOptions o)
    {
        // Fail fast on what the parent can see, so the common mistakes need no daemon round trip.
        string mountpoint = CheckMountpoint(o.MountPoint, clearStale: false);
        if (DaemonLauncher.Start(DaemonArguments(o, mountpoint), mountpoint, Console.Error) is not { } failed)
        {
            return Program.ExitOk;
        }

        Console.Error.Write(failed.Said);
        return failed.ExitCode == 0 ? Program.ExitError : failed.ExitCode;
    }

    private static IEnumerable<string> DaemonArguments(MountOptions o, string mountpoint)
    {
        yield return "mount";
        yield return Path.GetFullPath(o.Disk);
        yield return mountpoint;
        yield return "--daemon-child";
        yield return "--cache-size";
        yield return o.CacheBytes.ToString(System.Globalization.CultureInfo.InvariantCulture);
        foreach (var (set, flag) in new[]
        {
            (o.ReadOnly, "--read-only"), (o.PageCache, "--page-cache"), (o.NoSplice, "--no-splice"),
            (o.BufferedWrites, "--buffered-writes"), (o.AllowOutsideImages, "--allow-outside-images"),
            (o.Repair, "--repair"), (o.Debug, "--debug"), (o.ForceShare, "--force-share"),
        })
        {
            if (set)
            {
                yield return flag;
            }
        }

        if (o.Format is not null)
        {
            yield return "--format";
            yield return o.Format;
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

        if (o.FuseOptions.Count > 0)
        {
            yield return "-o";
            yield return string.Join(',', o.FuseOptions);
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

        if (File.Exists(mountpoint))
        {
            throw new PrlFuseException(mountpoint, "mountpoint is a file, not a folder; give an empty folder");
        }

        if (!Directory.Exists(mountpoint))
        {
            throw new PrlFuseException(mountpoint, "mountpoint does not exist; create the folder first (mkdir)");
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

    /// <summary>
    /// Refuses a mountpoint that would hide files or hold what the daemon needs: not empty (unless -o nonempty), the
    /// bundle folder or a folder above the disk's descriptor, images or log, the program's own files, or "/".
    /// </summary>
    private static void CheckMountpointAgainstDisk(string mountpoint, VirtualDisk disk, MountOptions o)
    {
        string real = PathRules.RealPath(mountpoint) ?? mountpoint;
        string bundle = Path.GetDirectoryName(disk.SourcePath) ?? "/";
        Refuse(bundle, disk.IsBareImage ? "the folder of the image" : "the disk's bundle folder");
        Refuse(disk.SourcePath, disk.IsBareImage ? "the disk's image" : "the disk's DiskDescriptor.xml");
        foreach (var image in disk.Storages.SelectMany(s => s.Images.Values))
        {
            Refuse(image.Path, "an image of the disk");
        }

        if (o.Log is not null)
        {
            Refuse(o.Log, "the log file");
        }

        if (Environment.ProcessPath is { } program)
        {
            Refuse(program, "prlfuse's own program");
        }

        Refuse(AppContext.BaseDirectory, "prlfuse's own program files");
        Refuse(Directory.GetCurrentDirectory(), "the daemon's working folder");

        if (!o.FuseOptions.Contains("nonempty") && Directory.EnumerateFileSystemEntries(mountpoint).Any())
        {
            throw new PrlFuseException(mountpoint, "mountpoint is not empty: mounting would hide its files; use an empty folder (or -o nonempty to mount over them)");
        }

        void Refuse(string path, string what)
        {
            string target = PathRules.RealPath(path) ?? Path.GetFullPath(path);
            target = Path.TrimEndingDirectorySeparator(target);
            if (target == real || target.StartsWith(real == "/" ? "/" : real + "/", StringComparison.Ordinal))
            {
                throw new PrlFuseException(mountpoint, $"mountpoint is or holds {what} ({target}); the mount would hide it from the daemon that serves it; choose an empty folder elsewhere");
            }
        }
    }

    private static int Serve(MountOptions o)
    {
        // A daemon child's stdout goes to the waiting parent, which shows these lines to the user.
        var notices = o.DaemonChild ? Console.Out : Console.Error;
        o.Disk = Path.GetFullPath(o.Disk);
        o.MountPoint = Path.GetFullPath(o.MountPoint);
        o.Log = o.Log is null ? null : Path.GetFullPath(o.Log);

        // From here on no relative path is used; a working folder below the mountpoint would block the daemon.
        Directory.SetCurrentDirectory("/");
        var detach = o.DaemonChild ? DaemonChild.Begin(o.Log) : null;
        string mountpoint = CheckMountpoint(o.MountPoint, clearStale: true, notices);
        if (o.Repair)
        {
            RepairFirst(o.Disk, o.AllowOutsideImages, notices);
        }

        var openOptions = new DiskOpenOptions { ReadOnly = o.ReadOnly, CacheBytes = o.CacheBytes, AllowImagesOutsideBundle = o.AllowOutsideImages, ForceShare = o.ForceShare, Format = o.DiskFormat };
        if (o.BufferedWrites)
        {
            openOptions = openOptions with { OpenFile = static (path, writable) => PositionalImageFile.Open(path, writable, exclusive: false, directWrites: false) };
        }

        bool readOnly = o.ReadOnly;
        var disk = DiskServing.Open(o.Disk, openOptions, ref readOnly, "mount", BundleFileSystem.CurrentFileName, offersRepair: true, notices);
        o.ReadOnly = readOnly;
        int exit;
        try
        {
            CheckMountpointAgainstDisk(mountpoint, disk, o);
            foreach (var warning in disk.Warnings)
            {
                notices.WriteLine($"prlfuse: warning: {warning}");
            }

            exit = ServeDisk(disk, mountpoint, o, detach, notices);
        }
        finally
        {
            disk.Dispose(); // flush, trim and mark the top image clean; throws (exit 1) if that fails
        }

        return exit;
    }

    /// <summary>--repair: what 'prlfuse check --repair' would fix is fixed before the images are opened.</summary>
    private static void RepairFirst(string disk, bool allowOutsideImages, TextWriter notices)
    {
        var report = PrlFuse.Core.Checking.DiskChecker.Check(disk, repair: true, allowImagesOutsideBundle: allowOutsideImages);
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

    private static int ServeDisk(VirtualDisk disk, string mountpoint, MountOptions o, DaemonChild? detach, TextWriter notices)
    {
        var fuseOptions = o.FuseOptions.Select(x => x.Trim()).Where(x => x.Length > 0).ToList();
        fuseOptions.RemoveAll(x => x == "nonempty"); // ours to check (see CheckMountpointAgainstDisk); libfuse 3 has no such option
        bool allowOther = fuseOptions.Remove("allow_other");
        bool defaultPermissions = fuseOptions.Remove("default_permissions") || allowOther;
        using var serving = new ManualResetEventSlim();
        var fs = new BundleFileSystem(disk, new BundleFileSystemOptions
        {
            DirectIo = !o.PageCache,
            Splice = !o.NoSplice,
            Uid = Posix.GetUid(),
            Gid = Posix.GetGid(),
            Log = message => Console.Error.WriteLine($"prlfuse: {message}"),
            OnInitialized = () => serving.Set(),
        });
        var options = new FuseMountOptions
        {
            FsName = o.Disk, // what the user named (made absolute): status shows it
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
            options.MaxRead = uint.TryParse(userMaxRead["max_read=".Length..], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out uint maxRead) && maxRead >= 4096
                ? maxRead
                : throw new PrlFuseException(null, $"-o {userMaxRead}: max_read must be a number of bytes, at least 4096");
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
        using var control = o.ReadOnly || disk.IsBareImage ? null : StartControl(fs, disk, notices);
        if (Environment.GetEnvironmentVariable(FaultAfterMountVariable) is { Length: > 0 } fault)
        {
            throw new PrlFuseException(mountpoint, $"injected failure after the mount ({FaultAfterMountVariable}={fault})");
        }

        // Readiness is told once the kernel's init request has been answered, i.e. the loop serves.
        var announce = new Thread(() =>
        {
            serving.Wait();
            if (detach is not null)
            {
                detach.ReportReady();
            }
            else
            {
                Console.Error.WriteLine($"prlfuse: mounted {disk.SourcePath} on {mountpoint}; Ctrl-C or 'prlfuse unmount {mountpoint}' ends it");
            }
        })
        { IsBackground = true, Name = "prlfuse-ready" };
        announce.Start();
        int status = host.Run();
        disk.Flush();
        return status == 0 ? Program.ExitOk : Program.ExitError;
    }

    /// <summary>
    /// The control socket through which 'prlfuse snapshot create' reaches this daemon. Without it the mount serves as
    /// before and a snapshot of it is refused, so a failure is a warning.
    /// </summary>
    private static ControlServer? StartControl(BundleFileSystem fs, VirtualDisk disk, TextWriter notices)
    {
        try
        {
            return ControlServer.Start(
                (verb, argument) =>
                {
                    if (verb != ControlSocket.SnapshotCreate)
                    {
                        throw new PrlFuseException(null, $"the mount's daemon does not know the request \"{verb}\" (a newer prlfuse asks it?)");
                    }

                    var guid = fs.TakeSnapshot(argument);
                    Console.Error.WriteLine($"prlfuse: took snapshot {Core.Descriptor.DiskDescriptor.FormatGuid(guid)} of {disk.SourcePath}");
                    return Core.Descriptor.DiskDescriptor.FormatGuid(guid);
                },
                message => Console.Error.WriteLine($"prlfuse: {message}"));
        }
        catch (Exception e) when (e is PrlFuseException or IOException or UnauthorizedAccessException)
        {
            notices.WriteLine($"prlfuse: warning: {e.Message}; snapshots of this mount cannot be taken while it is mounted");
            return null;
        }
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
}
