using System.Globalization;
using PrlFuse.Core;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.IO;
using PrlFuse.Fuse.Native;

namespace PrlFuse.Fuse;

/// <summary>A process that keeps a mount busy: an open file descriptor (<see cref="Fd"/> its number) or its working folder ("cwd").</summary>
public sealed record MountFileUser(int Pid, string Command, string Fd, string Path);

/// <summary>A loop device whose backing file is one of the mount's files.</summary>
public sealed record MountLoopUser(string Device, string BackingFile);

/// <summary>One active prlfuse mount, as the kernel and /proc tell it.</summary>
/// <param name="Mountpoint">Where it is mounted.</param>
/// <param name="Disk">What the mount was given (its fsname): a bundle folder, descriptor or image path.</param>
/// <param name="ReadOnly">Mounted with --read-only (mountinfo's "ro"): current.raw cannot be written.</param>
/// <param name="DaemonPid">The daemon serving it, or null when none is found.</param>
/// <param name="Stale">The daemon is gone and the mountpoint answers "Transport endpoint is not connected".</param>
/// <param name="OpenFiles">Processes with files open (or their working folder) under the mount.</param>
/// <param name="LoopDevices">Loop devices backed by the mount's files.</param>
public sealed record PrlFuseMountInfo(
    string Mountpoint,
    string Disk,
    bool ReadOnly,
    int? DaemonPid,
    bool Stale,
    IReadOnlyList<MountFileUser> OpenFiles,
    IReadOnlyList<MountLoopUser> LoopDevices);

/// <summary>
/// Which prlfuse mounts are active, who uses them, and whether a given disk is one of them. Everything comes from the
/// kernel (/proc/self/mountinfo, /proc/PID, /sys/block), so it is right whoever mounted, however long ago.
/// </summary>
public static class MountRegistry
{
    public const string FileSystemType = "fuse.prlfuse";

    /// <summary>Every prlfuse mount in this mount namespace, with its daemon and users.</summary>
    public static IReadOnlyList<PrlFuseMountInfo> List()
    {
        var mounts = ReadMountTable(File.ReadLines("/proc/self/mountinfo"));
        if (mounts.Count == 0)
        {
            return [];
        }

        var processes = Processes();
        return [.. mounts.Select(m => Describe(m, processes))];
    }

    /// <summary>
    /// The prlfuse mounts that serve <paramref name="disk"/> (a bundle folder, its descriptor, or any of its image
    /// files, however named: symlinks and hard links count), so a command can say "in use, mounted at ...".
    /// </summary>
    public static IReadOnlyList<PrlFuseMountInfo> MountsOf(string disk)
    {
        var paths = new List<string> { disk };
        try
        {
            paths.Add(DiskSource.Resolve(disk).Path);
        }
        catch (PrlFuseException)
        {
            // Not a disk we can open: only the path itself can match.
        }

        return MountsUsing(paths);
    }

    /// <summary>The prlfuse mounts whose disk is, or whose daemon holds open, any of <paramref name="files"/>.</summary>
    public static IReadOnlyList<PrlFuseMountInfo> MountsUsing(IEnumerable<string> files)
    {
        var wanted = files.Select(PathRules.Identity).Where(i => i is not null).ToHashSet();
        if (wanted.Count == 0)
        {
            return [];
        }

        var mounts = ReadMountTable(File.ReadLines("/proc/self/mountinfo"));
        if (mounts.Count == 0)
        {
            return [];
        }

        var processes = Processes();
        var result = new List<PrlFuseMountInfo>();
        foreach (var m in mounts)
        {
            // Only a mount that matches is described: its users come from every process's descriptors, which is the
            // slow part, and other mounts on the machine must not slow down a command about this disk.
            bool match = wanted.Contains(DiskIdentity(m.Disk));
            if (!match && processes.FirstOrDefault(p => ServesMount(p, m.Mountpoint)) is { } daemon)
            {
                // The daemon holds every image of its disk open: its descriptors name exactly the files in use.
                match = FdTargets(daemon.Pid).Any(fd => wanted.Contains(PathRules.Identity($"/proc/{daemon.Pid}/fd/{fd.Fd}")));
            }

            if (match)
            {
                result.Add(Describe(m, processes));
            }
        }

        return result;
    }

    /// <summary>prlfuse daemons serving <paramref name="mountpoint"/>: a prlfuse mount process naming it that holds /dev/fuse.</summary>
    public static IReadOnlyList<int> DaemonsServing(string mountpoint)
    {
        string target = Path.TrimEndingDirectorySeparator(Path.GetFullPath(mountpoint));
        return [.. Processes().Where(p => p.Pid != Environment.ProcessId && ServesMount(p, target)).Select(p => p.Pid)];
    }

    /// <summary>Waits until every process of <paramref name="pids"/> has ended, or <paramref name="timeout"/> has passed.</summary>
    public static void WaitForExit(IEnumerable<int> pids, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        foreach (int pid in pids)
        {
            while (Directory.Exists($"/proc/{pid}") && DateTime.UtcNow < deadline)
            {
                Thread.Sleep(20);
            }
        }
    }

    /// <summary>One line of mountinfo, for a prlfuse mount.</summary>
    internal sealed record MountEntry(string Mountpoint, string Disk, bool ReadOnly);

