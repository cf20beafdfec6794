using System.Buffers.Binary;
using System.Security.Cryptography;
using PrlFuse.Core.Formats.Parallels;

namespace PrlFuse.Tests.Support;

/// <summary>
/// Writes a Parallels expandable image (shared/specs/parallels.rst) byte by byte, independently of the Core's own
/// header and BAT code, so tests check the Core against the specification rather than against itself.
/// <para>
/// Choose the magic, the cluster size in sectors (any value: 63, 512, 2048...), the disk size, which guest
/// clusters are allocated and with what content, and optionally a format extension cluster. <see cref="Build"/>
/// writes the file and returns a <see cref="BuiltImage"/> that knows the expected guest content and can corrupt
/// the file afterwards (BAT entries, header fields, truncation).
/// </para>
/// Layout written: header, BAT, zero padding up to data_off, then the allocated guest clusters (in a shuffled
/// host order unless <see cref="ShuffleHostOrder"/> is false), then the bitmap clusters, then the extension cluster.
/// </summary>
public sealed class ParallelsImageBuilder
{
    public const uint InUseOpen = 0x746F6E59; // "Ynot"
    public const uint InUseClosed = 0x312E3276; // "v2.1"

    private readonly SortedDictionary<long, Func<long, byte>?> _allocated = [];

    public ParallelsImageBuilder(long diskSectors, uint clusterSectors = 2048, ParallelsMagic magic = ParallelsMagic.WithoutFreeSpace)
    {
        DiskSectors = diskSectors;
        ClusterSectors = clusterSectors;
        Magic = magic;
    }

    public ParallelsMagic Magic { get; set; }

    /// <summary>The header's tracks field: cluster size in sectors.</summary>
    public uint ClusterSectors { get; set; }

    /// <summary>Disk size in sectors (nb_sectors).</summary>
    public long DiskSectors { get; set; }

    /// <summary>Written as nb_sectors when set, instead of <see cref="DiskSectors"/> (to set the high half for the old magic).</summary>
    public ulong? SectorCountField { get; set; }

    /// <summary>BAT size; default: enough clusters for the disk.</summary>
    public uint? BatEntries { get; set; }

    /// <summary>
    /// data_off as written in the header. Default: the spec minimum (header + BAT in sectors, rounded up to a
    /// cluster for the Ext magic). 0 for the old magic means "the minimum" and is written as 0.
    /// </summary>
    public uint? DataOffsetSectors { get; set; }

    public uint Version { get; set; } = 2;

    public uint Heads { get; set; } = 16;

    public uint Cylinders { get; set; } = 32;

    /// <summary>The in_use field: 0, "Ynot", "v2.1", or a creator tag such as <see cref="Tag"/>("pd17").</summary>
    public uint InUse { get; set; }

    public uint Flags { get; set; }

    /// <summary>Content of every allocated cluster without its own content function: a byte per guest offset.</summary>
    public Func<long, byte> Content { get; set; } = Pattern(1);

    /// <summary>Host clusters in a shuffled order (seeded), so a reader that ignores the BAT fails.</summary>
    public bool ShuffleHostOrder { get; set; } = true;

    public int Seed { get; set; } = 12345;

    /// <summary>Zero clusters left at the start of the data area before the first used cluster.</summary>
    public int LeadingFreeClusters { get; set; }

    /// <summary>When set, a format extension cluster is written and ext_off points at it.</summary>
    public FormatExtensionSpec? Extension { get; set; }

    public long ClusterBytes => (long)ClusterSectors * 512;

    public long ClusterCount => (DiskSectors + ClusterSectors - 1) / ClusterSectors;

    public IReadOnlyCollection<long> AllocatedClusters => _allocated.Keys;

    /// <summary>A four-character tag as the little-endian u32 the header stores (e.g. "pd17", "Ynot").</summary>
    public static uint Tag(string fourChars) => BinaryPrimitives.ReadUInt32LittleEndian(System.Text.Encoding.ASCII.GetBytes(fourChars));

