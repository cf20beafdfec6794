using System.Buffers.Binary;
using PrlFuse.Core.IO;

namespace PrlFuse.Core.Formats.Qcow2;

/// <summary>
/// The refcounts of a qcow2 image as a writer changes them: the refcount table (kept in memory), refcount blocks (read
/// when first needed and kept), entries of 1 to 64 bits, and new clusters taken from the end of the image. A change is
/// written to the file at once but made durable only by the caller's next flush, which comes before any L2 or L1 entry
/// that uses it reaches the file. New refcount blocks and a moved refcount table are made durable before anything
/// points at them, so a crash at any moment leaves at worst clusters whose refcount is higher than their use (leaks).
/// Not thread-safe: the caller serializes every call.
/// </summary>
internal sealed class Qcow2Refcounts
{
    /// <summary>Bits 9-63 of a refcount table entry: the refcount block's offset.</summary>
    private const ulong TableOffsetMask = 0xFFFF_FFFF_FFFF_FE00;

    private readonly ImageFile _file;
    private readonly int _clusterBits;
    private readonly long _clusterBytes;
    private readonly int _order;

    /// <summary>log2 of the guest bytes one refcount block covers.</summary>
    private readonly int _blockSpanBits;
    private readonly ulong _max;
    private readonly Dictionary<long, byte[]> _blocks = [];
    private long[] _table;

    /// <summary>
    /// Reads the refcount table of <paramref name="header"/> from <paramref name="file"/>. New clusters are taken from
    /// the first cluster past both the file's end and the last cluster with a refcount, and never reused.
    /// </summary>
    public Qcow2Refcounts(ImageFile file, Qcow2Header header, long reservedEnd = 0)
    {
        _file = file;
        _clusterBits = header.ClusterBits;
        _clusterBytes = header.ClusterBytes;
        _order = header.RefcountOrder;
        _blockSpanBits = _clusterBits + _clusterBits + 3 - _order;
        _max = _order == 6 ? ulong.MaxValue : (1UL << (1 << _order)) - 1;
        TableOffset = header.RefcountTableOffset;
        long entries = header.RefcountTableClusters * _clusterBytes / 8;
        byte[] raw = new byte[entries * 8];
        file.ReadZeroFilled(raw, TableOffset);
        _table = new long[entries];
        for (int i = 0; i < entries; i++)
        {
            _table[i] = (long)(BinaryPrimitives.ReadUInt64BigEndian(raw.AsSpan(i * 8)) & TableOffsetMask);
        }

        NextFree = Math.Max(RoundUp(Math.Max(file.Length, reservedEnd)), LastCountedEnd());
    }

    /// <summary>Where the refcount table is now (it moves when it grows).</summary>
    public long TableOffset { get; private set; }

    public int TableClusters => (int)(_table.LongLength * 8 / _clusterBytes);

    /// <summary>The next cluster <see cref="Allocate"/> hands out.</summary>
    public long NextFree { get; private set; }

    /// <summary>Called with the new table's place after the refcount table moved (the header on disk already says so).</summary>
    public Action<long, int>? TableMoved { get; set; }

    private long RoundUp(long offset) => (offset + _clusterBytes - 1) & ~(_clusterBytes - 1);

    /// <summary>The end of the last cluster whose refcount is not zero.</summary>
    private long LastCountedEnd()
    {
        for (long t = _table.LongLength - 1; t >= 0; t--)
        {
            if (_table[t] == 0 || !BlockReadable(_table[t]))
            {
                continue;
            }

            var block = Block(t);
            for (long i = (1L << (_blockSpanBits - _clusterBits)) - 1; i >= 0; i--)
            {
                if (Get(block, i) != 0)
                {
                    return ((t << (_blockSpanBits - _clusterBits)) + i + 1) << _clusterBits;
                }
            }
        }

        return 0;
    }

    private bool BlockReadable(long offset) => offset > 0 && (offset & (_clusterBytes - 1)) == 0 && offset <= _file.Length - _clusterBytes;

    /// <summary>The refcount of the cluster at host <paramref name="host"/>; 0 where no refcount block covers it.</summary>
    public ulong Get(long host)
    {
        long t = host >> _blockSpanBits;
        if (t >= _table.LongLength || _table[t] == 0 || !BlockReadable(_table[t]))
        {
            return 0;
        }

        return Get(Block(t), IndexInBlock(host));
    }

