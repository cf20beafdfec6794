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

    public override long FindNext(long offset, bool allocated) =>
        offset < _size ? (allocated ? offset : _size) : (allocated ? long.MaxValue : offset);

    protected override LayerWriter CreateWriter(IParentContent parent) => new PlainImageWriter(File);

    public override long CountAllocatedClusters() => (_size + ReportingClusterBytes - 1) / ReportingClusterBytes;
}
