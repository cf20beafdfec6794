using System.Buffers.Binary;
using System.Text;
using PrlFuse.Core.Formats.Qcow2;
using PrlFuse.Tests.Support;
using Q = PrlFuse.Core.Formats.Qcow2.FieldLocations;

namespace PrlFuse.Tests.Core.Formats.Qcow2;

/// <summary>
/// The qcow2 header as a pure function: every field where the spec puts it, header extensions, and each rule that
/// refuses hostile input with a one-line message. Headers are built byte by byte here; <see cref="Qcow2QemuHeaderTests"/>
/// reads the ones qemu-img writes.
/// </summary>
public sealed class Qcow2HeaderTests
{
    /// <summary>A first cluster of 64 KiB holding a version 3 header (or version 2) for a 1 GiB disk.</summary>
    internal static byte[] Build(int version = 3, int clusterBits = 16, long size = 1L << 30, Action<byte[]>? edit = null, params (uint Type, byte[] Data)[] extensions)
    {
        byte[] b = new byte[1 << clusterBits];
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(Q.Magic), Qcow2Header.MagicValue);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(Q.Version), (uint)version);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(Q.ClusterBits), (uint)clusterBits);
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(Q.Size), (ulong)size);
        long l2Span = (1L << clusterBits) * ((1L << clusterBits) / 8);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(Q.L1Size), (uint)((size + l2Span - 1) / l2Span));
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(Q.L1TableOffset), 3UL << clusterBits);
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(Q.RefcountTableOffset), 1UL << clusterBits);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(Q.RefcountTableClusters), 1);
        int at = Q.Version2HeaderSize;
        if (version == 3)
        {
            BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(Q.RefcountOrder), 4);
            BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(Q.HeaderLength), 112);
            at = 112;
        }

        foreach (var (type, data) in extensions)
        {
            BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(at), type);
            BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(at + 4), (uint)data.Length);
            data.CopyTo(b, at + 8);
            at += 8 + ((data.Length + 7) & ~7);
        }

        edit?.Invoke(b);
        return b;
    }

    internal static void U32(byte[] b, int at, uint value) => BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(at), value);

    internal static void U64(byte[] b, int at, ulong value) => BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(at), value);

    private static byte[] FeatureName(Qcow2FeatureType type, int bit, string name)
    {
        byte[] e = new byte[Q.FeatureNameEntrySize];
        e[0] = (byte)type;
        e[1] = (byte)bit;
        Encoding.ASCII.GetBytes(name).CopyTo(e, 2);
        return e;
    }

    private static string Refusal(byte[] data)
    {
        Assert.False(Qcow2Header.TryRead(data, out _, out string error));
        Assert.DoesNotContain('\n', error);
        return error;
    }

    [Fact]
    public void ReadsEveryFieldOfVersion3()
    {
        byte[] backing = Encoding.UTF8.GetBytes("base image.qcow2");
        byte[] data = Build(edit: b =>
        {
            U64(b, Q.BackingFileOffset, 4096);
            U32(b, Q.BackingFileSize, (uint)backing.Length);
            backing.CopyTo(b, 4096);
            U64(b, Q.CompatibleFeatures, Qcow2Header.CompatibleLazyRefcounts);
            U64(b, Q.IncompatibleFeatures, Qcow2Header.IncompatibleDirty);
            U32(b, Q.SnapshotCount, 2);
            U64(b, Q.SnapshotsOffset, 5UL << 16);
        }, extensions: [(Q.ExtensionBackingFormat, "qcow2"u8.ToArray()), (Q.ExtensionFeatureNames, FeatureName(Qcow2FeatureType.Incompatible, 0, "dirty bit")), (0x12345678, [1, 2, 3])]);

        Assert.True(Qcow2Header.TryRead(data, out var h, out string error), error);
        Assert.Equal(3u, h.Version);
        Assert.Equal(16, h.ClusterBits);
        Assert.Equal(65536, h.ClusterBytes);
        Assert.Equal(1L << 30, h.Size);
        Assert.Equal(2u, h.L1Size);
        Assert.Equal(3L << 16, h.L1TableOffset);
        Assert.Equal(1L << 16, h.RefcountTableOffset);
        Assert.Equal(2u, h.SnapshotCount);
        Assert.Equal(5L << 16, h.SnapshotsOffset);
        Assert.Equal(112, h.HeaderLength);
        Assert.True(h.IsDirty);
        Assert.False(h.IsCorrupt);
        Assert.Equal(Qcow2Header.CompatibleLazyRefcounts, h.CompatibleFeatures);
        Assert.Equal("base image.qcow2", h.BackingFile);
        Assert.Equal("qcow2", h.BackingFormat);
        Assert.Equal(new Qcow2FeatureName(Qcow2FeatureType.Incompatible, 0, "dirty bit"), Assert.Single(h.FeatureNames));
        var unknown = Assert.Single(h.UnknownExtensions);
        Assert.Equal(0x12345678u, unknown.Type);
        Assert.Equal(new byte[] { 1, 2, 3 }, unknown.Data.ToArray());
    }

    [Fact]
    public void Version2HasFixedHeaderLengthAndRefcountOrder()
    {
        byte[] data = Build(version: 2, clusterBits: 9, size: 1 << 20, extensions: [(Q.ExtensionBackingFormat, "raw"u8.ToArray())]);
        Assert.True(Qcow2Header.TryRead(data, out var h, out string error), error);
        Assert.Equal(2u, h.Version);
        Assert.Equal(72, h.HeaderLength);
        Assert.Equal(4, h.RefcountOrder);
        Assert.Equal("raw", h.BackingFormat);
        Assert.Equal(0UL, h.IncompatibleFeatures);
    }

    [Fact]
    public void ReadsDataFileBitmapsAndCompressionType()
    {
        byte[] bitmaps = new byte[24];
        BinaryPrimitives.WriteUInt32BigEndian(bitmaps, 1);
        BinaryPrimitives.WriteUInt64BigEndian(bitmaps.AsSpan(8), 40);
        BinaryPrimitives.WriteUInt64BigEndian(bitmaps.AsSpan(16), 7UL << 16);
        byte[] data = Build(edit: b =>
        {
            U64(b, Q.IncompatibleFeatures, Qcow2Header.IncompatibleDataFile | Qcow2Header.IncompatibleCompressionType | Qcow2Header.IncompatibleExtendedL2);
            U64(b, Q.AutoclearFeatures, Qcow2Header.AutoclearDataFileRaw | Qcow2Header.AutoclearBitmaps);
            b[Q.CompressionType] = 1;
            U32(b, Q.L1Size, 4);
        }, extensions: [(Q.ExtensionDataFile, "data.raw"u8.ToArray()), (Q.ExtensionBitmaps, bitmaps)]);

        Assert.True(Qcow2Header.TryRead(data, out var h, out string error), error);
        Assert.Equal("data.raw", h.DataFile);
        Assert.True(h.HasDataFile && h.IsDataFileRaw && h.HasExtendedL2);
        Assert.Equal(16, h.L2EntryBytes);
        Assert.Equal(Qcow2CompressionType.Zstd, h.CompressionType);
        Assert.Equal(new Qcow2BitmapsExtension(1, 40, 7UL << 16), h.Bitmaps);
    }

    [Fact]
    public void UnknownIncompatibleFeatureIsRefusedByItsName()
    {
        byte[] named = Build(edit: b => U64(b, Q.IncompatibleFeatures, 1UL << 9), extensions: [(Q.ExtensionFeatureNames, [.. FeatureName(Qcow2FeatureType.Compatible, 9, "not this one"), .. FeatureName(Qcow2FeatureType.Incompatible, 9, "time travel")])]);
        Assert.Contains("\"time travel\" (bit 9)", Refusal(named));
        byte[] unnamed = Build(edit: b => U64(b, Q.IncompatibleFeatures, 1UL << 40));
        Assert.Contains("unknown incompatible feature (bit 40)", Refusal(unnamed));
    }

    [Theory]
    [InlineData(1u, "AES")]
    [InlineData(2u, "LUKS")]
    public void EncryptionIsRefused(uint method, string name)
    {
        string error = Refusal(Build(edit: b => U32(b, Q.CryptMethod, method)));
        Assert.Contains($"encrypted ({name})", error);
    }

    public static TheoryData<string, string> HostileHeaders => new()
    {
        { "magic", "not a qcow2 image" },
        { "version 4", "version 4 is not supported" },
        { "cluster_bits 8", "cluster_bits 8 is out of range" },
        { "cluster_bits 22", "cluster_bits 22 is out of range" },
        { "header_length 100", "header_length 100 is invalid" },
        { "header_length 108", "header_length 108 is invalid" },
        { "refcount_order 7", "refcount_order 7 is larger than 6" },
        { "l1 misaligned", "l1_table_offset 512 is not on a cluster boundary" },
        { "refcount misaligned", "refcount_table_offset 100 is not on a cluster boundary" },
        { "l1 too small", "too small for a disk of 1073741824 bytes" },
        { "l1 too large", "larger than 32 MiB" },
        { "size huge", "is too large" },
        { "backing too long", "longer than 1023" },
        { "backing outside", "lies outside the first cluster" },
        { "extension past cluster", "runs past the first cluster" },
        { "extension twice", "appears twice" },
        { "backing format long", "backing format name is 16 bytes" },
        { "compression without bit", "compression_type 1 is set without" },
        { "compression bit without type", "the compression type feature is set but compression_type is zlib" },
        { "compression unknown", "compression_type 2 is unknown" },
        { "extended l2 small clusters", "extended L2 entries need clusters of at least 16384 bytes" },
        { "raw without data file", "raw external data bit is set without" },
        { "bitmaps length", "bitmaps header extension is 8 bytes" },
        { "too many snapshots", "internal snapshots is more than" },
    };

    [Theory]
    [MemberData(nameof(HostileHeaders))]
    public void HostileHeaderIsRefusedInOneLine(string what, string expected)
    {
        byte[] data = what switch
        {
            "magic" => Build(edit: b => b[0] = 0),
            "version 4" => Build(edit: b => U32(b, Q.Version, 4)),
            "cluster_bits 8" => Build(edit: b => U32(b, Q.ClusterBits, 8)),
            "cluster_bits 22" => Build(edit: b => U32(b, Q.ClusterBits, 22)),
            "header_length 100" => Build(edit: b => U32(b, Q.HeaderLength, 100)),
            "header_length 108" => Build(edit: b => U32(b, Q.HeaderLength, 108)),
            "refcount_order 7" => Build(edit: b => U32(b, Q.RefcountOrder, 7)),
            "l1 misaligned" => Build(edit: b => U64(b, Q.L1TableOffset, 512)),
            "refcount misaligned" => Build(edit: b => U64(b, Q.RefcountTableOffset, 100)),
            "l1 too small" => Build(edit: b => U32(b, Q.L1Size, 1)),
            "l1 too large" => Build(edit: b => U32(b, Q.L1Size, (32 << 20) / 8 + 1)),
            "size huge" => Build(edit: b => U64(b, Q.Size, ulong.MaxValue)),
            "backing too long" => Build(edit: b => { U64(b, Q.BackingFileOffset, 4096); U32(b, Q.BackingFileSize, 1024); }),
            "backing outside" => Build(edit: b => { U64(b, Q.BackingFileOffset, 65530); U32(b, Q.BackingFileSize, 10); }),
            "extension past cluster" => Build(edit: b => { U32(b, 112, 0x11); U32(b, 116, 65536); }),
            "extension twice" => Build(extensions: [(Q.ExtensionDataFile, [65]), (Q.ExtensionDataFile, [66])]),
            "backing format long" => Build(extensions: [(Q.ExtensionBackingFormat, new byte[16])]),
            "compression without bit" => Build(edit: b => b[Q.CompressionType] = 1),
            "compression bit without type" => Build(edit: b => U64(b, Q.IncompatibleFeatures, Qcow2Header.IncompatibleCompressionType)),
            "compression unknown" => Build(edit: b => { U64(b, Q.IncompatibleFeatures, Qcow2Header.IncompatibleCompressionType); b[Q.CompressionType] = 2; }),
            "extended l2 small clusters" => Build(clusterBits: 13, size: 1 << 20, edit: b => U64(b, Q.IncompatibleFeatures, Qcow2Header.IncompatibleExtendedL2)),
            "raw without data file" => Build(edit: b => U64(b, Q.AutoclearFeatures, Qcow2Header.AutoclearDataFileRaw)),
            "bitmaps length" => Build(extensions: [(Q.ExtensionBitmaps, new byte[8])]),
            "too many snapshots" => Build(edit: b => U32(b, Q.SnapshotCount, 70000)),
            _ => throw new ArgumentOutOfRangeException(nameof(what)),
        };

        Assert.Contains(expected, Refusal(data), StringComparison.Ordinal);
    }

    [Fact]
    public void TablesOutsideTheFileAreRefused()
    {
        Assert.True(Qcow2Header.TryRead(Build(), out var h, out _));
        Assert.Null(h.CheckAgainstFile(4L << 16));
        Assert.Contains("L1 table at offset 196608", h.CheckAgainstFile(3L << 16), StringComparison.Ordinal);
        Assert.Contains("refcount table", (h with { RefcountTableOffset = 8L << 16 }).CheckAgainstFile(4L << 16), StringComparison.Ordinal);
        Assert.Contains("snapshot table", (h with { SnapshotCount = 1, SnapshotsOffset = 9L << 16 }).CheckAgainstFile(4L << 16), StringComparison.Ordinal);
    }

    [Fact]
    public void ShortOrTruncatedInputNeverThrows()
    {
        byte[] full = Build(extensions: [(Q.ExtensionFeatureNames, FeatureName(Qcow2FeatureType.Incompatible, 0, "dirty bit"))]);
        for (int n = 0; n <= 400; n++)
        {
            Qcow2Header.TryRead(full.AsSpan(0, n), out _, out _);
        }
    }
}