    /// <summary>The prlfuse lines of mountinfo: "id parent major:minor root mountpoint options [optional...] - type source superoptions".</summary>
    internal static List<MountEntry> ReadMountTable(IEnumerable<string> lines)
    {
        var result = new List<MountEntry>();
        foreach (var line in lines)
        {
            var parts = line.Split(' ');
            int dash = Array.IndexOf(parts, "-");
            if (parts.Length < 6 || dash < 6 || dash + 2 >= parts.Length || parts[dash + 1] != FileSystemType)
            {
                continue;
            }

            // The per-mount options (field 6) say ro/rw: --read-only mounts with "ro".
            bool readOnly = parts[5].Split(',').Contains("ro");
            result.Add(new MountEntry(MountTable.Unescape(parts[4]), MountTable.Unescape(parts[dash + 2]), readOnly));
        }

        return result;
    }

    private sealed record ProcessInfo(int Pid, string[] Args);

    private static PrlFuseMountInfo Describe(MountEntry m, List<ProcessInfo> processes)
    {
        var daemons = processes.Where(p => ServesMount(p, m.Mountpoint)).Select(p => p.Pid).ToList();
        return new PrlFuseMountInfo(
            m.Mountpoint,
            m.Disk,
            m.ReadOnly,
            daemons.Count > 0 ? daemons[0] : null,
            FuseHost.IsStaleMount(m.Mountpoint),
            FileUsers(m.Mountpoint, processes),
            [.. MountTable.LoopDevicesUnder(m.Mountpoint).Select(l => new MountLoopUser(l.Device, l.BackingFile))]);
    }

    private static (ulong, ulong)? DiskIdentity(string disk)
    {
        try
        {
            return PathRules.Identity(DiskSource.Resolve(disk).Path);
        }
        catch (PrlFuseException)
        {
            return PathRules.Identity(disk);
        }
    }

    /// <summary>
    /// A prlfuse "mount" command line naming the mountpoint (relative names against the process's folder) whose
    /// process holds /dev/fuse: the foreground mount or the background daemon, never the parent still waiting for it.
    /// </summary>
    private static bool ServesMount(ProcessInfo p, string mountpoint)
    {
        int program = Array.FindIndex(p.Args, a => a.EndsWith("prlfuse", StringComparison.Ordinal) || a.EndsWith("prlfuse.dll", StringComparison.Ordinal));
        if (program < 0 || program + 1 >= p.Args.Length || p.Args[program + 1] != "mount")
        {
            return false;
        }

        string? cwd = ReadLink($"/proc/{p.Pid}/cwd");
        bool names = p.Args.Skip(program + 2).Any(a => a.Length > 0 && Path.TrimEndingDirectorySeparator(Path.GetFullPath(a, cwd ?? "/")) == mountpoint);
        return names && FdTargets(p.Pid).Any(fd => fd.Target == "/dev/fuse");
    }

    private static List<MountFileUser> FileUsers(string mountpoint, List<ProcessInfo> processes)
    {
        string prefix = mountpoint.EndsWith('/') ? mountpoint : mountpoint + "/";
        bool Under(string path) => path == mountpoint || path.StartsWith(prefix, StringComparison.Ordinal);
        var users = new List<MountFileUser>();
        foreach (var p in processes)
        {
            string command = Command(p.Pid);
            if (ReadLink($"/proc/{p.Pid}/cwd") is { } cwd && Under(cwd))
            {
                users.Add(new MountFileUser(p.Pid, command, "cwd", cwd));
            }

            foreach (var (fd, target) in FdTargets(p.Pid))
            {
                if (Under(target))
                {
                    users.Add(new MountFileUser(p.Pid, command, fd, target));
                }
            }
        }

        return users;
    }

    private static List<ProcessInfo> Processes()
    {
        var result = new List<ProcessInfo>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), NumberStyles.None, CultureInfo.InvariantCulture, out int pid))
            {
                continue;
            }

            try
            {
                result.Add(new ProcessInfo(pid, File.ReadAllText(Path.Combine(dir, "cmdline")).Split('\0')));
            }
            catch (IOException)
            {
                // The process ended while we looked.
            }
            catch (UnauthorizedAccessException)
            {
            }
        }

        return result;
    }

    private static List<(string Fd, string Target)> FdTargets(int pid)
    {
        var result = new List<(string, string)>();
        try
        {
            foreach (var fd in Directory.EnumerateFileSystemEntries($"/proc/{pid}/fd"))
            {
                if (ReadLink(fd) is { } target)
                {
                    result.Add((Path.GetFileName(fd), target));
                }
            }
        }
        catch (IOException)
        {
            // The process ended while we looked.
        }
        catch (UnauthorizedAccessException)
        {
            // Another user's process: its files are not ours to list.
        }

        return result;
    }

    private static string Command(int pid)
    {
        try
        {
            return File.ReadAllText($"/proc/{pid}/comm").TrimEnd('\n');
        }
        catch (IOException)
        {
            return "?";
        }
        catch (UnauthorizedAccessException)
        {
            return "?";
        }
    }

    private static string? ReadLink(string path)
    {
        try
        {
            return new FileInfo(path).LinkTarget;
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
    }
}
