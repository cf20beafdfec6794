using System.Buffers;
using System.Buffers.Binary;
using System.Collections.Immutable;
using System.IO.Compression;
using PrlFuse.Core.IO;
using PrlFuse.Core.Images;

namespace PrlFuse.Core.Formats.Qcow2;

/// <summary>
/// A qcow2 image (versions 2 and 3): the L1 table is read at open and checked against the file, L2 tables
/// are read when first needed and kept in a small bounded cache. Standard clusters map to a host offset (in the image,
/// or in its external data file); zero clusters answer <see cref="ImageLayer.ZeroHostOffset"/>; compressed clusters
/// (zlib or zstd) <see cref="ImageLayer.OwnReadHostOffset"/>, decompressed by <see cref="ReadOwn"/>. With extended L2
/// entries each of a cluster's 32 subclusters is allocated, zero or unallocated on its own. The writable top of a chain
/// is written through <see cref="Qcow2ImageWriter"/>, which keeps the L2 tables it changes here (pinned), where reads
/// find them before the cache.
/// </summary>
public sealed class Qcow2Image : ImageLayer
{
    /// <summary>Bytes of L2 tables kept in memory per image.</summary>
    private const long L2CacheBytes = 16L << 20;

    /// <summary>Bytes of decompressed clusters kept per image, so small reads of one compressed cluster decompress it once.</summary>
    private const long DecompressedCacheBytes = 8L << 20;

    /// <summary>Compressed clusters one <see cref="TryMap"/> answer covers at most (a large read's worth of small clusters).</summary>
    private const int MaxCompressedRun = 32;

    /// <summary>What an L1 entry holds for an L2 table that must not be read (misaligned, outside the file, reserved bits set).</summary>
    private const long DamagedL2 = -1;

    private readonly long[] _l1;
    private readonly int _clusterBits;
    private readonly long _clusterBytes;
    private readonly int _l2Bits;
    private readonly int _entryWords;
    private readonly long _size;
    private readonly bool _extended;
    private readonly bool _external;
    private readonly L2Table?[] _l2Cache;
    private readonly CompressedClusterCache _decompressed;
    private string? _inconsistency;

    private Qcow2Image(ImageFile file, ImageFile dataFile, Qcow2Header header, long[] l1, Qcow2Snapshot? snapshot = null)
        : base(file, dataFile, ownsFiles: snapshot is null)
    {
        Snapshot = snapshot;
        Header = header;
        _l1 = l1;
        _clusterBits = header.ClusterBits;
        _clusterBytes = header.ClusterBytes;
        _extended = header.HasExtendedL2;
        _external = header.HasDataFile;
        _entryWords = _extended ? 2 : 1;
        _l2Bits = System.Numerics.BitOperations.Log2((ulong)header.L2Entries);
        _size = snapshot?.DiskSize ?? header.Size;
        int slots = (int)Math.Clamp(L2CacheBytes / _clusterBytes, 16, 4096);
        _l2Cache = new L2Table?[(int)System.Numerics.BitOperations.RoundUpToPowerOf2((uint)slots)];
        _decompressed = new CompressedClusterCache((int)Math.Clamp(DecompressedCacheBytes / _clusterBytes, 2, 64));
        DamagedL2Tables = l1.Count(e => e == DamagedL2);
    }

    public Qcow2Header Header { get; private set; }

    /// <summary>L2 tables the writer changed, by L1 index: never evicted, and read before the cache. Null until a writer opens.</summary>
    private ulong[]?[]? _pinned;

    /// <summary>The internal snapshot this layer shows (sharing the image's files), or null for the image's active state.</summary>
    public Qcow2Snapshot? Snapshot { get; }

    /// <summary>The image's internal snapshots, from its snapshot table (read at open).</summary>
    public ImmutableArray<Qcow2Snapshot> Snapshots { get; private init; } = [];

    /// <summary>L1 entries that point where no L2 table can be: the guest ranges they cover read as I/O errors.</summary>
    public int DamagedL2Tables { get; }

    public override ImageKind Kind => ImageKind.Qcow2;

    public override long VirtualSize => _size;

    public override long ClusterBytes => _clusterBytes;

    /// <summary>Read-only when opened so, or when <see cref="WriteBlockedReason"/> says it must not be written.</summary>
    public override bool IsImmutable => !File.Writable || WriteBlockedReason is not null;

    /// <summary>
    /// Keeps the image from being written: a check before the first write found metadata a write could make worse
    /// (clusters used twice, refcounts lower than their references, tables that overlap).
    /// </summary>
    public void BlockWrites(string inconsistency) => _inconsistency = inconsistency;

