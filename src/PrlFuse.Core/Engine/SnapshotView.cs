namespace PrlFuse.Core.Engine;

/// <summary>
/// The guest disk as it is in one snapshot: the storages of the disk joined end to end, each read through this
/// snapshot's chain of layers. Thread-safe; reads take no lock.
/// </summary>
public sealed class SnapshotView
{
    // Replaced whole when a live snapshot gives the top a new image (ReplaceStorages); every operation reads it once.
    private StorageChain[] _storages;
    private string? _name;

    internal SnapshotView(Guid id, bool isTop, bool isWritable, long size, StorageChain[] storages)
    {
        Id = id;
        IsTop = isTop;
        IsWritable = isWritable;
        Size = size;

        // Reads find a storage by binary search and walk on to the next one, so the chains must be in disk order;
        // a descriptor may list its storages in any order (SnapshotTree checks they tile the disk).
        _storages = [.. storages.OrderBy(s => s.StartBytes)];
    }

    public Guid Id { get; }

    /// <summary>
    /// The name a mount's file (without .raw) and a server's export have: the GUID in braces for a snapshot of the
    /// tree, the name (or ID) of a qcow2 internal snapshot.
    /// </summary>
    public string Name { get => _name ??= Descriptor.DiskDescriptor.FormatGuid(Id); init => _name = value; }

    /// <summary>The qcow2 internal snapshot this view shows, or null for a snapshot of the tree.</summary>
    public Formats.Qcow2.Qcow2Snapshot? Internal { get; init; }

    public bool IsTop { get; }

    /// <summary>True only for the top snapshot of a disk opened read-write.</summary>
    public bool IsWritable { get; }

    /// <summary>Guest size in bytes.</summary>
    public long Size { get; }

    /// <summary>The storages in disk order (which may differ from the descriptor's; see StorageChain.StorageIndex).</summary>
    public IReadOnlyList<StorageChain> Storages => Volatile.Read(ref _storages);

    /// <summary>
    /// Gives this view new chains (a live snapshot put a new empty image on top of each storage). The content must be
    /// the same: an operation that already read the old chains finishes on them, whose layers stay open.
    /// </summary>
    internal void ReplaceStorages(StorageChain[] storages) =>
        Volatile.Write(ref _storages, [.. storages.OrderBy(s => s.StartBytes)]);

    /// <summary>Reads guest bytes at any offset and length; returns how many (fewer only at the end of the disk).</summary>
    public int Read(Span<byte> destination, long offset)
    {
        var storages = Volatile.Read(ref _storages);
        if (offset < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(offset));
        }

        if (offset >= Size)
        {
            return 0;
        }

        int total = (int)Math.Min(destination.Length, Size - offset);
        int done = 0;
        int s = FindStorage(storages, offset);
        while (done < total)
        {
            var storage = storages[s];
            long within = offset + done - storage.StartBytes;
            int n = (int)Math.Min(total - done, storage.LengthBytes - within);
            storage.Read(destination.Slice(done, n), within);
            done += n;
            s++;
        }