    private long IndexInBlock(long host) => (host >> _clusterBits) & ((1L << (_blockSpanBits - _clusterBits)) - 1);

    private byte[] Block(long t)
    {
        if (!_blocks.TryGetValue(t, out var block))
        {
            block = new byte[_clusterBytes];
            _file.ReadZeroFilled(block, _table[t]);
            _blocks[t] = block;
        }

        return block;
    }

    private ulong Get(byte[] block, long index) => _order switch
    {
        < 3 => (ulong)(block[index >> (3 - _order)] >> (int)((index & ((1 << (3 - _order)) - 1)) << _order)) & _max,
        3 => block[index],
        4 => BinaryPrimitives.ReadUInt16BigEndian(block.AsSpan((int)index * 2)),
        5 => BinaryPrimitives.ReadUInt32BigEndian(block.AsSpan((int)index * 4)),
        _ => BinaryPrimitives.ReadUInt64BigEndian(block.AsSpan((int)index * 8)),
    };

    /// <summary>Sets an entry in memory; returns where it lies in the block (byte offset and length) for the write.</summary>
    private (int At, int Length) Put(byte[] block, long index, ulong value)
    {
        switch (_order)
        {
            case < 3:
                int at = (int)(index >> (3 - _order));
                int shift = (int)((index & ((1 << (3 - _order)) - 1)) << _order);
                block[at] = (byte)((block[at] & ~((int)_max << shift)) | ((int)value << shift));
                return (at, 1);
            case 3:
                block[index] = (byte)value;
                return ((int)index, 1);
            case 4:
                BinaryPrimitives.WriteUInt16BigEndian(block.AsSpan((int)index * 2), (ushort)value);
                return ((int)index * 2, 2);
            case 5:
                BinaryPrimitives.WriteUInt32BigEndian(block.AsSpan((int)index * 4), (uint)value);
                return ((int)index * 4, 4);
            default:
                BinaryPrimitives.WriteUInt64BigEndian(block.AsSpan((int)index * 8), value);
                return ((int)index * 8, 8);
        }
    }

    /// <summary>
    /// Sets the refcount of the cluster at <paramref name="host"/> and writes it (not flushed). A cluster no block
    /// covers gets one first (<see cref="Allocate"/>'s way), so this also serves a repair raising refcounts.
    /// </summary>
    public void Set(long host, ulong value)
    {
        if (value > _max)
        {
            throw new IOException($"{_file.Path}: refcount of cluster at {host} would exceed {_max}, the largest the image's {1 << _order}-bit refcounts hold");
        }

        long t = host >> _blockSpanBits;
        while (t >= _table.LongLength || _table[t] == 0)
        {
            if (t >= _table.LongLength)
            {
                GrowTable(t);
            }
            else
            {
                NewBlockFor(t);
            }
        }

        var block = Block(t);
        var (at, length) = Put(block, IndexInBlock(host), value);
        _file.Write(block.AsSpan(at, length), _table[t] + at);
    }

    /// <summary>Adds <paramref name="delta"/> to the refcount of every cluster that [host, host + length) touches.</summary>
    public void Add(long host, long length, int delta)
    {
        for (long c = host >> _clusterBits; c <= (host + length - 1) >> _clusterBits; c++)
        {
            ulong old = Get(c << _clusterBits);
            if (delta < 0 && old == 0)
            {
                // Already free (a damaged image): never below zero.
                continue;
            }

            Set(c << _clusterBits, delta < 0 ? old - (ulong)-delta : old + (ulong)delta);
        }
    }

    /// <summary>A new cluster with refcount 1, at the end of the image (its refcount written, not flushed).</summary>
    public long Allocate()
    {
        while (true)
        {
            long host = NextFree;
            long t = host >> _blockSpanBits;
            if (t >= _table.LongLength)
            {
                GrowTable(t);
                continue;
            }

            if (_table[t] == 0)
            {
                NewBlockFor(t);
                continue;
            }

            NextFree += _clusterBytes;
            Set(host, 1);
            return host;
        }
    }

