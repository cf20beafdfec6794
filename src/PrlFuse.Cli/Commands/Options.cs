using CommandLine;

namespace PrlFuse.Cli.Commands;

internal abstract class CommonOptions
{
    [Option("debug", HelpText = "Show stack traces and FUSE debug output.")]
    public bool Debug { get; set; }
}

internal abstract class DiskOptions : CommonOptions
{
    [Value(0, MetaName = "disk", Required = true, HelpText = "The disk: a bundle folder (NAME.hdd), its DiskDescriptor.xml, or a bare .hds image.")]
    public string Disk { get; set; } = "";

    [Option("allow-outside-images", HelpText = "Let relative image paths in DiskDescriptor.xml lead outside the bundle folder (refused by default; device nodes, FIFOs and sockets are always refused).")]
    public bool AllowOutsideImages { get; set; }

    [Option("cache-size", Default = "64M", HelpText = "Block cache size shared by all snapshot files (bytes, or with K/M/G; 0 turns it off).")]
    public string CacheSize { get; set; } = "64M";
}

[Verb("info", HelpText = "Show a disk's geometry, storages, images, snapshot tree and warnings.")]
internal sealed class InfoOptions : DiskOptions
{
    [Option("json", HelpText = "Print the same information as JSON.")]
    public bool Json { get; set; }
}

[Verb("export", HelpText = "Write one snapshot of a disk as a raw file (sparse where unallocated).")]
internal sealed class ExportOptions : DiskOptions
{
    [Option('s', "snapshot", HelpText = "Snapshot GUID, with or without braces, any case (default: the top, i.e. the current state).")]
    public string? Snapshot { get; set; }

    [Option('o', "output", Required = true, HelpText = "The raw file to write (replaced if it exists).")]
    public string Output { get; set; } = "";
}

[Verb("check", HelpText = "Check every image of a disk like 'qemu-img check'; exit 0 clean, 2 corrupt, 3 leaks only, 1 error.")]
internal sealed class CheckOptions : DiskOptions
{
    [Option('r', "repair", HelpText = "Repair what is found: copy duplicated clusters, clear entries outside the file, trim leaks, mark clean.")]
    public bool Repair { get; set; }
}

[Verb("mount", HelpText = "Mount a disk: MOUNTPOINT/current.raw is the top snapshot, MOUNTPOINT/snapshots/{GUID}.raw every other one.")]
internal sealed class MountOptions : DiskOptions
{
    [Value(1, MetaName = "mountpoint", Required = true, HelpText = "An existing empty folder.")]
    public string MountPoint { get; set; } = "";

    [Option('f', "foreground", HelpText = "Stay in the foreground (for systemd or debugging) instead of returning once mounted.")]
    public bool Foreground { get; set; }

    [Option("read-only", HelpText = "Serve current.raw read-only too; no image file is opened for writing.")]
    public bool ReadOnly { get; set; }

    [Option("repair", HelpText = "Repair the images first if needed (e.g. not closed cleanly after a crash), as 'prlfuse check --repair' does.")]
    public bool Repair { get; set; }

    [Option("page-cache", HelpText = "Let the kernel page cache hold file data (default: direct I/O, best for loop devices).")]
    public bool PageCache { get; set; }

    [Option("buffered-writes", HelpText = "Write space the top image grows through the host page cache too (default: large writes there go direct, past it; faster on fast disks, slower for bursts on slow ones).")]
    public bool BufferedWrites { get; set; }

    [Option("no-splice", HelpText = "Copy read data through the daemon instead of splicing it from the image files' page cache.")]
    public bool NoSplice { get; set; }

    [Option('o', "options", Separator = ',', HelpText = "FUSE mount options, comma-separated (allow_other, default_permissions, ...).")]
    public IEnumerable<string> FuseOptions { get; set; } = [];

    [Option("threads", Default = 0, HelpText = "FUSE worker threads (0: automatic).")]
    public int Threads { get; set; }

    [Option("log", HelpText = "Where the background daemon writes its messages (default: discarded).")]
    public string? Log { get; set; }

    /// <summary>Set by the parent when it starts the daemon: report readiness on stdout, then detach.</summary>
    [Option("daemon-child", Hidden = true)]
    public bool DaemonChild { get; set; }
}

[Verb("unmount", aliases: ["umount"], HelpText = "Unmount a prlfuse mount; refused while a loop device still uses one of its files.")]
internal sealed class UnmountOptions : CommonOptions
{
    [Value(0, MetaName = "mountpoint", Required = true, HelpText = "The folder the disk is mounted on.")]
    public string MountPoint { get; set; } = "";
}

internal static class HelpFooter
{
    public static readonly string[] Lines =
    [
        "",
        "Examples:",
        "  prlfuse info disk.hdd",
        "  prlfuse export disk.hdd --snapshot {986476cf-d62e-45d1-b355-86feca91376e} -o old.raw",
        "  prlfuse mount disk.hdd /mnt/x && mount -o loop,ro /mnt/x/snapshots/{GUID}.raw /mnt/old",
        "  prlfuse unmount /mnt/x",
        "Image paths in DiskDescriptor.xml are relative to it, or absolute; an absolute path that no longer",
        "exists is looked for by its file name in the bundle folder. The descriptor is untrusted: a relative",
        "path must resolve (after symlinks) to a regular file inside the bundle folder, an absolute one to a",
        "regular file; device nodes, FIFOs and sockets are always refused.",
    ];
}
