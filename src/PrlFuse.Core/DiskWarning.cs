namespace PrlFuse.Core;

/// <summary>
/// Something odd but usable about a disk: a stable <see cref="Code"/> that scripts can match (see
/// <see cref="WarningCodes"/>) and the one-line <see cref="Message"/> shown to people.
/// </summary>
public sealed record DiskWarning(string Code, string Message)
{
    public override string ToString() => Message;
}

/// <summary>The codes of every warning PrlFuse gives; they never change meaning once released.</summary>
public static class WarningCodes
{
    /// <summary>Disk_size is not Cylinders*Heads*Sectors.</summary>
    public const string GeometryMismatch = "geometry-mismatch";

    /// <summary>An image of a storage belongs to no snapshot.</summary>
    public const string OrphanImage = "orphan-image";

    /// <summary>The top snapshot has children, so it is served read-only.</summary>
    public const string TopHasChildren = "top-has-children";

    /// <summary>An absolute image path does not exist; the same file name in the bundle folder is used.</summary>
    public const string StaleAbsolutePath = "stale-absolute-path";

    /// <summary>An image's cluster size differs from its storage's Blocksize.</summary>
    public const string ClusterSizeMismatch = "cluster-size-mismatch";

    /// <summary>An image holds fewer bytes than its storage.</summary>
    public const string ImageSmallerThanStorage = "image-smaller-than-storage";

    /// <summary>A qcow2 image's corrupt bit is set.</summary>
    public const string Qcow2Corrupt = "qcow2-corrupt";

    /// <summary>An image was not closed cleanly (in_use "Ynot", or a qcow2 image's dirty bit).</summary>
    public const string NotClosedCleanly = "not-closed-cleanly";

    /// <summary>Opened force-shared while another process writes the image.</summary>
    public const string InUseByOtherWriter = "in-use-by-other-writer";

    /// <summary>The filesystem holding an image takes no open-file-description locks: it is not locked against QEMU.</summary>
    public const string NoImageLocks = "no-image-locks";

    /// <summary>An expandable image opened alone is an overlay in the descriptor beside it: its parents are not included.</summary>
    public const string OverlayWithoutParents = "overlay-without-parents";

    /// <summary>A file read as raw with --format raw whose size is not a whole number of sectors.</summary>
    public const string RawTailNotServed = "raw-tail-not-served";

    /// <summary>BAT entries that point outside the file, before the data area, between clusters or at a shared cluster: their clusters read as I/O errors.</summary>
    public const string DamagedClusters = "damaged-clusters";

    /// <summary>An image's empty flag is set.</summary>
    public const string EmptyImageFlag = "empty-image-flag";

    /// <summary>An image's format extension is unreadable, misplaced or fails its checksum.</summary>
    public const string BrokenExtension = "broken-extension";

    /// <summary>An image's clusters are too large for PrlFuse to write; it is served read-only.</summary>
    public const string ClusterTooLargeToWrite = "cluster-too-large-to-write";

    /// <summary>An image has a NECESSARY format extension feature PrlFuse does not know; it is served read-only.</summary>
    public const string UnknownNecessaryFeature = "unknown-necessary-feature";

    /// <summary>DiskDescriptor.xml is missing or unreadable; its previous version, DiskDescriptor.xml.Backup, was read instead.</summary>
    public const string DescriptorFromBackup = "descriptor-from-backup";
}