    /// <summary>Why this image is served read-only though opened for writing, in words, or null when it can be written.</summary>
    public string? WriteBlockedReason =>
        _inconsistency is not null ? $"its metadata is inconsistent ({_inconsistency}); run 'prlfuse check --repair' first"
        : Header.IsCorrupt ? "the corrupt bit is set ('prlfuse check --repair' or 'qemu-img check -r all' first)"
        : Header.IsDirty ? "the dirty bit is set: its refcounts may be wrong ('prlfuse check --repair' first)"
        : Header.HasDataFile && !DataFile.Writable ? "its external data file is open read-only"
        : DamagedL2Tables > 0 ? $"{DamagedL2Tables} damaged L1 entries ('prlfuse check' shows them)"
        : null;

    public override bool MayHoldZeros => true;

    public override string? DamageText => DamagedL2Tables > 0 ? $"{DamagedL2Tables} damaged L1 entries" : null;

    /// <summary>
    /// Reads and judges the header and the L1 table of <paramref name="file"/>. An image with an external data file gets
    /// it from <paramref name="openDataFile"/> (given the name the header extension stores), and owns it from then on.
    /// Throws <see cref="ImageFormatException"/> with a one-line message for what cannot be read.
    /// </summary>
    public static Qcow2Image Open(ImageFile file, Func<string, ImageFile>? openDataFile = null)
    {
        string name = file.Path;
        long fileLength = file.Length;
        byte[] head = new byte[(int)Math.Min(fileLength, 1L << Qcow2Header.MaxClusterBits)];
        file.ReadZeroFilled(head, 0);
        if (!Qcow2Header.TryRead(head, out var header, out string error))
        {
            throw new ImageFormatException(name, error);
        }

        if (header.CheckAgainstFile(fileLength) is { } outside)
        {
            throw new ImageFormatException(name, outside);
        }

        long[] l1 = ReadL1(file, header, header.L1TableOffset, header.RequiredL1Entries, fileLength);
        var snapshots = Qcow2SnapshotTable.Read(file, header);
        ImageFile dataFile = file;
        if (header.HasDataFile)
        {
            if (header.DataFile is null || openDataFile is null)
            {
                throw new ImageFormatException(name, "image keeps its data in an external data file but does not name it");
            }

            dataFile = openDataFile(header.DataFile);
        }

        var image = new Qcow2Image(file, dataFile, header, l1) { Snapshots = snapshots };
        if (header.IsCorrupt)
        {
            image.AddWarning(WarningCodes.Qcow2Corrupt, "the corrupt bit is set: its metadata may be inconsistent ('qemu-img check -r all' repairs it)");
        }

        if (header.IsDirty)
        {
            image.AddWarning(WarningCodes.NotClosedCleanly, "the dirty bit is set (lazy refcounts were not written back): its refcounts may be wrong; reading is safe");
        }

        if (image.DamagedL2Tables > 0)
        {
            image.AddWarning(WarningCodes.DamagedClusters, $"{image.DamagedL2Tables} L1 entries point where no L2 table can be: the guest ranges they cover read as I/O errors");
        }

        return image;
    }

    /// <summary>
    /// A read-only layer showing internal snapshot <paramref name="snapshot"/> of this image: its L1 table and guest
    /// size, over this image's files (owned by this image: dispose the snapshot layer first or with it).
    /// </summary>
    public Qcow2Image OpenSnapshot(Qcow2Snapshot snapshot)
    {
        long count = Qcow2Header.RequiredL1(snapshot.DiskSize, _clusterBits, Header.L2EntryBytes);
        long[] l1 = snapshot.L1TableOffset == 0 ? new long[count] : ReadL1(File, Header, snapshot.L1TableOffset, count, File.Length);
        var layer = new Qcow2Image(File, DataFile, Header, l1, snapshot);
        if (layer.DamagedL2Tables > 0)
        {
            layer.AddWarning(WarningCodes.DamagedClusters, $"internal snapshot {snapshot.Id}: {layer.DamagedL2Tables} L1 entries point where no L2 table can be: the guest ranges they cover read as I/O errors");
        }

        return layer;
    }

