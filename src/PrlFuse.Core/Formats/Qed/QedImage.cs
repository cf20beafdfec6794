using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using PrlFuse.Core.IO;
using PrlFuse.Core.Images;

namespace PrlFuse.Core.Formats.Qed;

/// <summary>
/// A QED image: the L1 entries the guest size needs are read at open and judged against the file, L2 tables are read
/// when first needed and kept in a small bounded cache. A data entry of 1 is a zero cluster
/// (<see cref="ImageLayer.ZeroHostOffset"/>); an entry that is misaligned, inside the header or past the end of the file
/// is damaged (reads of it fail, as in QEMU), and so is one on the L1 table or an L2 table (a write would overwrite the table). An image left with the need-check bit set is checked at open: opened for
/// writing, its invalid entries are cleared first as QEMU does (<see cref="QedChecker.FixOnOpen"/>); read-only, it gets
/// a warning. Writes go through <see cref="QedImageWriter"/>, which keeps the tables it changes here
/// (<see cref="PinTable"/>) so that reads see them before they reach the file.
/// </summary>
public sealed class QedImage : ImageLayer
{
    /// <summary>Bytes of L2 tables kept in memory per image (at least two tables whatever their size).</summary>
    private const long L2CacheBytes = 16L << 20;

    /// <summary>What an L1 entry holds for an L2 table that must not be read (misaligned, inside the header, past the end).</summary>
    private const long DamagedL2 = -1;

    private readonly long[] _l1;
    private readonly int _clusterBits;
    private readonly long _clusterBytes;
    private readonly int _l2Bits;
    private readonly long _headerBytes;
    private readonly L2Table?[] _l2Cache;

    /// <summary>
    /// The clusters of the L1 table and of the L2 tables it pointed at on open: a data entry on one of them is damaged,
    /// for a write through it would overwrite the tables (QEMU's check counts such a cluster as referenced twice).
    /// </summary>
    private readonly HashSet<long> _tableClusters;

    /// <summary>
    /// Data clusters found damaged before the first write, whatever the file's length later: those more than one L2
    /// entry points at (a write to one would change both), and those past the end of the file (the file grows as
    /// the writer allocates, and such an entry must not come to point at a cluster allocated for another). The writer
    /// allocates none of them (<see cref="IsDamagedDataCluster"/>).
    /// </summary>
    private HashSet<long>? _damagedDataClusters;

    /// <summary>Tables the writer changed, by L1 index: what reads see first, whatever the cache or the file hold.</summary>
    private readonly ConcurrentDictionary<long, ulong[]> _pinned = new();
    private long _fileLength;

    private QedImage(ImageFile file, QedHeader header, long[] l1)
        : base(file)
    {
        Header = header;
        _l1 = l1;
        _clusterBits = header.ClusterBits;
        _clusterBytes = header.ClusterBytes;
        _l2Bits = System.Numerics.BitOperations.Log2((ulong)header.TableEntries);
        _headerBytes = header.HeaderBytes;
        _fileLength = file.Length;
        int slots = (int)Math.Clamp(L2CacheBytes / header.TableBytes, 2, 1024);
        _l2Cache = new L2Table?[(int)System.Numerics.BitOperations.RoundUpToPowerOf2((uint)slots)];
        DamagedL2Tables = l1.Count(e => e == DamagedL2);
        _tableClusters = [];
        AddTableClusters(header.L1TableOffset);
        foreach (long l2 in l1)
        {
            if (l2 > 0)
            {
                AddTableClusters(l2);
            }
        }
    }

    private void AddTableClusters(long offset)
    {
        for (long c = offset; c < offset + Header.TableBytes; c += _clusterBytes)
        {
            _tableClusters.Add(c);
        }
    }

    public QedHeader Header { get; private set; }

    /// <summary>L1 entries that point where no L2 table can be: the guest ranges they cover read as I/O errors.</summary>
    public int DamagedL2Tables { get; }

