using System.Buffers.Binary;

namespace PrlFuse.Core.Formats.Parallels;

/// <summary>What is wrong with one BAT entry.</summary>
public enum BatProblemKind
{
    /// <summary>The entry points into the header or BAT, before the data area.</summary>
    BeforeDataArea,

    /// <summary>(offset - data offset) is not a multiple of the cluster size.</summary>
    Misaligned,

    /// <summary>The cluster does not lie wholly inside the file.</summary>
    OutsideFile,

    /// <summary>Another entry points at the same cluster.</summary>
    Duplicate,
}

/// <summary>One problem found in a BAT. <see cref="OtherIndex"/> is the first entry of a duplicate pair.</summary>
public readonly record struct BatProblem(BatProblemKind Kind, long Index, long HostOffset, long OtherIndex = -1)
{
    public string Describe(long clusterBytes) => Kind switch
    {
        BatProblemKind.BeforeDataArea => $"BAT entry {Index} points at offset {HostOffset}, before the data area",
        BatProblemKind.Misaligned => $"BAT entry {Index} points at offset {HostOffset}, not aligned to the {clusterBytes}-byte clusters",
        BatProblemKind.OutsideFile => $"BAT entry {Index}: cluster at offset {HostOffset} lies outside the file",
        _ => $"BAT entry {Index} points at offset {HostOffset}, which entry {OtherIndex} uses too",
    };
}

/// <summary>
/// The in-memory block allocation table of one expandable image: entry i maps guest cluster i to a host offset.
/// Entries are read with acquire semantics and set with release semantics, so readers need no lock while the
/// image's writer allocates (the writer serialises itself; see ExpandableImage).
/// </summary>
public sealed class BlockAllocationTable
{
    private readonly uint[] _entries;

    // One bit per entry, set when the entry is not zero: finding the next allocated (or free) cluster scans 64 entries
    // per step, which is what SEEK_DATA/SEEK_HOLE and the allocation map need on disks of millions of clusters.
    private readonly ulong[] _allocated;

    public BlockAllocationTable(uint[] entries, long unitBytes, long clusterBytes)
    {
        _entries = entries;
        UnitBytes = unitBytes;
        ClusterBytes = clusterBytes;
        _allocated = new ulong[(entries.Length + 63) / 64];

        // Runs of zero entries (most of a large sparse disk) are skipped by a vectorised search.
        int i = 0;
        while (i < entries.Length)
        {
            int next = entries.AsSpan(i).IndexOfAnyExcept(0u);
            if (next < 0)
            {
                break;
            }

            i += next;
            _allocated[i >> 6] |= 1UL << (i & 63);
            i++;
        }
    }

    /// <summary>Number of entries (clusters the image can address).</summary>
    public int Count => _entries.Length;

    /// <summary>Bytes one entry unit stands for (512 or the cluster size).</summary>
    public long UnitBytes { get; }

    public long ClusterBytes { get; }

    /// <summary>Parses <paramref name="count"/> little-endian entries. The caller has checked the span against the file size.</summary>
    public static BlockAllocationTable Parse(ReadOnlySpan<byte> raw, int count, long unitBytes, long clusterBytes)
    {
        var entries = GC.AllocateUninitializedArray<uint>(count);
        for (int i = 0; i < count; i++)
        {
            entries[i] = BinaryPrimitives.ReadUInt32LittleEndian(raw[(i * 4)..]);
        }

        return new BlockAllocationTable(entries, unitBytes, clusterBytes);
    }

    public uint GetEntry(long index) => Volatile.Read(ref _entries[index]);

    /// <summary>Host byte offset of <paramref name="cluster"/>, or 0 when it is unallocated or beyond the table.</summary>
    public long GetHostOffset(long cluster) =>
        (ulong)cluster < (ulong)_entries.Length ? Volatile.Read(ref _entries[cluster]) * UnitBytes : 0;

    /// <summary>Publishes an entry. The data it points at must already be in the file.</summary>
    public void SetEntry(long index, uint value)
    {
        Volatile.Write(ref _entries[index], value);
        ulong bit = 1UL << (int)(index & 63);
        if (value != 0)
        {
            Interlocked.Or(ref _allocated[index >> 6], bit);
        }
        else
        {
            Interlocked.And(ref _allocated[index >> 6], ~bit);
        }
    }

