using PrlFuse.Core.IO;
using PrlFuse.Core.Images;

namespace PrlFuse.Core.Formats.Parallels;

/// <summary>
/// A Parallels expandable image: header, BAT, data clusters. Opening validates the header and every BAT entry
/// against the file: reads never follow a damaged entry (one outside the file, say), they fail.
/// </summary>
public sealed partial class ExpandableImage : ImageLayer
{
    /// <summary>Largest cluster written: 16 times the largest size Parallels uses (1 MiB).</summary>
    public const long MaxWritableClusterBytes = 16L << 20;

    private ExpandableImage(ImageFile file, ParallelsHeader header, BlockAllocationTable bat, long dataOffsetBytes)
        : base(file)
    {
        Header = header;
        Bat = bat;
        DataOffsetBytes = dataOffsetBytes;
        _clusterBytes = header.ClusterBytes;
        _empty = header.IsEmpty;
    }

    // What TryMap needs, on every read, kept apart from Header: the header is a 56-byte struct that the writer
    // replaces (in_use, the empty flag), so the hot path neither copies it nor risks a torn copy.
    private readonly long _clusterBytes;
    private volatile bool _empty;

    public ParallelsHeader Header { get; private set; }

    /// <summary>Why this image cannot be written even though its file is writable, or null.</summary>
    public string? WriteBlockedReason { get; private set; }

    /// <summary>True once the first change was made (in_use is "Ynot" on disk until a clean close).</summary>
    public bool IsOpenForWrite => Writer is ExpandableImageWriter { IsOpenForWrite: true };

    public override bool IsImmutable => !File.Writable || WriteBlockedReason is not null;

    public BlockAllocationTable Bat { get; }

    public long DataOffsetBytes { get; }

    public FormatExtension? Extension { get; private set; }

    /// <summary>Why the format extension could not be used, when there is one and it is broken.</summary>
    public string? ExtensionError { get; private set; }

    public override ImageKind Kind => ImageKind.Expandable;

    public override long VirtualSize => checked((long)Header.SectorCount * 512);

    public override long ClusterBytes => _clusterBytes;

    /// <summary>
    /// Opened over an image not closed cleanly: read-only until repaired. Never set while another writer holds the
    /// image (<see cref="ImageLayer.InUseByOtherWriter"/>): its "Ynot" is that writer's.
    /// </summary>
    public bool WasUnclean { get; private set; }

    /// <summary>
    /// Reads header and BAT and judges them by the format's rules (<see cref="ParallelsLayout"/>), the checker's too.
    /// What leaves the image meaningless is refused: no Parallels header, a BAT larger than the file or too small for
    /// the disk, a data_off that is not where data can start. Damage local to clusters (BAT entries outside the file, as
    /// a truncated file has, before the data area, between clusters, or sharing a cluster) is not: those clusters are
    /// known, reads of them fail (<see cref="DamagedClusterException"/>), everything else is served, and the image is
    /// never written. <paramref name="inUseByOtherWriter"/>: the file is locked force-share beside a writer (see
    /// <see cref="ImageLayer.InUseByOtherWriter"/>), so "Ynot" is no sign of a crash.
    /// </summary>
    public static ExpandableImage Open(ImageFile file, bool inUseByOtherWriter = false)
    {
        string name = file.Path;
        if (!ParallelsLayout.TryRead(file, null, out var layout, out _, out string error))
        {
            throw new ImageFormatException(name, error);
        }

        var header = layout.Header;
        var rules = layout.Validation;
        if (rules.FirstRefusal is { } refusal)
        {
            throw new ImageFormatException(name, refusal.Kind == ParallelsFindingKind.DataOffset ? $"{refusal.Message}; run 'prlfuse check --repair'" : refusal.Message);
        }

        var image = new ExpandableImage(file, header, layout.Bat, layout.DataOffsetBytes);
        if (rules.DataOffsetFault == DataOffsetFault.PastEndOfFile)
        {
            // What a truncated file has: the clusters it cuts off are damaged like the others, and nothing is written
            // until a repair (new clusters would go where the header says no data is).
            image.DataOffsetPastEnd = true;
            image.AddWarning(WarningCodes.DamagedClusters, $"data_off {header.DataOffsetSectors} lies past the end of the file ({layout.FileLength} bytes): the file is truncated");
        }

        image.FindDamage(layout);
        if (inUseByOtherWriter)
        {
            image.MarkInUseByOtherWriter();
        }

        image.WasUnclean = header.IsUnclean && !inUseByOtherWriter;
        if (image.WasUnclean)
        {
            image.AddWarning(WarningCodes.NotClosedCleanly, "image was not closed cleanly (in_use is \"Ynot\"); it is opened read-only until 'prlfuse check --repair'");
        }

        if (header.IsEmpty)
        {
            image.AddWarning(WarningCodes.EmptyImageFlag, "the empty-image flag is set: the image reads as unallocated");
        }

        image.LoadExtension(rules);
        image.CheckWritable();
        return image;
    }