/// <summary>The headers qemu-img writes, read back.</summary>
[Trait("Needs", "Qemu")]
public sealed class Qcow2QemuHeaderTests
{
    [Theory]
    [InlineData("compat=0.10,cluster_size=512", 2u, 9, false)]
    [InlineData("compat=1.1,cluster_size=65536,lazy_refcounts=on", 3u, 16, false)]
    [InlineData("compat=1.1,cluster_size=2M,extended_l2=on,compression_type=zstd", 3u, 21, true)]
    public void ReadsWhatQemuWrites(string options, uint version, int clusterBits, bool extendedL2)
    {
        using var temp = new TempFolder();
        string baseImage = Path.Combine(temp.Path, "base.raw");
        File.WriteAllBytes(baseImage, new byte[1 << 20]);
        string image = Path.Combine(temp.Path, "top.qcow2");
        ProcessRunner.Run("qemu-img", "create", "-q", "-f", "qcow2", "-o", $"{options},backing_file=base.raw,backing_fmt=raw", image, "3G");
        byte[] head = File.ReadAllBytes(image).AsSpan(0, 1 << clusterBits).ToArray();

        Assert.True(Qcow2Header.TryRead(head, out var h, out string error), error);
        Assert.Equal(version, h.Version);
        Assert.Equal(clusterBits, h.ClusterBits);
        Assert.Equal(3L << 30, h.Size);
        Assert.Equal(extendedL2, h.HasExtendedL2);
        Assert.Equal("base.raw", h.BackingFile);
        Assert.Equal("raw", h.BackingFormat);
        Assert.Null(h.CheckAgainstFile(new FileInfo(image).Length));
        if (version == 3)
        {
            Assert.Contains(h.FeatureNames, f => f is { Type: Qcow2FeatureType.Incompatible, Bit: 4, Name: "extended L2 entries" });
        }
    }
}
