namespace PrlFuse.Core.Engine;

/// <summary>
/// The guest disk as it is in one snapshot: the storages of the disk joined end to end, each read through this
/// snapshot's chain of layers. Thread-safe; reads take no lock.
/// </summary>
public sealed class SnapshotView
{
    private readonly StorageChain[] _storages;

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

    public bool IsTop { get; }

    /// <summary>True only for the top snapshot of a disk opened read-write.</summary>
    public bool IsWritable { get; }

    /// <summary>Guest size in bytes.</summary>
    public long Size { get; }

    /// <summary>The storages in disk order (which may differ from the descriptor's; see StorageChain.StorageIndex).</summary>
    public IReadOnlyList<StorageChain> Storages => _storages;

    /// <summary>Reads guest bytes at any offset and length; returns how many (fewer only at the end of the disk).</summary>
    public int Read(Span<byte> destination, long offset)
    {
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
        int s = FindStorage(offset);
        while (done < total)
        {
            var storage = _storages[s];
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
        if (offset < 0 || length < 0 || offset > Size || length > Size - offset)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), "range beyond the end of the disk");
        }

        int count = 0;
        int done = 0;
        int s = FindStorage(offset);
        while (done < length)
        {
            var storage = _storages[s];
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
        if (!IsWritable)
        {
            throw new InvalidOperationException($"snapshot {Id:B} is read-only");
        }

        if (offset < 0 || offset > Size || source.Length > Size - offset)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), "write beyond the end of the disk");
        }

        int done = 0;
        int s = FindStorage(offset);
        while (done < source.Length)
        {
            var storage = _storages[s];
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
        if (!IsWritable)
        {
            return;
        }

        foreach (var storage in _storages)
        {
            storage.Flush();
        }
    }

    /// <summary>
    /// Whether <paramref name="offset"/> is allocated in any layer of this snapshot, and for how many bytes (at most
    /// <paramref name="maxLength"/>) that stays so.
    /// </summary>
    public long GetAllocationStatus(long offset, long maxLength, out bool allocated)
    {
        maxLength = Math.Min(maxLength, Size - offset);
        allocated = false;
        long done = 0;
        int s = FindStorage(offset);
        while (done < maxLength && s < _storages.Length)
        {
            var storage = _storages[s];
            long within = offset + done - storage.StartBytes;
            long limit = Math.Min(maxLength - done, storage.LengthBytes - within);
            bool hit = storage.Resolve(within, limit, out _, out long run) >= 0;
            if (done == 0)
            {
                allocated = hit;
            }
            else if (hit != allocated)
            {
                break;
            }

            done += run;
            if (within + run >= storage.LengthBytes)
            {
                s++;
            }
        }

        return done;
    }

    /// <summary>Bytes allocated anywhere in this snapshot's chains (what st_blocks reports).</summary>
    public long CountAllocatedBytes()
    {
        long total = 0;
        for (long offset = 0; offset < Size;)
        {
            long n = GetAllocationStatus(offset, Size - offset, out bool allocated);
            if (allocated)
            {
                total += n;
            }

            offset += n;
        }

        return total;
    }

    private int FindStorage(long offset)
    {
        int lo = 0;
        int hi = _storages.Length - 1;
        while (lo < hi)
        {
            int mid = (lo + hi + 1) / 2;
            if (_storages[mid].StartBytes <= offset)
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