    /// <summary>A deterministic, non-periodic byte pattern over guest offsets; different seeds give different bytes.</summary>
    public static Func<long, byte> Pattern(int seed) => offset =>
    {
        ulong x = ((ulong)offset >> 3) * 0x9E3779B97F4A7C15UL ^ ((ulong)seed * 0xD1B54A32D192ED03UL);
        x ^= x >> 29;
        x *= 0xBF58476D1CE4E5B9UL;
        x ^= x >> 32;
        return (byte)(x >> (int)((offset & 7) * 8));
    };

    /// <summary>Content where every byte of a cluster is one value (handy for reading a dump by eye).</summary>
    public static Func<long, byte> ConstantPerCluster(long clusterBytes, int salt = 0) =>
        offset => (byte)((offset / clusterBytes) + 1 + salt);

    public ParallelsImageBuilder Allocate(long guestCluster, Func<long, byte>? content = null)
    {
        _allocated[guestCluster] = content;
        return this;
    }

    public ParallelsImageBuilder Allocate(IEnumerable<long> guestClusters)
    {
        foreach (long c in guestClusters)
        {
            Allocate(c);
        }

        return this;
    }

    /// <summary>Allocates every <paramref name="step"/>-th cluster starting at <paramref name="first"/>.</summary>
    public ParallelsImageBuilder AllocateEvery(int step, int first = 0)
    {
        for (long c = first; c < ClusterCount; c += step)
        {
            Allocate(c);
        }

        return this;
    }

    public ParallelsImageBuilder AllocateAll() => AllocateEvery(1);

    public bool IsAllocated(long guestCluster) => _allocated.ContainsKey(guestCluster);

    /// <summary>The byte the image holds at a guest offset: its cluster's content, or 0 when unallocated.</summary>
    public byte ExpectedByte(long guestOffset)
    {
        if ((Flags & 1) != 0)
        {
            return 0;
        }

        long cluster = guestOffset / ClusterBytes;
        return _allocated.TryGetValue(cluster, out var content) ? (content ?? Content)(guestOffset) : (byte)0;
    }

    public void FillExpected(Span<byte> destination, long guestOffset)
    {
        // One cluster lookup per cluster, not per byte.
        int done = 0;
        while (done < destination.Length)
        {
            long offset = guestOffset + done;
            long cluster = offset / ClusterBytes;
            int n = (int)Math.Min(destination.Length - done, ((cluster + 1) * ClusterBytes) - offset);
            var piece = destination.Slice(done, n);
            if ((Flags & 1) == 0 && _allocated.TryGetValue(cluster, out var content))
            {
                content ??= Content;
                for (int i = 0; i < n; i++)
                {
                    piece[i] = content(offset + i);
                }
            }
            else
            {
                piece.Clear();
            }

            done += n;
        }
    }

    /// <summary>The smallest data_off the spec allows, in sectors.</summary>
    public long MinimumDataOffsetSectors(uint batEntries)
    {
        long sectors = (64 + (4L * batEntries) + 511) / 512;
        if (Magic == ParallelsMagic.WithouFreSpacExt)
        {
            sectors = (sectors + ClusterSectors - 1) / ClusterSectors * ClusterSectors;
        }

        return sectors;
    }