    /// <summary>Invalid entries the open-time check cleared (need-check was set and the image was opened for writing).</summary>
    public int FixedOnOpen { get; private set; }

    public override ImageKind Kind => ImageKind.Qed;

    public override long VirtualSize => Header.ImageSize;

    public override long ClusterBytes => _clusterBytes;

    public override bool MayHoldZeros => true;

    public override string? DamageText => DamagedL2Tables > 0 ? $"{DamagedL2Tables} damaged L1 entries" : null;

    /// <summary>Bytes of the file as the layer knows it: grown by the writer as it allocates.</summary>
    internal long FileLength => Volatile.Read(ref _fileLength);

    internal int ClusterBits => _clusterBits;

    internal int L2Bits => _l2Bits;

    /// <summary>
    /// Reads and judges the header and the L1 table of <paramref name="file"/>. Throws <see cref="ImageFormatException"/>
    /// with a one-line message for what cannot be read.
    /// </summary>
    public static QedImage Open(ImageFile file)
    {
        var header = ReadHeader(file);
        int fixedEntries = 0;
        bool needCheck = header.NeedsCheck;
        if (needCheck && file.Writable)
        {
            // As QEMU: a read-write open of an image whose last writer did not finish checks it and clears what points
            // nowhere, so no new cluster can ever be mapped through a stale entry.
            fixedEntries = QedChecker.FixOnOpen(file, header);
            header = ReadHeader(file);
            needCheck = false;
        }

        long[] l1 = ReadL1(file, header, file.Length);
        var image = new QedImage(file, header, l1) { FixedOnOpen = fixedEntries };
        if (needCheck)
        {
            image.AddWarning(WarningCodes.NotClosedCleanly, "the need-check bit is set (its last writer did not finish): its tables may point at clusters never written; 'prlfuse check --repair' checks and clears it");
        }

        if (image.DamagedL2Tables > 0)
        {
            image.AddWarning(WarningCodes.DamagedClusters, $"{image.DamagedL2Tables} L1 entries point where no L2 table can be: the guest ranges they cover read as I/O errors");
        }

        return image;
    }

    /// <summary>The header of <paramref name="file"/>, judged; throws <see cref="ImageFormatException"/>.</summary>
    internal static QedHeader ReadHeader(ImageFile file)
    {
        long fileLength = file.Length;
        byte[] head = new byte[(int)Math.Min(fileLength, QedHeader.MaxHeadBytes)];
        file.ReadZeroFilled(head, 0);
        if (!QedHeader.TryRead(head, out var header, out string error))
        {
            throw new ImageFormatException(file.Path, error);
        }

        if (header.CheckAgainstFile(fileLength) is { } outside)
        {
            throw new ImageFormatException(file.Path, outside);
        }

        return header;
    }

    /// <summary>True when a table of the image's size can start at <paramref name="offset"/> in a file of <paramref name="fileLength"/> bytes.</summary>
    internal static bool IsTableOffsetValid(QedHeader header, long offset, long fileLength) =>
        offset % header.ClusterBytes == 0 && offset >= header.HeaderBytes && offset <= fileLength - header.TableBytes;

    /// <summary>True when a data cluster can start at <paramref name="offset"/> (QEMU's rule: aligned, past the header, before the end).</summary>
    internal static bool IsClusterOffsetValid(QedHeader header, long offset, long fileLength) =>
        offset % header.ClusterBytes == 0 && offset >= header.HeaderBytes && offset < fileLength;

    /// <summary>The L1 entries the guest size needs, as L2 table offsets (0: unallocated, <see cref="DamagedL2"/>).</summary>
    private static long[] ReadL1(ImageFile file, QedHeader header, long fileLength)
    {
        long[] l1 = new long[header.RequiredL1Entries];
        byte[] raw = new byte[l1.Length * FieldLocations.EntrySize];
        file.ReadZeroFilled(raw, header.L1TableOffset);
        for (int i = 0; i < l1.Length; i++)
        {
            ulong entry = BinaryPrimitives.ReadUInt64LittleEndian(raw.AsSpan(i * FieldLocations.EntrySize));
            bool valid = entry == 0 || (entry <= long.MaxValue && IsTableOffsetValid(header, (long)entry, fileLength));
            l1[i] = valid ? (long)entry : DamagedL2;
        }

        return l1;
    }

