using PrlFuse.Core.Checking;
using PrlFuse.Core.Formats;
using PrlFuse.Core.IO;

namespace PrlFuse.Core.Images;

/// <summary>
/// A Parallels expandable image: header, BAT, data clusters. Opening validates the header and every BAT entry
/// against the file: reads never follow a damaged entry (one outside the file, say), they fail.
/// </summary>
public sealed partial class ExpandableImage : ImageLayer
{
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
    /// Reads header and BAT and judges them by the checker's rules (<see cref="ImageLayout"/>). What leaves the image
    /// meaningless is refused: no Parallels header, a BAT larger than the file or too small for the disk, a data_off
    /// that is not where data can start. Damage local to clusters (BAT entries outside the file, as a truncated file
    /// has, before the data area, between clusters, or sharing a cluster) is not: those clusters are known, reads of
    /// them fail (<see cref="DamagedClusterException"/>), everything else is served, and the image is never written.
    /// <paramref name="inUseByOtherWriter"/>: the file is locked force-share beside a writer (see
    /// <see cref="ImageLayer.InUseByOtherWriter"/>), so "Ynot" is no sign of a crash.
    /// </summary>
    public static ExpandableImage Open(ImageFile file, bool inUseByOtherWriter = false)
    {
        string name = file.Path;
        if (!ImageLayout.TryRead(file, null, out var layout, out _, out string error))
        {
            throw new ImageFormatException(name, error);
        }

        var header = layout.Header;
        if (layout.BatTooSmall is { } small)
        {
            throw new ImageFormatException(name, small);
        }

        // A data_off past the end is what a truncated file has; the clusters it cuts off are damaged like the others.
        if (layout.DataOffsetFault is not (DataOffsetFault.None or DataOffsetFault.PastEndOfFile))
        {
            throw new ImageFormatException(name, $"data_off field has incorrect value {header.DataOffsetSectors}: it {layout.DataOffsetFaultText}; run 'prlfuse check --repair'");
        }

        var bat = layout.Bat;
        long dataOffsetBytes = layout.DataOffsetBytes;
        var image = new ExpandableImage(file, header, bat, dataOffsetBytes);
        if (layout.DataOffsetFault == DataOffsetFault.PastEndOfFile)
        {
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

        image.LoadExtension(layout.FileLength);
        image.CheckWritable();
        return image;
    }

    private void LoadExtension(long fileLength)
    {
        if (Header.ExtensionOffsetSectors == 0)
        {
            return;
        }

        long cluster = ClusterBytes;
        if (Header.ExtensionOffsetSectors > (ulong)(fileLength / 512)
            || (long)Header.ExtensionOffsetSectors * 512 < DataOffsetBytes
            || ((long)Header.ExtensionOffsetSectors * 512) + cluster > fileLength
            || cluster > 64 << 20)
        {
            ExtensionError = $"format extension offset {Header.ExtensionOffsetSectors} is outside the data area";
            AddWarning(WarningCodes.BrokenExtension, ExtensionError);
            return;
        }

        byte[] buffer = GC.AllocateUninitializedArray<byte>((int)cluster);
        File.ReadZeroFilled(buffer, (long)Header.ExtensionOffsetSectors * 512);
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
        if (host != 0 && _damaged is { } damaged && (damaged[cluster >> 6] & (1UL << (int)(cluster & 63))) != 0)
        {
            // This layer holds the cluster (nothing below may answer for it) but cannot say where.
            hostOffset = DamagedHostOffset;
            return true;
        }

        hostOffset = host + within;
        return host != 0;
    }

    public override long CountAllocatedClusters() => _empty ? 0 : Bat.CountAllocated();

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            try
            {
                CloseForWrite();
            }
            finally
            {
                StopGrowthAhead();
                OnDispose();
                base.Dispose(disposing);
            }
        }
    }
}