    private void LoadExtension(ParallelsValidation rules)
    {
        if (rules.Find(ParallelsFindingKind.Extension) is { } finding)
        {
            ExtensionError = finding.Message;
            AddWarning(WarningCodes.BrokenExtension, ExtensionError);
            return;
        }

        if (!rules.ExtensionReadable)
        {
            return;
        }

        byte[] buffer = GC.AllocateUninitializedArray<byte>((int)ClusterBytes);
        File.ReadZeroFilled(buffer, rules.ExtensionOffsetBytes);
        if (!FormatExtension.TryRead(buffer, out var extension, out string error))
        {
            ExtensionError = error;
            AddWarning(WarningCodes.BrokenExtension, error);
            return;
        }

        Extension = extension;
        if (!extension!.ChecksumValid)
        {
            ExtensionError = error;
            AddWarning(WarningCodes.BrokenExtension, error);
        }
    }

    /// <summary>Which clusters the dirty bitmap marks dirty, or null when the image has none.</summary>
    public bool[]? DecodeDirtyClusters()
    {
        var bitmap = Extension?.DirtyBitmap;
        return bitmap?.DirtyClusters(ClusterBytes, Bat.Count, (offset, span) => File.ReadZeroFilled(span, offset));
    }

    public override bool TryMap(long offset, out long hostOffset, out long run)
    {
        long clusterBytes = _clusterBytes;
        long cluster = offset / clusterBytes;
        if (cluster >= Bat.Count)
        {
            // Past the BAT nothing is allocated, however far the disk goes: one run, not one per cluster (a
            // descriptor may claim a disk far larger than its images, and CountAllocatedBytes walks the runs).
            hostOffset = 0;
            run = long.MaxValue - offset;
            return false;
        }

        long within = offset - (cluster * clusterBytes);
        run = clusterBytes - within;
        long host = _empty ? 0 : Bat.GetHostOffset(cluster);
        if (host != 0 && IsClusterDamaged(cluster))
        {
            // This layer holds the cluster (nothing below may answer for it) but cannot say where.
            hostOffset = DamagedHostOffset;
            return true;
        }

        hostOffset = host + within;
        return host != 0;
    }

    public override long CountAllocatedClusters() => _empty ? 0 : Bat.CountAllocated();

    public override long FindNext(long offset, bool allocated)
    {
        long clusterBytes = _clusterBytes;
        long cluster = offset / clusterBytes;
        if (cluster >= Bat.Count || _empty)
        {
            return allocated ? long.MaxValue : offset;
        }

        long next = Bat.FindNext(cluster, allocated);
        if (next == cluster)
        {
            return offset;
        }

        // Past the table nothing is allocated.
        return next >= Bat.Count && allocated ? long.MaxValue : next * clusterBytes;
    }

    protected override LayerWriter CreateWriter(IParentContent parent) => new ExpandableImageWriter(this, parent);

    /// <summary>The writer replaced the header on disk (in_use on open and close): readers see it from now on.</summary>
    internal void ReplaceHeader(ParallelsHeader header) => Header = header;

    /// <summary>The writer zeroed the BAT durably: the empty-image flag goes, and the (all-zero) BAT is read from now on.</summary>
    internal void DropEmptyFlag()
    {
        Header = Header with { Flags = Header.Flags & ~ParallelsHeader.FlagEmpty };
        _empty = false;
    }

    /// <summary>Decides at open whether writes are allowed (the spec's NECESSARY rule for unknown extensions).</summary>
    private void CheckWritable()
    {
        if (!File.Writable)
        {
            return;
        }

        if (Header.IsUnclean)
        {
            WriteBlockedReason = "image was not closed cleanly; run 'prlfuse check --repair'";
        }
        else if (DamageText is not null)
        {
            // A write could allocate over space a damaged entry points at; the repair decides what those clusters hold.
            WriteBlockedReason = $"image has {DamageText}; run 'prlfuse check --repair'";
        }
        else if (ClusterBytes > MaxWritableClusterBytes)
        {
            // A write into a new cluster builds the whole cluster in memory: a hostile tracks field (up to 2 GiB) would
            // make every such write allocate that much.
            WriteBlockedReason = $"cluster size of {ClusterBytes} bytes is larger than PrlFuse writes ({MaxWritableClusterBytes >> 20} MiB); it is served read-only";
            AddWarning(WarningCodes.ClusterTooLargeToWrite, WriteBlockedReason);
        }
        else if (Extension is { } ext && ext.Features.Any(f => !f.IsDirtyBitmap && (f.Flags & ExtensionFeature.FlagNecessary) != 0))
        {
            WriteBlockedReason = "image has a format extension feature marked NECESSARY that PrlFuse does not know; it is served read-only";
            AddWarning(WarningCodes.UnknownNecessaryFeature, WriteBlockedReason);
        }
    }
}