    public override bool TryMap(long offset, out long hostOffset, out long run)
    {
        if ((ulong)offset >= (ulong)Header.ImageSize)
        {
            hostOffset = 0;
            run = long.MaxValue - offset;
            return false;
        }

        int spanBits = _clusterBits + _l2Bits;
        long l1Index = offset >> spanBits;
        long l2Offset = Volatile.Read(ref _l1[l1Index]);
        if (l2Offset <= 0)
        {
            // No L2 table: the whole range it would cover is unallocated (or damaged) in one run.
            run = (1L << spanBits) - (offset & ((1L << spanBits) - 1));
            hostOffset = l2Offset == 0 ? 0 : DamagedHostOffset;
            return l2Offset != 0;
        }

        var table = L2(l1Index, l2Offset);
        int index = (int)((offset >> _clusterBits) & ((1L << _l2Bits) - 1));
        long within = offset & (_clusterBytes - 1);
        ulong entry = Volatile.Read(ref table[index]);
        run = _clusterBytes - within;
        switch (entry)
        {
            case FieldLocations.Unallocated:
                hostOffset = 0;
                return false;
            case FieldLocations.ZeroCluster:
                hostOffset = ZeroHostOffset;
                return true;
            default:
                hostOffset = entry <= long.MaxValue && IsClusterOffsetValid(Header, (long)entry, FileLength) && !_tableClusters.Contains((long)entry) && Volatile.Read(ref _damagedDataClusters)?.Contains((long)entry) != true
                    ? (long)entry + within
                    : DamagedHostOffset;
                return true;
        }
    }

    public override DamagedClusterException DamagedRead(long offset)
    {
        long l1Index = offset >> (_clusterBits + _l2Bits);
        string problem = _l1[l1Index] == DamagedL2
            ? "its L1 entry points where no L2 table can be"
            : "its L2 entry is invalid (misaligned, inside the header or the image's tables, or past the end of the file)";
        return new DamagedClusterException(Path, offset >> _clusterBits, problem, "run 'prlfuse check --repair' on the image");
    }

    public override long FindNext(long offset, bool allocated)
    {
        // TryMap's runs cover a whole missing L2 table in one step, and the walk stops at the first answer sought.
        while (true)
        {
            if (offset >= Header.ImageSize)
            {
                return allocated ? long.MaxValue : offset;
            }

            bool data = TryMap(offset, out long host, out long run) && host != ZeroHostOffset;
            if (data == allocated)
            {
                return offset;
            }

            offset += run;
        }
    }

    public override long CountAllocatedClusters()
    {
        long count = 0;
        for (long cluster = 0; cluster << _clusterBits < Header.ImageSize;)
        {
            long next = FindNext(cluster << _clusterBits, allocated: true);
            if (next >= Header.ImageSize)
            {
                break;
            }

            count++;
            cluster = (next >> _clusterBits) + 1;
        }

        return count;
    }