        return total;
    }

    /// <summary>
    /// Where guest bytes [offset, offset + length) live, without reading them: fills <paramref name="pieces"/> in guest
    /// order and returns how many were used, or -1 when they do not fit (the caller then reads the range instead).
    /// The range must lie within the disk. A piece's file may be written (and grow) concurrently, as with Read.
    /// </summary>
    public int MapRange(long offset, int length, Span<HostPiece> pieces)
    {
        var storages = Volatile.Read(ref _storages);
        if (offset < 0 || length < 0 || offset > Size || length > Size - offset)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), "range beyond the end of the disk");
        }

        int count = 0;
        int done = 0;
        int s = FindStorage(storages, offset);
        while (done < length)
        {
            var storage = storages[s];
            long within = offset + done - storage.StartBytes;
            int n = (int)Math.Min(length - done, storage.LengthBytes - within);
            if (!storage.MapRange(within, n, pieces, ref count))
            {
                return -1;
            }

            done += n;
            s++;
        }

        return count;
    }

    /// <summary>
    /// Writes guest bytes at any offset and length (the top snapshot of a read-write disk only). Not durable until
    /// <see cref="Flush"/>. Writes past the end of the disk are refused.
    /// </summary>
    public void Write(ReadOnlySpan<byte> source, long offset)
    {
        var storages = Volatile.Read(ref _storages);
        if (!IsWritable)
        {
            throw new InvalidOperationException($"snapshot {Id:B} is read-only");
        }

        if (offset < 0 || offset > Size || source.Length > Size - offset)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), "write beyond the end of the disk");
        }

        int done = 0;
        int s = FindStorage(storages, offset);
        while (done < source.Length)
        {
            var storage = storages[s];
            long within = offset + done - storage.StartBytes;
            int n = (int)Math.Min(source.Length - done, storage.LengthBytes - within);
            storage.Write(source.Slice(done, n), within);
            done += n;
            s++;
        }
    }

    /// <summary>Makes every completed write durable: data first, then the BAT entries pointing at it.</summary>
    public void Flush()
    {
        var storages = Volatile.Read(ref _storages);
        if (!IsWritable)
        {
            return;
        }

        foreach (var storage in storages)
        {
            storage.Flush();
        }
    }

    /// <summary>
    /// SEEK_DATA: the first offset at or after <paramref name="offset"/> where a layer of this snapshot holds data, or -1
    /// when there is none before the end (lseek then fails with ENXIO). From the allocation tables; nothing is read.
    /// </summary>
    public long SeekData(long offset)
    {
        var storages = Volatile.Read(ref _storages);
        if (offset < 0 || offset >= Size)
        {
            return -1;
        }

        for (int s = FindStorage(storages, offset); s < storages.Length; s++)
        {
            var storage = storages[s];
            long within = Math.Max(0, offset - storage.StartBytes);
            long data = storage.NextData(within);
            if (data < storage.LengthBytes)
            {
                return storage.StartBytes + data;
            }
        }

        return -1;
    }

    /// <summary>
    /// SEEK_HOLE: the first offset at or after <paramref name="offset"/> that no layer holds, or <see cref="Size"/> (the
    /// end of a file counts as a hole); -1 when <paramref name="offset"/> is past the end.
    /// </summary>
    public long SeekHole(long offset)
    {
        var storages = Volatile.Read(ref _storages);
        if (offset < 0 || offset >= Size)
        {
            return -1;
        }

        for (int s = FindStorage(storages, offset); s < storages.Length; s++)
        {
            var storage = storages[s];
            long within = Math.Max(0, offset - storage.StartBytes);
            long hole = storage.NextHole(within);
            if (hole < storage.LengthBytes)
            {
                return storage.StartBytes + hole;
            }
        }

        return Size;
    }

    /// <summary>
    /// Where this snapshot's bytes from <paramref name="offset"/> come from (the start of an allocation map entry):
    /// the storage, the layer that holds them (null: no layer, they read as zeros) with its depth in the chain (0 for the
    /// top) and host offset, and how many bytes, at most <paramref name="maxLength"/>, keep that answer (contiguous in
    /// the host file). Unallocated runs are answered in one step.
    /// </summary>
    public ViewExtent GetExtent(long offset, long maxLength)
    {
        var storages = Volatile.Read(ref _storages);
        if (offset < 0 || offset >= Size)
        {
            throw new ArgumentOutOfRangeException(nameof(offset));
        }

        var storage = storages[FindStorage(storages, offset)];
        long within = offset - storage.StartBytes;
        long limit = Math.Min(maxLength, storage.LengthBytes - within);
        int depth = storage.ResolveExtent(within, limit, out long host, out long length);
        return new ViewExtent(offset, length, depth, depth < 0 ? null : storage.Layers[depth], depth < 0 ? 0 : host, storage);
    }

    /// <summary>
    /// Makes guest bytes [offset, offset + length) read as zeros (fallocate PUNCH_HOLE or ZERO_RANGE on the top snapshot
    /// of a read-write disk): host space is released where the format allows (see StorageChain.Discard). Not durable
    /// until <see cref="Flush"/>. Returns true when the host could not punch holes and zeros were written instead.
    /// </summary>
    public bool Discard(long offset, long length)
    {
        var storages = Volatile.Read(ref _storages);
        if (!IsWritable)
        {
            throw new InvalidOperationException($"snapshot {Id:B} is read-only");
        }

        if (offset < 0 || length < 0 || offset > Size || length > Size - offset)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), "discard beyond the end of the disk");
        }

        bool punchUnsupported = false;
        long done = 0;
        int s = FindStorage(storages, offset);
        while (done < length)
        {
            var storage = storages[s];
            long within = offset + done - storage.StartBytes;
            long n = Math.Min(length - done, storage.LengthBytes - within);
            punchUnsupported |= storage.Discard(within, n);
            done += n;
            s++;
        }

        return punchUnsupported;
    }

    /// <summary>
    /// Whether <paramref name="offset"/> is allocated in any layer of this snapshot, and for how many bytes (at most
    /// <paramref name="maxLength"/>) that stays so.
    /// </summary>
    public long GetAllocationStatus(long offset, long maxLength, out bool allocated)
    {
        maxLength = Math.Min(maxLength, Size - offset);
        long data = SeekData(offset);
        allocated = data == offset;
        long end = allocated ? SeekHole(offset) : data < 0 ? Size : data;
        return Math.Min(maxLength, end - offset);
    }

    /// <summary>Bytes allocated anywhere in this snapshot's chains (what st_blocks reports), from the allocation tables.</summary>
    public long CountAllocatedBytes()
    {
        long total = 0;
        for (long data = SeekData(0); data >= 0;)
        {
            long hole = SeekHole(data);
            total += hole - data;
            data = hole < Size ? SeekData(hole) : -1;
        }

        return total;
    }

    private static int FindStorage(StorageChain[] storages, long offset)
    {
        int lo = 0;
        int hi = storages.Length - 1;
        while (lo < hi)
        {
            int mid = (lo + hi + 1) / 2;
            if (storages[mid].StartBytes <= offset)
            {
                lo = mid;
            }
            else
            {
                hi = mid - 1;
            }
        }

        return lo;
    }
}

/// <summary>
/// One entry of a snapshot's allocation map: guest [Start, Start + Length) comes from <see cref="Layer"/> at
/// <see cref="Depth"/> in its storage's chain (0: the top) at host <see cref="HostOffset"/> onwards, or from no layer
/// (Depth -1, Layer null: zeros).
/// </summary>
public readonly record struct ViewExtent(long Start, long Length, int Depth, PrlFuse.Core.Images.ImageLayer? Layer, long HostOffset, StorageChain Storage);
