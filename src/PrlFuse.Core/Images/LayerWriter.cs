namespace PrlFuse.Core.Images;

/// <summary>
/// The content of the chain below a layer, as the layer's writer sees it: guest bytes of the parent, zeros where
/// nothing below holds data and past the end. A writable top is opened over it (<see cref="ImageLayer.OpenWriter"/>)
/// and reads it itself to fill the rest of a cluster it writes for the first time.
/// </summary>
public interface IParentContent
{
    /// <summary>Reads guest bytes [<paramref name="guestOffset"/>, + destination.Length) of the parent.</summary>
    void Read(Span<byte> destination, long guestOffset);
}

/// <summary>
/// What <see cref="LayerWriter.Discard"/> changed: the host range whose cached blocks are stale (length 0 for none), and
/// whether the host could not punch a hole where the format wanted one (zeros were written instead).
/// </summary>
public readonly record struct DiscardOutcome(long Host, long Length, bool PunchUnsupported);

/// <summary>
/// The write side of one layer: only the writable top of a chain has one, and the layer owns it (it is disposed, with
/// a clean close, before the layer's file). Readers of the layer never go through it.
/// </summary>
public abstract class LayerWriter : IDisposable
{
    /// <summary>
    /// Writes <paramref name="data"/> at guest <paramref name="guestOffset"/>; the range lies within one cluster of the
    /// layer (<see cref="ImageLayer.ClusterBytes"/>). Returns the host range written, for cache invalidation.
    /// </summary>
    public abstract (long Host, long Length) Write(long guestOffset, ReadOnlySpan<byte> data);

    /// <summary>
    /// Makes guest [<paramref name="guestOffset"/>, + <paramref name="length"/>), which lies within one cluster, read as
    /// zeros (discard and write-zeroes). <paramref name="wholeCluster"/>: the range covers the cluster as far as the disk
    /// goes, so the format may release it. <paramref name="hideParent"/>: the chain below holds data in this cluster, so
    /// the layer must keep covering it (a cluster of its own that reads as zeros) rather than drop it. The same
    /// durability as <see cref="Write"/>: after <see cref="Flush"/> the range reads as zeros whatever happens. This
    /// default writes zeros, which every format can.
    /// </summary>
    public virtual DiscardOutcome Discard(long guestOffset, int length, bool wholeCluster, bool hideParent)
    {
        var (host, written) = WriteZeros(guestOffset, length);
        return new DiscardOutcome(host, written, PunchUnsupported: true);
    }

    /// <summary>Zeros for <see cref="WriteZeros"/>: written, never changed.</summary>
    private static readonly byte[] s_zeros = new byte[1 << 20];

    /// <summary>
    /// Writes zeros over guest [guestOffset, + length) through <see cref="Write"/>, within one cluster; returns the host
    /// range the writes covered (for cache invalidation).
    /// </summary>
    protected (long Host, long Length) WriteZeros(long guestOffset, long length)
    {
        long first = long.MaxValue;
        long end = 0;
        for (long done = 0; done < length;)
        {
            int n = (int)Math.Min(length - done, s_zeros.Length);
            var (host, written) = Write(guestOffset + done, s_zeros.AsSpan(0, n));
            first = Math.Min(first, host);
            end = Math.Max(end, host + written);
            done += n;
        }

        return first == long.MaxValue ? (0, 0) : (first, end - first);
    }

    /// <summary>Writes zeros at host [host, + length) of <paramref name="file"/> (where punching holes is not possible).</summary>
    protected static void WriteHostZeros(IO.ImageFile file, long host, long length)
    {
        for (long done = 0; done < length;)
        {
            int n = (int)Math.Min(length - done, s_zeros.Length);
            file.Write(s_zeros.AsSpan(0, n), host + done);
            done += n;
        }
    }

    /// <summary>Makes every completed write durable, in the format's order (data before the metadata pointing at it).</summary>
    public abstract void Flush();

    /// <summary>Clean close: everything durable and the image marked closed. Idempotent.</summary>
    public abstract void Close();

    public void Dispose()
    {
        Dispose(true);
        GC.SuppressFinalize(this);
    }

    protected virtual void Dispose(bool disposing)
    {
        if (disposing)
        {
            Close();
        }
    }
}
