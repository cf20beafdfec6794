using PrlFuse.Core;
using PrlFuse.Core.Engine;
using PrlFuse.Fuse;

namespace PrlFuse.Cli.Output;

/// <summary>Who uses a disk, in words: our own mounts by mountpoint (from the kernel's tables), else the lock holder.</summary>
internal static class InUse
{
    /// <summary>"mounted read-write at /mnt/x by prlfuse (daemon PID 123)" for each of our mounts serving these files.</summary>
    public static IReadOnlyList<string> OurMounts(IEnumerable<string> files) =>
        [.. MountRegistry.MountsUsing(files).Select(Describe)];

    /// <summary>
    /// Opens a disk read-only for a command that only reads what the descriptor and the image headers and tables say
    /// (info, snapshot list): when another process writes it (a read-write mount, QEMU), it is opened again sharing the
    /// images with that writer, as 'qemu-img info -U' does, instead of refusing.
    /// </summary>
    public static VirtualDisk OpenToDescribe(string path, DiskOpenOptions options)
    {
        try
        {
            return VirtualDisk.Open(path, options);
        }
        catch (ImageInUseException e) when (!options.ForceShare && e.HeldByWriter)
        {
            return VirtualDisk.Open(path, options with { ForceShare = true });
        }
    }

    public static string Describe(PrlFuseMountInfo m) =>
        $"mounted {(m.ReadOnly ? "read-only" : "read-write")} at {m.Mountpoint} by prlfuse" + (m.DaemonPid is { } pid ? $" (daemon PID {pid})" : "");

    /// <summary>The one-line message for a refused lock: our mount by name when it is one, and QEMU's own words otherwise.</summary>
    public static string Explain(ImageInUseException e)
    {
        var ours = MountRegistry.MountsUsing([e.ImagePath]);
        if (ours.Count > 0)
        {
            var m = ours[0];
            // A read-write mount is shared with readers that accept its writes (-U); a read-only one with any reader.
            string advice = m.ReadOnly
                ? $"unmount it first ('prlfuse unmount {m.Mountpoint}') and run the command again; readers may open it read-only beside it"
                : $"unmount it first ('prlfuse unmount {m.Mountpoint}') and run the command again; to only read it as it is now, use --read-only --force-share";
            return $"{e.ImagePath}: disk is in use: {Describe(m)}; {advice}";
        }

        return $"{e.Message} (QEMU says: {e.QemuMessage})";
    }
}