    public BuiltImage Build(string path)
    {
        uint batEntries = BatEntries ?? checked((uint)ClusterCount);
        long dataOffsetField = DataOffsetSectors ?? MinimumDataOffsetSectors(batEntries);
        long dataSectors = dataOffsetField == 0 ? MinimumDataOffsetSectors(batEntries) : dataOffsetField;
        long dataBytes = dataSectors * 512;
        long clusterBytes = ClusterBytes;

        // Host slot of each allocated guest cluster.
        var guests = _allocated.Keys.ToList();
        var slots = Enumerable.Range(0, guests.Count).ToArray();
        if (ShuffleHostOrder)
        {
            new Random(Seed).Shuffle(slots);
        }

        var hostOffsets = new Dictionary<long, long>();
        for (int i = 0; i < guests.Count; i++)
        {
            hostOffsets[guests[i]] = dataBytes + ((LeadingFreeClusters + slots[i]) * clusterBytes);
        }

        long next = dataBytes + ((LeadingFreeClusters + guests.Count) * clusterBytes);

        // Bitmap clusters of the dirty bitmap, then the extension cluster.
        var bitmapOffsets = new List<long>();
        if (Extension?.DirtyBitmap is { } bitmap)
        {
            foreach (var entry in bitmap.L1)
            {
                if (entry.Bits is not null)
                {
                    bitmapOffsets.Add(next);
                    next += clusterBytes;
                }
            }
        }

        long extOffset = 0;
        if (Extension is not null)
        {
            extOffset = next;
            next += clusterBytes;
        }

        long fileLength = Math.Max(next, 64 + (4L * batEntries));
        using (var fs = new FileStream(path, FileMode.Create, FileAccess.ReadWrite, FileShare.None))
        {
            fs.SetLength(fileLength);

            var header = new byte[64];
            (Magic == ParallelsMagic.WithoutFreeSpace ? "WithoutFreeSpace"u8 : "WithouFreSpacExt"u8).CopyTo(header);
            BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(16), Version);
            BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(20), Heads);
            BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(24), Cylinders);
            BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(28), ClusterSectors);
            BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(32), batEntries);
            BinaryPrimitives.WriteUInt64LittleEndian(header.AsSpan(36), SectorCountField ?? (ulong)DiskSectors);
            BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(44), InUse);
            BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(48), checked((uint)dataOffsetField));
            BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(52), Flags);
            BinaryPrimitives.WriteUInt64LittleEndian(header.AsSpan(56), (ulong)(extOffset / 512));
            WriteAt(fs, 0, header);

            var bat = new byte[4L * batEntries];
            foreach (var (guest, host) in hostOffsets)
            {
                if (guest < batEntries)
                {
                    BinaryPrimitives.WriteUInt32LittleEndian(bat.AsSpan((int)(guest * 4)), EntryFor(host));
                }
            }

            WriteAt(fs, 64, bat);

            var buffer = new byte[clusterBytes];
            foreach (var (guest, host) in hostOffsets)
            {
                var content = _allocated[guest] ?? Content;
                long start = guest * clusterBytes;
                for (int i = 0; i < buffer.Length; i++)
                {
                    buffer[i] = content(start + i);
                }

                WriteAt(fs, host, buffer);
            }

            if (Extension?.DirtyBitmap is { } bm)
            {
                int k = 0;
                foreach (var entry in bm.L1)
                {
                    if (entry.Bits is { } bits)
                    {
                        Array.Clear(buffer);
                        bits.AsSpan(0, Math.Min(bits.Length, buffer.Length)).CopyTo(buffer);
                        WriteAt(fs, bitmapOffsets[k++], buffer);
                    }
                }
            }

            if (Extension is not null)
            {
                WriteAt(fs, extOffset, Extension.Render(clusterBytes, (ulong)DiskSectors, bitmapOffsets));
            }
        }

        return new BuiltImage(this, path, dataBytes, hostOffsets, extOffset, bitmapOffsets);
    }

    /// <summary>The BAT entry that addresses a host byte offset: sectors for the old magic, clusters for Ext.</summary>
    public uint EntryFor(long hostOffset) =>
        checked((uint)(Magic == ParallelsMagic.WithoutFreeSpace ? hostOffset / 512 : hostOffset / ClusterBytes));

    private static void WriteAt(FileStream fs, long offset, ReadOnlySpan<byte> data)
    {
        fs.Position = offset;
        fs.Write(data);
    }
}

/// <summary>An image written by <see cref="ParallelsImageBuilder"/>: where things went, and ways to damage it.</summary>
public sealed class BuiltImage
{
    private readonly ParallelsImageBuilder _builder;
    private readonly Dictionary<long, long> _hostOffsets;

    internal BuiltImage(ParallelsImageBuilder builder, string path, long dataOffsetBytes, Dictionary<long, long> hostOffsets, long extensionOffsetBytes, List<long> bitmapOffsets)
    {
        _builder = builder;
        Path = path;
        DataOffsetBytes = dataOffsetBytes;
        _hostOffsets = hostOffsets;
        ExtensionOffsetBytes = extensionOffsetBytes;
        BitmapClusterOffsets = bitmapOffsets;
    }

