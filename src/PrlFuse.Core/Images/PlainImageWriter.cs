using PrlFuse.Core.IO;

namespace PrlFuse.Core.Images;

/// <summary>A raw top: guest offset is host offset, so a write goes in place and nothing below is ever read.</summary>
public sealed class PlainImageWriter : LayerWriter
{
    private readonly ImageFile _file;

    internal PlainImageWriter(ImageFile file)
    {
        _file = file;
    }

    public override (long Host, long Length) Write(long guestOffset, ReadOnlySpan<byte> data)
    {
        _file.Write(data, guestOffset);
        return (guestOffset, data.Length);
    }

    /// <summary>A raw file has no metadata: the range itself becomes a hole in the host file, or zeros where it cannot.</summary>
    public override DiscardOutcome Discard(long guestOffset, int length, bool wholeCluster, bool hideParent)
    {
        if (_file.TryPunchHole(guestOffset, length))
        {
            return new DiscardOutcome(guestOffset, length, PunchUnsupported: false);
        }

        WriteHostZeros(_file, guestOffset, length);
        return new DiscardOutcome(guestOffset, length, PunchUnsupported: true);
    }

    public override void Flush() => _file.Flush(dataOnly: true);

    public override void Close()
    {
        // Nothing to mark: a raw file has no open state. Durability is the flush's (FUSE flush and fsync call it).
    }
}
