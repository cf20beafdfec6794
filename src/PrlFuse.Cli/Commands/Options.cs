namespace PrlFuse.Cli.Commands;

internal abstract class CommonOptions
{
    public bool Debug { get; set; }
}

/// <summary>Options of a command that takes a disk: the disk argument, and --disk for a VM bundle with several disks.</summary>
internal abstract class DiskArgumentOptions : CommonOptions
{
    public string Disk { get; set; } = "";

    /// <summary>--disk N: which disk of a VM bundle (from 0, as 'info' lists them).</summary>
    public int? DiskNumber { get; set; }

    /// <summary>The VM bundle the user named, when Disk was one (Disk is then its chosen disk's path).</summary>
    public string? VmBundlePath { get; set; }

    /// <summary>The VM bundle's disks, when Disk was one.</summary>
    public IReadOnlyList<Core.Descriptor.VmDisk>? VmDisks { get; set; }
}

internal abstract class DiskOptions : DiskArgumentOptions
{
    public bool AllowOutsideImages { get; set; }

    /// <summary>--format: null (recognise), "raw" or "parallels".</summary>
    public string? Format { get; set; }

    public bool ForceShare { get; set; }

    public Core.Descriptor.DiskFormat DiskFormat => Format switch
    {
        "raw" => Core.Descriptor.DiskFormat.Raw,
        "parallels" => Core.Descriptor.DiskFormat.Parallels,
        _ => Core.Descriptor.DiskFormat.Auto,
    };
}

internal sealed class InfoOptions : DiskOptions
{
    public bool Json { get; set; }
}

internal sealed class MapOptions : DiskOptions
{
    public string? Snapshot { get; set; }

    public bool Json { get; set; }
}

internal sealed class ExportOptions : DiskOptions
{
    public string? Snapshot { get; set; }

    public string? Output { get; set; }

    public long CacheBytes { get; set; } = Sizes.DefaultCacheBytes;
}

internal sealed class CheckOptions : DiskOptions
{
    public bool Repair { get; set; }
}

internal sealed class MountOptions : DiskOptions
{
    public string MountPoint { get; set; } = "";

    public bool Foreground { get; set; }

    public bool ReadOnly { get; set; }

    public bool Repair { get; set; }

    public bool PageCache { get; set; }

    public bool BufferedWrites { get; set; }

    public bool NoSplice { get; set; }

    public List<string> FuseOptions { get; } = [];

    public int Threads { get; set; }

    public string? Log { get; set; }

    public long CacheBytes { get; set; } = Sizes.DefaultCacheBytes;

    /// <summary>Set by the parent when it starts the daemon: report readiness on stdout, then detach.</summary>
    public bool DaemonChild { get; set; }
}

internal sealed class ServeOptions : DiskOptions
{
    /// <summary>--socket: a Unix socket path (default: one beside the user's runtime files when nothing else is given).</summary>
    public string? Socket { get; set; }

    /// <summary>--listen ADDRESS[:PORT], each one.</summary>
    public List<string> Listen { get; } = [];

    public bool ReadOnly { get; set; }

    public string? TlsCertificate { get; set; }

    public string? TlsKey { get; set; }

    public bool Insecure { get; set; }

    public bool Detach { get; set; }

    public string? Log { get; set; }

    public int MaxConnections { get; set; } = ServeCommand.DefaultMaxConnections;

    public long CacheBytes { get; set; } = Sizes.DefaultCacheBytes;

    /// <summary>Set by the parent when it starts the daemon: report readiness on stdout, then detach.</summary>
    public bool DaemonChild { get; set; }
}

internal sealed class UnmountOptions : CommonOptions
{
    public string MountPoint { get; set; } = "";
}

internal sealed class StatusOptions : CommonOptions
{
    public bool Json { get; set; }
}

internal sealed class ResizeOptions : DiskOptions
{
    public string? Size { get; set; }

    public bool Shrink { get; set; }
}

internal sealed class CompactOptions : DiskOptions
{
}

/// <summary>A command group's own (empty) options: it only shows its help.</summary>
internal sealed class GroupOptions : CommonOptions
{
}

internal sealed class CreateOptions : CommonOptions
{
    public string Disk { get; set; } = "";

    /// <summary>--size in bytes; null when not given.</summary>
    public long? SizeBytes { get; set; }

    public bool Plain { get; set; }

    public long ClusterBytes { get; set; } = Core.Formats.Parallels.ParallelsImageCreator.DefaultClusterBytes;
}

internal sealed class SnapshotListOptions : DiskOptions
{
    public bool Json { get; set; }
}

internal sealed class SnapshotCreateOptions : DiskArgumentOptions
{
    public string? Name { get; set; }

    public bool AllowOutsideImages { get; set; }
}

internal sealed class RestoreDescriptorOptions : CommonOptions
{
    public string Folder { get; set; } = "";
}

internal sealed class SnapshotDeleteOptions : DiskArgumentOptions
{
    public string Guid { get; set; } = "";
}

internal sealed class SnapshotSwitchOptions : DiskArgumentOptions
{
    public string Guid { get; set; } = "";

    public bool KeepCurrent { get; set; }
}

internal sealed class MergeOptions : DiskArgumentOptions
{
}

internal sealed class ConvertOptions : DiskOptions
{
    public string Destination { get; set; } = "";

    /// <summary>--format of the output: null when not given (then decided by the destination's name).</summary>
    public string? OutputFormat { get; set; }

    public string? Snapshot { get; set; }

    public bool Plain { get; set; }

    public bool Expanding { get; set; }

    public bool KeepSnapshots { get; set; }

    /// <summary>--cluster in bytes; null: the output format's default.</summary>
    public long? ClusterBytes { get; set; }
}