    public string Path { get; }

    /// <summary>Where the data area starts (the effective data_off in bytes, even when the header says 0).</summary>
    public long DataOffsetBytes { get; }

    public long ExtensionOffsetBytes { get; }

    public IReadOnlyList<long> BitmapClusterOffsets { get; }

    public long ClusterBytes => _builder.ClusterBytes;

    public long VirtualSize => _builder.DiskSectors * 512;

    public long FileLength => new FileInfo(Path).Length;

    /// <summary>Host byte offset of an allocated guest cluster.</summary>
    public long HostOffsetOf(long guestCluster) => _hostOffsets[guestCluster];

    public byte ExpectedByte(long guestOffset) => _builder.ExpectedByte(guestOffset);

    public void FillExpected(Span<byte> destination, long guestOffset) => _builder.FillExpected(destination, guestOffset);

    public bool IsAllocated(long guestCluster) => _builder.IsAllocated(guestCluster);

    public uint EntryFor(long hostOffset) => _builder.EntryFor(hostOffset);

    public uint ReadBatEntry(long index) => BinaryPrimitives.ReadUInt32LittleEndian(ReadBytes(64 + (index * 4), 4));

    public BuiltImage SetBatEntry(long index, uint value) => WriteUInt32(64 + (index * 4), value);

    public BuiltImage SetVersion(uint value) => WriteUInt32(16, value);

    public BuiltImage SetTracks(uint value) => WriteUInt32(28, value);

    public BuiltImage SetBatEntriesField(uint value) => WriteUInt32(32, value);

    public BuiltImage SetSectorCountField(ulong value) => WriteUInt64(36, value);

    public BuiltImage SetInUse(uint value) => WriteUInt32(44, value);

    public BuiltImage SetDataOffsetField(uint sectors) => WriteUInt32(48, sectors);

    public BuiltImage SetFlags(uint value) => WriteUInt32(52, value);

    public BuiltImage SetExtensionOffsetField(ulong sectors) => WriteUInt64(56, sectors);

    public BuiltImage Truncate(long length)
    {
        using var fs = new FileStream(Path, FileMode.Open, FileAccess.Write);
        fs.SetLength(length);
        return this;
    }

    public BuiltImage WriteUInt32(long offset, uint value)
    {
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(b, value);
        return WriteBytes(offset, b);
    }

    public BuiltImage WriteUInt64(long offset, ulong value)
    {
        Span<byte> b = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, value);
        return WriteBytes(offset, b);
    }

    public BuiltImage WriteBytes(long offset, ReadOnlySpan<byte> data)
    {
        using var fs = new FileStream(Path, FileMode.Open, FileAccess.Write);
        fs.Position = offset;
        fs.Write(data);
        return this;
    }

    public byte[] ReadBytes(long offset, int count)
    {
        using var fs = new FileStream(Path, FileMode.Open, FileAccess.Read);
        var b = new byte[count];
        fs.Position = offset;
        fs.ReadExactly(b);
        return b;
    }
}

/// <summary>One feature section for the format extension: any magic, flags and data.</summary>
public sealed record ExtensionFeatureSpec(ulong Magic, ulong Flags, byte[] Data)
{
    public const ulong Necessary = 1;
    public const ulong Transit = 2;
}

/// <summary>One L1 entry of the dirty bitmap: all clean (0), all dirty (1), a bitmap cluster, or any raw value.</summary>
public sealed record L1Entry(ulong Raw, byte[]? Bits)
{
    public static L1Entry AllClean { get; } = new(0, null);

    public static L1Entry AllDirty { get; } = new(1, null);

    /// <summary>A cluster of bitmap bits (lowest bit first in each byte); the builder allocates it in the file.</summary>
    public static L1Entry Cluster(byte[] bits) => new(0, bits);

    public static L1Entry Value(ulong raw) => new(raw, null);
}

/// <summary>The dirty bitmap feature: size defaults to the disk size in sectors.</summary>
public sealed record DirtyBitmapSpec(Guid Id, uint GranularitySectors, IReadOnlyList<L1Entry> L1)
{
    public ulong? SizeSectors { get; init; }