    /// <summary>
    /// The first entry at or after <paramref name="index"/> that is allocated (<paramref name="allocated"/> true) or zero,
    /// or <see cref="Count"/> when there is none.
    /// </summary>
    public long FindNext(long index, bool allocated)
    {
        if (index >= _entries.Length)
        {
            return _entries.Length;
        }

        long word = index >> 6;
        ulong flip = allocated ? 0 : ulong.MaxValue;
        ulong bits = (Volatile.Read(ref _allocated[word]) ^ flip) & (ulong.MaxValue << (int)(index & 63));
        while (bits == 0)
        {
            if (++word >= _allocated.Length)
            {
                return _entries.Length;
            }

            bits = Volatile.Read(ref _allocated[word]) ^ flip;
        }

        return Math.Min(_entries.Length, (word << 6) + System.Numerics.BitOperations.TrailingZeroCount(bits));
    }

    public uint EntryForHostOffset(long hostOffset) => checked((uint)(hostOffset / UnitBytes));

    public int CountAllocated() => _entries.Length - _entries.AsSpan().Count(0u);

    /// <summary>Highest end offset of any allocated cluster (0 when none).</summary>
    public long UsedEnd()
    {
        uint max = 0;
        foreach (uint e in _entries)
        {
            max = Math.Max(max, e);
        }

        return max == 0 ? 0 : (max * UnitBytes) + ClusterBytes;
    }

    /// <summary>Writes entries [first, first + count) in on-disk form.</summary>
    public void WriteEntries(Span<byte> destination, int first, int count)
    {
        for (int i = 0; i < count; i++)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(destination[(i * 4)..], GetEntry(first + i));
        }
    }

    /// <summary>
    /// What is wrong with one entry on its own (null when nothing: it may still share its cluster with another
    /// entry). The spec's rules for a cluster offset, in the order they are tested.
    /// </summary>
    public BatProblemKind? Classify(uint entry, long dataOffsetBytes, long fileLength)
    {
        long host = entry * UnitBytes;
        if (host < dataOffsetBytes)
        {
            return BatProblemKind.BeforeDataArea;
        }

        if ((host - dataOffsetBytes) % ClusterBytes != 0)
        {
            return BatProblemKind.Misaligned;
        }

        return host + ClusterBytes > fileLength ? BatProblemKind.OutsideFile : null;
    }

    /// <summary>
    /// Every problem in the table, in entry order (duplicates after the others): the spec's rules for cluster
    /// offsets. The checker reports and repairs them all; the reader fails reads of those clusters.
    /// </summary>
    public List<BatProblem> FindProblems(long dataOffsetBytes, long fileLength, int max = int.MaxValue)
    {
        var problems = new List<BatProblem>();
        Scan(dataOffsetBytes, fileLength, p =>
        {
            problems.Add(p);
            return problems.Count < max;
        });
        return problems;
    }

    /// <summary>
    /// Calls <paramref name="onProblem"/> for every problem in <see cref="FindProblems"/>'s order, until it returns
    /// false; keeps nothing itself, so a caller that needs only counts and a few examples stays small however
    /// broken a (hostile) BAT is.
    /// </summary>
    public void Scan(long dataOffsetBytes, long fileLength, Func<BatProblem, bool> onProblem)
    {
        int valid = 0;
        var sorted = new ulong[CountAllocated()];
        for (int i = 0; i < _entries.Length; i++)
        {
            // Runs of zero entries are skipped by a vectorised search.
            int next = _entries.AsSpan(i).IndexOfAnyExcept(0u);
            if (next < 0)
            {
                break;
            }

            i += next;
            uint e = _entries[i];

            if (Classify(e, dataOffsetBytes, fileLength) is { } kind)
            {
                if (!onProblem(new BatProblem(kind, i, e * UnitBytes)))
                {
                    return;
                }
            }
            else
            {
                sorted[valid++] = ((ulong)e << 32) | (uint)i;
            }
        }

        // Sorting (entry, index) pairs finds duplicates in O(n log n) with memory bounded by the BAT itself,
        // whatever cluster size a hostile header claims.
        Array.Sort(sorted, 0, valid);
        long runFirst = valid > 0 ? (uint)sorted[0] : -1;
        for (int k = 1; k < valid; k++)
        {
            if (sorted[k] >> 32 == sorted[k - 1] >> 32)
            {
                if (!onProblem(new BatProblem(BatProblemKind.Duplicate, (uint)sorted[k], (long)(sorted[k] >> 32) * UnitBytes, runFirst)))
                {
                    return;
                }
            }
            else
            {
                runFirst = (uint)sorted[k];
            }
        }
    }
}
