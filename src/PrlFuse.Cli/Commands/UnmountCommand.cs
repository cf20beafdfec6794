using PrlFuse.Core;
using PrlFuse.Core.IO;
using PrlFuse.Fuse;
using PrlFuse.Fuse.Native;

namespace PrlFuse.Cli.Commands;

/// <summary>
/// `prlfuse unmount`: a non-lazy unmount, refused while a loop device still uses one of the files (unmounting then
/// would fail the guest filesystem's I/O). Waits for the daemon to close the images cleanly.
/// </summary>
internal static class UnmountCommand
{
    private static readonly TimeSpan DaemonExitTimeout = TimeSpan.FromSeconds(120);

    public static int Run(UnmountOptions o)
    {
        string mountpoint = Path.TrimEndingDirectorySeparator(Path.GetFullPath(o.MountPoint));
        if (FuseHost.IsStaleMount(mountpoint))
        {
            int cleared = FuseHost.ClearStaleMount(mountpoint);
            if (cleared != 0)
            {
                throw new PrlFuseException(mountpoint, $"stale mount could not be cleared (errno {cleared}); try 'fusermount3 -uz {mountpoint}'");
            }

            Console.Error.WriteLine($"prlfuse: cleared a stale mount at {mountpoint} (its daemon was gone)");
            return Program.ExitOk;
        }

        string? type = MountTable.FileSystemTypeAt(mountpoint);
        if (type is null)
        {
            throw new PrlFuseException(mountpoint, "is not mounted");
        }

        if (type != "fuse.prlfuse")
        {
            throw new PrlFuseException(mountpoint, $"is a {type} mount, not a prlfuse one; use umount");
        }

        var daemons = MountRegistry.DaemonsServing(mountpoint);
        int rc = FuseHost.Unmount(mountpoint);

        // Files closed a moment ago can keep the mount busy briefly; a loop device or an open file keeps it busy.
        for (int i = 0; i < 10 && rc == Errno.EBUSY && MountTable.LoopDevicesUnder(mountpoint).Count == 0; i++)
        {
            Thread.Sleep(100);
            rc = FuseHost.Unmount(mountpoint);
        }

        if (rc == Errno.EBUSY)
        {
            throw new PrlFuseException(mountpoint, "refused: " + DescribeUsers(mountpoint));
        }

        if (rc != 0)
        {
            throw new PrlFuseException(mountpoint, $"unmount failed (errno {rc})");
        }

        // The daemon now flushes and closes the images; wait so the next user sees them closed cleanly.
        MountRegistry.WaitForExit(daemons, DaemonExitTimeout);
        return Program.ExitOk;
    }

    /// <summary>Who keeps a mount busy, in words: loop devices by name, else "files are in use".</summary>
    internal static string DescribeUsers(string mountpoint)
    {
        var loops = MountTable.LoopDevicesUnder(mountpoint);
        if (loops.Count == 0)
        {
            return "files on it are still in use (an open file, a shell's working directory, ...)";
        }

        string list = string.Join(", ", loops.Select(l => $"{l.Device} uses {l.BackingFile}"));
        return $"{list}; unmount the filesystems on them and detach them (losetup -d) first";
    }
}