    /// <summary>
    /// Walks every L2 table once and marks as damaged the data clusters two entries share (QEMU's check counts them as
    /// corruption, and a write through one entry would show through the other) and those past the end of the file
    /// (writer only, before its first write). Reads are bounded by the file's size (each table is read once).
    /// </summary>
    internal void FindDamagedDataClusters()
    {
        if (_damagedDataClusters is not null)
        {
            return;
        }

        long fileLength = FileLength;
        var data = new List<long>();
        var damaged = new HashSet<long>();
        var tables = new HashSet<long>();
        for (long i = 0; i < _l1.Length; i++)
        {
            long l2 = _l1[i];
            if (l2 <= 0 || !tables.Add(l2))
            {
                continue;
            }

            foreach (ulong entry in _pinned.TryGetValue(i, out var pinned) ? pinned : ReadL2(l2))
            {
                if (entry > FieldLocations.ZeroCluster && entry <= long.MaxValue)
                {
                    data.Add((long)entry);
                    if ((long)entry >= fileLength && (long)entry % _clusterBytes == 0)
                    {
                        damaged.Add((long)entry);
                    }
                }
            }
        }

        data.Sort();
        for (int i = 1; i < data.Count; i++)
        {
            if (data[i] == data[i - 1])
            {
                damaged.Add(data[i]);
            }
        }

        Volatile.Write(ref _damagedDataClusters, damaged);
    }

    /// <summary>True when <paramref name="cluster"/> was found damaged (<see cref="FindDamagedDataClusters"/>): the writer must not allocate it.</summary>
    internal bool IsDamagedDataCluster(long cluster) => Volatile.Read(ref _damagedDataClusters)?.Contains(cluster) == true;

    protected override LayerWriter CreateWriter(IParentContent parent) => new QedImageWriter(this, parent);

    /// <summary>The L1 entry <paramref name="l1Index"/> as reads see it (an L2 table offset, 0, or negative when damaged).</summary>
    internal long L1Entry(long l1Index) => Volatile.Read(ref _l1[l1Index]);

    /// <summary>Points L1 entry <paramref name="l1Index"/> at the table <paramref name="table"/> holds from now on (writer only).</summary>
    internal void PublishL2(long l1Index, long l2Offset, ulong[] table)
    {
        _pinned[l1Index] = table;
        Volatile.Write(ref _l1[l1Index], l2Offset);
    }

    /// <summary>
    /// The L2 table of L1 entry <paramref name="l1Index"/>, kept for the writer's changes: every later read of the entry
    /// sees this very array (writer only, under its lock).
    /// </summary>
    internal ulong[] PinTable(long l1Index)
    {
        if (_pinned.TryGetValue(l1Index, out var table))
        {
            return table;
        }

        table = ReadL2(_l1[l1Index]);
        _pinned[l1Index] = table;
        return table;
    }

    internal void GrowFileLength(long length)
    {
        if (length > Volatile.Read(ref _fileLength))
        {
            Volatile.Write(ref _fileLength, length);
        }
    }

    internal void ReplaceHeader(QedHeader header) => Header = header;

    /// <summary>The L2 table of L1 entry <paramref name="l1Index"/>: the writer's, from the cache, or read now (and cached).</summary>
    private ulong[] L2(long l1Index, long l2Offset)
    {
        if (!_pinned.IsEmpty && _pinned.TryGetValue(l1Index, out var pinned))
        {
            return pinned;
        }

        ref var slot = ref _l2Cache[(int)(l1Index & (_l2Cache.Length - 1))];
        var cached = Volatile.Read(ref slot);
        if (cached is not null && cached.L1Index == l1Index && cached.Offset == l2Offset)
        {
            return cached.Entries;
        }

        var table = new L2Table(l1Index, l2Offset, ReadL2(l2Offset));
        Volatile.Write(ref slot, table);
        return table.Entries;
    }

    private ulong[] ReadL2(long l2Offset)
    {
        ulong[] entries = new ulong[Header.TableEntries];
        File.ReadZeroFilled(MemoryMarshal.AsBytes(entries.AsSpan()), l2Offset);
        if (!BitConverter.IsLittleEndian)
        {
            BinaryPrimitives.ReverseEndianness(entries, entries);
        }

        return entries;
    }

    /// <summary>One cached L2 table: where it was read from, and its entries.</summary>
    private sealed class L2Table(long l1Index, long offset, ulong[] entries)
    {
        public long L1Index { get; } = l1Index;

        public long Offset { get; } = offset;

        public ulong[] Entries { get; } = entries;
    }
}