    /// <summary>The L1 entries a guest size needs, as L2 table offsets (0: unallocated, <see cref="DamagedL2"/>).</summary>
    private static long[] ReadL1(ImageFile file, Qcow2Header header, long tableOffset, long entries, long fileLength)
    {
        int count = (int)entries;
        long[] l1 = new long[count];
        if (count == 0)
        {
            return l1;
        }

        byte[] raw = ArrayPool<byte>.Shared.Rent(count * FieldLocations.L1EntrySize);
        try
        {
            file.ReadZeroFilled(raw.AsSpan(0, count * FieldLocations.L1EntrySize), tableOffset);
            for (int i = 0; i < count; i++)
            {
                ulong entry = BinaryPrimitives.ReadUInt64BigEndian(raw.AsSpan(i * FieldLocations.L1EntrySize));
                long offset = (long)(entry & FieldLocations.OffsetMask);
                bool damaged = offset != 0 && (offset % header.ClusterBytes != 0 || offset > fileLength - header.ClusterBytes);
                l1[i] = damaged ? DamagedL2 : offset;
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(raw);
        }

        return l1;
    }

    public override bool TryMap(long offset, out long hostOffset, out long run)
    {
        if ((ulong)offset >= (ulong)_size)
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
        ulong entry = table[index * _entryWords];
        if ((entry & FieldLocations.CompressedFlag) != 0)
        {
            // The compressed clusters that follow in this table answer in the same run, so that a large read hands
            // them to ReadOwn together and they are decompressed side by side.
            int last = index + 1;
            int end = Math.Min(1 << _l2Bits, index + MaxCompressedRun);
            while (last < end && (table[last * _entryWords] & FieldLocations.CompressedFlag) != 0)
            {
                last++;
            }

            run = Math.Min(((long)(last - index) << _clusterBits) - within, _size - offset);
            hostOffset = OwnReadHostOffset;
            return true;
        }

        long host = (long)(entry & FieldLocations.OffsetMask);
        bool hasCluster = HasCluster(entry);
        if (_extended)
        {
            return MapSubcluster(host, hasCluster, table[(index * 2) + 1], within, out hostOffset, out run);
        }

        run = _clusterBytes - within;
        if ((entry & FieldLocations.ZeroFlag) != 0)
        {
            hostOffset = ZeroHostOffset;
            return true;
        }

        if (!hasCluster)
        {
            hostOffset = 0;
            return false;
        }

        hostOffset = (host & (_clusterBytes - 1)) != 0 ? DamagedHostOffset : host + within;
        return true;
    }

    /// <summary>
    /// A standard L2 entry names a host cluster: a non-zero offset, or (with an external data file, where the host
    /// offset is the guest offset) offset 0 with the COPIED flag, which is how guest cluster 0 is stored there.
    /// </summary>
    internal bool HasCluster(ulong entry) =>
        (entry & FieldLocations.OffsetMask) != 0 || (_external && (entry & FieldLocations.CopiedFlag) != 0);

    /// <summary>One subcluster's answer, and how far the same answer goes within the cluster.</summary>
    private bool MapSubcluster(long host, bool hasCluster, ulong bitmap, long within, out long hostOffset, out long run)
    {
        int subclusterBits = _clusterBits - 5;
        int sub = (int)(within >> subclusterBits);
        uint allocated = (uint)bitmap;
        uint zero = (uint)(bitmap >> 32);
        uint bit = 1u << sub;
        uint same;
        bool hit;
        bool noCluster = !hasCluster || (host & (_clusterBytes - 1)) != 0;
        if ((allocated & zero & bit) != 0 || ((allocated & bit) != 0 && noCluster))
        {
            // Allocated and zero at once, or allocated without a cluster: QEMU refuses to read it too. Without a
            // cluster every allocated subcluster is damaged; with one, those also marked zero.
            hostOffset = DamagedHostOffset;
            same = noCluster ? allocated : allocated & zero;
            hit = true;
        }
        else if ((allocated & bit) != 0)
        {
            hostOffset = host + within;
            same = allocated & ~zero;
            hit = true;
        }
        else if ((zero & bit) != 0)
        {
            hostOffset = ZeroHostOffset;
            same = zero & ~allocated;
            hit = true;
        }
        else
        {
            hostOffset = 0;
            same = ~(allocated | zero);
            hit = false;
        }

        // Subclusters from this one on that give the same answer, counted up to the first that does not.
        uint ahead = same >> sub;
        int count = ahead == uint.MaxValue ? 32 - sub : System.Numerics.BitOperations.TrailingZeroCount(~ahead);
        run = ((long)(sub + count) << subclusterBits) - within;
        return hit;
    }

    /// <summary>
    /// Decompresses the clusters that guest bytes [offset, + destination length) lie in (through a small cache) and
    /// copies from them. A range of several clusters (a run of compressed clusters, see <see cref="TryMap"/>) is
    /// decompressed on as many threads as there are CPUs: inflating is what a sequential read of a compressed image
    /// waits for, and one request would otherwise keep one CPU busy.
    /// </summary>
    public override unsafe void ReadOwn(Span<byte> destination, long offset)
    {
        long first = offset >> _clusterBits;
        long last = (offset + destination.Length - 1) >> _clusterBits;
        if (last == first || Environment.ProcessorCount == 1)
        {
            for (long cluster = first; cluster <= last; cluster++)
            {
                long from = Math.Max(offset, cluster << _clusterBits);
                long to = Math.Min(offset + destination.Length, (cluster + 1) << _clusterBits);
                ReadOwnCluster(destination.Slice((int)(from - offset), (int)(to - from)), from);
            }

            return;
        }

        fixed (byte* start = destination)
        {
            nint address = (nint)start;
            int length = destination.Length;
            try
            {
                Parallel.For(first, last + 1, new ParallelOptions { MaxDegreeOfParallelism = Environment.ProcessorCount }, cluster =>
                {
                    long from = Math.Max(offset, cluster << _clusterBits);
                    long to = Math.Min(offset + length, (cluster + 1) << _clusterBits);
                    ReadOwnCluster(new Span<byte>((byte*)address + (from - offset), (int)(to - from)), from);
                });
            }
            catch (AggregateException e) when (e.InnerExceptions.Count > 0)
            {
                // The caller expects what a one-thread read throws (a damaged cluster is an IOException).
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(e.InnerExceptions[0]);
            }
        }
    }

    /// <summary>Bytes [offset, + destination length) of the one compressed cluster they lie in.</summary>
    private void ReadOwnCluster(Span<byte> destination, long offset)
    {
        long cluster = offset >> _clusterBits;
        int within = (int)(offset & (_clusterBytes - 1));
        if (!_decompressed.TryCopy(cluster, within, destination))
        {
            byte[] data = Decompress(cluster);
            data.AsSpan(within, destination.Length).CopyTo(destination);
            _decompressed.Add(cluster, data);
        }
    }

    private byte[] Decompress(long cluster)
    {
        long offset = cluster << _clusterBits;
        long l1Index = offset >> (_clusterBits + _l2Bits);
        var table = L2(l1Index, _l1[l1Index]);
        int index = (int)(cluster & ((1L << _l2Bits) - 1));
        ulong entry = table[index * _entryWords];

        // Bits 0 to x-1: the host offset of the compressed data, in bytes; bits x to 61: its extra 512-byte sectors.
        int x = 62 - (_clusterBits - 8);
        long host = (long)(entry & ((1UL << x) - 1));
        long sectors = (long)((entry >> x) & ((1UL << (62 - x)) - 1)) + 1;
        long length = (sectors * 512) - (host & 511);
        length = Math.Min(length, Math.Max(0, File.Length - host));
        byte[] input = ArrayPool<byte>.Shared.Rent((int)Math.Max(1, length));
        byte[] output = GC.AllocateUninitializedArray<byte>((int)_clusterBytes);
        try
        {
            File.ReadZeroFilled(input.AsSpan(0, (int)length), host);
            using var compressed = new MemoryStream(input, 0, (int)length, writable: false);
            int done;
            try
            {
                using Stream inflater = Header.CompressionType == Qcow2CompressionType.Zstd
                    ? new ZstdSharp.DecompressionStream(compressed)
                    : new DeflateStream(compressed, CompressionMode.Decompress);
                done = inflater.ReadAtLeast(output, output.Length, throwOnEndOfStream: false);
            }
            catch (Exception e) when (e is InvalidDataException or ZstdSharp.ZstdException or IOException)
            {
                throw new DamagedClusterException(Path, cluster, $"its compressed data at offset {host} cannot be decompressed ({e.Message})", QemuCheckAdvice);
            }

            if (done < output.Length)
            {
                throw new DamagedClusterException(Path, cluster, $"its compressed data at offset {host} holds {done} bytes, not a whole cluster", QemuCheckAdvice);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(input);
        }

        return output;
    }

    private const string QemuCheckAdvice = "run 'qemu-img check' on the image";

    public override DamagedClusterException DamagedRead(long offset)
    {
        long l1Index = offset >> (_clusterBits + _l2Bits);
        string problem = _l1[l1Index] == DamagedL2
            ? "its L1 entry points where no L2 table can be"
            : "its L2 entry is invalid (misaligned, or a subcluster both allocated and zero)";
        return new DamagedClusterException(Path, offset >> _clusterBits, problem, QemuCheckAdvice);
    }

    public override long FindNext(long offset, bool allocated)
    {
        // TryMap's runs cover a whole missing L2 table in one step, and the walk stops at the first answer sought.
        while (true)
        {
            if (offset >= _size)
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
        for (long cluster = 0; cluster << _clusterBits < _size;)
        {
            long offset = cluster << _clusterBits;
            long next = FindNext(offset, allocated: true);
            if (next >= _size)
            {
                break;
            }

            count++;
            cluster = (next >> _clusterBits) + 1;
        }

        return count;
    }

    protected override LayerWriter CreateWriter(IParentContent parent)
    {
        _pinned = new ulong[]?[_l1.Length];
        return new Qcow2ImageWriter(this, parent);
    }

    /// <summary>The L2 offsets of the active L1 table, as reads use them (the writer changes them in place).</summary>
    internal long[] L1Offsets => _l1;

    internal void ReplaceHeader(Qcow2Header header) => Header = header;

    /// <summary>
    /// The L2 table of L1 entry <paramref name="l1Index"/> as the writer changes it: pinned (read from the file at
    /// <paramref name="l2Offset"/> the first time, or <paramref name="fresh"/> when given), so reads see every change.
    /// </summary>
    internal ulong[] PinL2(long l1Index, long l2Offset, ulong[]? fresh = null)
    {
        var pinned = _pinned!;
        if (fresh is not null)
        {
            Volatile.Write(ref pinned[l1Index], fresh);
            return fresh;
        }

        return pinned[l1Index] ?? (pinned[l1Index] = ReadL2(l2Offset));
    }

    /// <summary>The current L2 table of L1 entry <paramref name="l1Index"/> (pinned, cached or read now), or null when it has none.</summary>
    internal ulong[]? ActiveL2(long l1Index)
    {
        long offset = Volatile.Read(ref _l1[l1Index]);
        return offset > 0 ? L2(l1Index, offset) : null;
    }

    /// <summary>The whole content of compressed guest cluster <paramref name="cluster"/>, for a write that turns it into a standard one.</summary>
    internal byte[] DecompressedCluster(long cluster) => Decompress(cluster);

    /// <summary>The L2 table of L1 entry <paramref name="l1Index"/>: pinned by the writer, else from the cache or read now (and cached).</summary>
    private ulong[] L2(long l1Index, long l2Offset)
    {
        if (_pinned is { } pinned && Volatile.Read(ref pinned[l1Index]) is { } changed)
        {
            return changed;
        }

        ref var slot = ref _l2Cache[(int)(l1Index & (_l2Cache.Length - 1))];
        var cached = Volatile.Read(ref slot);
        if (cached is not null && cached.L1Index == l1Index)
        {
            return cached.Entries;
        }

        var table = new L2Table(l1Index, ReadL2(l2Offset));
        Volatile.Write(ref slot, table);
        return table.Entries;
    }

    private ulong[] ReadL2(long l2Offset)
    {
        ulong[] entries = new ulong[_clusterBytes / 8];
        var bytes = System.Runtime.InteropServices.MemoryMarshal.AsBytes(entries.AsSpan());
        File.ReadZeroFilled(bytes, l2Offset);
        if (BitConverter.IsLittleEndian)
        {
            BinaryPrimitives.ReverseEndianness(entries, entries);
        }

        return entries;
    }

    /// <summary>One cached L2 table, immutable once made: readers on other threads see it whole or not at all.</summary>
    private sealed class L2Table(long l1Index, ulong[] entries)
    {
        public long L1Index { get; } = l1Index;

        public ulong[] Entries { get; } = entries;
    }

    /// <summary>The last few decompressed clusters, by guest cluster, replaced in turn.</summary>
    private sealed class CompressedClusterCache(int capacity)
    {
        private readonly Lock _lock = new();
        private readonly long[] _clusters = Enumerable.Repeat(-1L, capacity).ToArray();
        private readonly byte[]?[] _data = new byte[]?[capacity];
        private int _next;

        public bool TryCopy(long cluster, int within, Span<byte> destination)
        {
            lock (_lock)
            {
                int i = Array.IndexOf(_clusters, cluster);
                if (i < 0)
                {
                    return false;
                }

                _data[i].AsSpan(within, destination.Length).CopyTo(destination);
                return true;
            }
        }

        public void Add(long cluster, byte[] data)
        {
            lock (_lock)
            {
                _clusters[_next] = cluster;
                _data[_next] = data;
                _next = (_next + 1) % _clusters.Length;
            }
        }
    }
}