    /// <summary>Overrides the l1_size field (default: the number of entries).</summary>
    public uint? L1SizeField { get; init; }

    /// <summary>The 16 id bytes as stored: the GUID in big-endian (RFC 4122) byte order.</summary>
    public static byte[] IdBytes(Guid id)
    {
        var b = new byte[16];
        id.TryWriteBytes(b, bigEndian: true, out _);
        return b;
    }
}

/// <summary>The format extension cluster: magic, MD5 of bytes [24, end), features, end marker.</summary>
public sealed class FormatExtensionSpec
{
    public const ulong Magic = 0xAB234CEF23DCEA87;
    public const ulong DirtyBitmapMagic = 0x20385FAE252CB34A;

    public DirtyBitmapSpec? DirtyBitmap { get; init; }

    /// <summary>Features written after the dirty bitmap (or alone).</summary>
    public List<ExtensionFeatureSpec> Features { get; init; } = [];

    /// <summary>Writes a wrong MD5 (the right one with its first byte flipped).</summary>
    public bool WrongChecksum { get; init; }

    /// <summary>When set, the cluster holds exactly these bytes (zero padded) instead of a rendered extension.</summary>
    public byte[]? Raw { get; init; }

    /// <summary>Fills the rest of the cluster with empty features (magic 0x55), leaving no room for the end marker.</summary>
    public bool NoEndMarker { get; init; }

    public byte[] Render(long clusterBytes, ulong diskSectors, IReadOnlyList<long> bitmapClusterOffsets)
    {
        var cluster = new byte[clusterBytes];
        if (Raw is not null)
        {
            Raw.AsSpan(0, Math.Min(Raw.Length, cluster.Length)).CopyTo(cluster);
            return cluster;
        }

        BinaryPrimitives.WriteUInt64LittleEndian(cluster, Magic);
        int pos = 24;
        if (DirtyBitmap is { } bm)
        {
            var data = new byte[32 + (8 * bm.L1.Count)];
            BinaryPrimitives.WriteUInt64LittleEndian(data, bm.SizeSectors ?? diskSectors);
            DirtyBitmapSpec.IdBytes(bm.Id).CopyTo(data, 8);
            BinaryPrimitives.WriteUInt32LittleEndian(data.AsSpan(24), bm.GranularitySectors);
            BinaryPrimitives.WriteUInt32LittleEndian(data.AsSpan(28), bm.L1SizeField ?? (uint)bm.L1.Count);
            int k = 0;
            for (int i = 0; i < bm.L1.Count; i++)
            {
                ulong value = bm.L1[i].Bits is not null ? (ulong)(bitmapClusterOffsets[k++] / 512) : bm.L1[i].Raw;
                BinaryPrimitives.WriteUInt64LittleEndian(data.AsSpan(32 + (8 * i)), value);
            }

            pos = WriteFeature(cluster, pos, DirtyBitmapMagic, 0, data);
        }

        foreach (var f in Features)
        {
            pos = WriteFeature(cluster, pos, f.Magic, f.Flags, f.Data);
        }

        if (NoEndMarker)
        {
            // Empty features up to the end of the cluster, so no room is left for the end marker.
            while (pos + 24 <= cluster.Length)
            {
                pos = WriteFeature(cluster, pos, 0x55, 0, []);
            }

            cluster.AsSpan(pos).Fill(0xA5);
        }

        // The end-of-features marker is 24 zero bytes, already there.
        byte[] md5 = MD5.HashData(cluster.AsSpan(24));
        if (WrongChecksum)
        {
            md5[0] ^= 0xFF;
        }

        md5.CopyTo(cluster, 8);
        return cluster;
    }

    private static int WriteFeature(byte[] cluster, int pos, ulong magic, ulong flags, byte[] data)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(cluster.AsSpan(pos), magic);
        BinaryPrimitives.WriteUInt64LittleEndian(cluster.AsSpan(pos + 8), flags);
        BinaryPrimitives.WriteUInt32LittleEndian(cluster.AsSpan(pos + 16), (uint)data.Length);
        data.CopyTo(cluster, pos + 24);
        return pos + 24 + ((data.Length + 7) & ~7);
    }
}
