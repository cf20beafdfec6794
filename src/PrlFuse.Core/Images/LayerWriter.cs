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
