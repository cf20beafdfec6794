using PrlFuse.Core.Formats;
using PrlFuse.Core.IO;

namespace PrlFuse.Core.Images;

/// <summary>
/// A Parallels expandable image: header, BAT, data clusters. Opening validates the header and every BAT entry
/// against the file, so reads never follow a pointer outside the file.
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
    /// Reads and validates header and BAT. The file's own length bounds every size the header claims before
    /// anything is allocated for it. <paramref name="inUseByOtherWriter"/>: the file is locked force-share beside a
    /// writer (see <see cref="ImageLayer.InUseByOtherWriter"/>), so "Ynot" is no sign of a crash.
    /// </summary>
    public static ExpandableImage Open(ImageFile file, bool inUseByOtherWriter = false)
    {
        string name = file.Path;
        long fileLength = file.Length;
        Span<byte> headerBytes = stackalloc byte[ParallelsHeader.Size];
        if (file.Read(headerBytes, 0) < ParallelsHeader.Size)
        {
            throw new ImageFormatException(name, $"file is shorter than a Parallels header ({fileLength} bytes)");
        }

        if (!ParallelsHeader.TryRead(headerBytes, out var header, out string error))
        {
            throw new ImageFormatException(name, error);
        }

        long batBytes = 4L * header.BatEntries;
        if (ParallelsHeader.Size + batBytes > fileLength)
        {
            throw new ImageFormatException(name, $"BAT of {header.BatEntries} entries is larger than the file ({fileLength} bytes) could hold");
        }

        // Compared in sectors: both sides fit in 64 bits (at most 2^29 entries of 2^22 sectors), whereas a hostile
        // nb_sectors times 512 can wrap to a small number and slip past a byte comparison.
        if ((ulong)header.BatEntries * header.ClusterSectors < header.SectorCount)
        {
            throw new ImageFormatException(name, $"BAT of {header.BatEntries} clusters is too small for a disk of {header.SectorCount} sectors");
        }

        long dataOffsetSectors = header.DataOffsetSectors;
        long minimum = header.MinimumDataOffsetSectors;
        if (dataOffsetSectors == 0)
        {
            if (header.Magic == ParallelsMagic.WithouFreSpacExt)
            {
                throw new ImageFormatException(name, "data_off is 0, which a WithouFreSpacExt image may not have");
            }

            dataOffsetSectors = minimum;
        }
        else if (dataOffsetSectors < minimum)
        {
            throw new ImageFormatException(name, $"data_off {dataOffsetSectors} lies inside the BAT (minimum {minimum}); run 'prlfuse check --repair'");
        }
        else if (header.Magic == ParallelsMagic.WithouFreSpacExt && dataOffsetSectors % header.ClusterSectors != 0)
        {
            throw new ImageFormatException(name, $"data_off {dataOffsetSectors} is not aligned to the cluster size of {header.ClusterSectors} sectors");
        }

        long dataOffsetBytes = dataOffsetSectors * 512;
        if (dataOffsetBytes > fileLength)
        {
            throw new ImageFormatException(name, $"data_off {dataOffsetSectors} lies past the end of the file");
        }

        byte[] raw = GC.AllocateUninitializedArray<byte>(checked((int)batBytes));
        file.ReadZeroFilled(raw, ParallelsHeader.Size);
        var bat = BlockAllocationTable.Parse(raw, (int)header.BatEntries, header.BatUnitBytes, header.ClusterBytes);
        var problems = bat.FindProblems(dataOffsetBytes, fileLength, max: 1);
        if (problems.Count > 0)
        {
            throw new ImageFormatException(name, problems[0].Describe(header.ClusterBytes) + "; run 'prlfuse check' for the full list");
        }

        var image = new ExpandableImage(file, header, bat, dataOffsetBytes);
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

        image.LoadExtension(fileLength);
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
