using PrlFuse.Core.IO;

namespace PrlFuse.Core.Images;

/// <summary>A raw image: guest offset = host offset, every byte allocated up to the file's length.</summary>
public sealed class PlainImage : ImageLayer
{
    public const long ReportingClusterBytes = 1 << 20;

    private readonly long _size;

    public PlainImage(ImageFile file, long virtualSize)
        : base(file)
    {
        _size = virtualSize;
    }

    public override ImageKind Kind => ImageKind.Plain;

    public override long VirtualSize => _size;

    public override long ClusterBytes => ReportingClusterBytes;

    public override bool TryMap(long offset, out long hostOffset, out long run)
    {
        if (offset < _size)
        {
            hostOffset = offset;
            run = _size - offset;
            return true;
        }

        hostOffset = 0;
        run = long.MaxValue;
        return false;
    }

    /// <summary>
    /// A raw file's own holes (SEEK_DATA/SEEK_HOLE on the host file) are holes of the layer: a sparse raw disk is not all
    /// data. Where the host cannot say, every byte up to the size is data.
    /// </summary>
    public override long FindNext(long offset, bool allocated)
    {
        if (offset >= _size)
        {
            return allocated ? long.MaxValue : offset;
        }

        long end = Math.Min(_size, File.Length);
        if (offset >= end)
        {
            // Past the file's end it reads as zeros.
            return allocated ? long.MaxValue : offset;
        }

        if (File.Handle is not { } handle)
        {
            return allocated ? offset : end;
        }

        long found = Posix.LSeek(handle, offset, allocated ? SeekData : SeekHole);
        if (found < 0)
        {
            // ENXIO: no data from here to the end of the file; anything else: the host cannot say, so all is data.
            return Posix.LastError == Errno.ENXIO ? (allocated ? long.MaxValue : offset) : (allocated ? offset : end);
        }

        return allocated ? (found >= end ? long.MaxValue : found) : Math.Min(found, end);
    }

    private const int SeekData = 3;
    private const int SeekHole = 4;

    protected override LayerWriter CreateWriter(IParentContent parent) => new PlainImageWriter(File);

    public override long CountAllocatedClusters() => (_size + ReportingClusterBytes - 1) / ReportingClusterBytes;
}