    /// <summary>
    /// A refcount block for table entry <paramref name="t"/>, placed at the next free cluster when that lies in the
    /// range it covers (it then counts itself), else after the clusters it must cover. Durable before the table
    /// entry that points at it is written.
    /// </summary>
    private void NewBlockFor(long t)
    {
        long host = NextFree;
        var block = new byte[_clusterBytes];
        if (host >> _blockSpanBits == t)
        {
            Put(block, IndexInBlock(host), 1);
        }

        NextFree += _clusterBytes;
        _file.Write(block, host);
        _file.Flush(dataOnly: true);
        _table[t] = host;
        _blocks[t] = block;
        Span<byte> entry = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(entry, (ulong)host);
        _file.Write(entry, TableOffset + (t * 8));
        if (host >> _blockSpanBits != t)
        {
            // Its own refcount lives in another block, set once this one is in place.
            Set(host, 1);
        }
    }

    /// <summary>
    /// Moves the refcount table to a larger one at the end of the image, with new refcount blocks for every range the
    /// new clusters fall in: blocks and table written and made durable, then the header switched to it (made durable),
    /// then the old table's clusters freed.
    /// </summary>
    private void GrowTable(long needed)
    {
        long perCluster = _clusterBytes / 8;
        long entries = Math.Max(needed + 1, _table.LongLength * 2);
        long start = NextFree;
        long tableClusters;
        List<long> newBlocks;
        while (true)
        {
            entries = (entries + perCluster - 1) / perCluster * perCluster;
            tableClusters = entries / perCluster;
            newBlocks = [];
            long end = start + (tableClusters << _clusterBits);
            while (true)
            {
                // Every range the table and the new blocks fall in that no block covers needs one, itself placed after.
                long last = (end - 1) >> _blockSpanBits;
                var missing = new List<long>();
                for (long t = start >> _blockSpanBits; t <= last; t++)
                {
                    if (t >= _table.LongLength || _table[t] == 0)
                    {
                        missing.Add(t);
                    }
                }

                long newEnd = start + ((tableClusters + missing.Count) << _clusterBits);
                newBlocks = missing;
                if (newEnd == end)
                {
                    break;
                }

                end = newEnd;
            }

            if (newBlocks.Count == 0 || newBlocks[^1] < entries)
            {
                break;
            }

            entries = newBlocks[^1] + 1;
        }

        var table = new long[entries];
        Array.Copy(_table, table, _table.LongLength);
        long blockAt = start + (tableClusters << _clusterBits);
        var fresh = new Dictionary<long, byte[]>();
        foreach (long t in newBlocks)
        {
            table[t] = blockAt;
            fresh[t] = new byte[_clusterBytes];
            blockAt += _clusterBytes;
        }

        // Count the new table and blocks, in the new blocks or in blocks already there.
        var touched = new HashSet<long>();
        for (long c = start; c < blockAt; c += _clusterBytes)
        {
            long t = c >> _blockSpanBits;
            var block = fresh.TryGetValue(t, out var f) ? f : Block(t);
            Put(block, IndexInBlock(c), 1);
            if (f is null)
            {
                touched.Add(t);
            }
        }

        foreach (var (t, block) in fresh)
        {
            _file.Write(block, table[t]);
            _blocks[t] = block;
        }

        foreach (long t in touched)
        {
            _file.Write(_blocks[t], table[t]);
        }

        byte[] raw = new byte[entries * 8];
        for (long i = 0; i < entries; i++)
        {
            BinaryPrimitives.WriteUInt64BigEndian(raw.AsSpan((int)(i * 8)), (ulong)table[i]);
        }

        _file.Write(raw, start);
        _file.Flush(dataOnly: true);

        Span<byte> fields = stackalloc byte[12];
        BinaryPrimitives.WriteUInt64BigEndian(fields, (ulong)start);
        BinaryPrimitives.WriteUInt32BigEndian(fields[8..], (uint)tableClusters);
        _file.Write(fields, FieldLocations.RefcountTableOffset);
        _file.Flush(dataOnly: true);

        long oldOffset = TableOffset;
        long oldBytes = _table.LongLength * 8;
        _table = table;
        TableOffset = start;
        NextFree = blockAt;
        TableMoved?.Invoke(start, (int)tableClusters);
        if (oldBytes > 0)
        {
            Add(oldOffset, oldBytes, -1);
        }
    }
}
