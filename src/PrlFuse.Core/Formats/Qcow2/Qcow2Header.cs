using System.Buffers.Binary;
using System.Collections.Immutable;
using System.Text;

namespace PrlFuse.Core.Formats.Qcow2;

/// <summary>Which feature bitmap of the header a feature name belongs to.</summary>
public enum Qcow2FeatureType : byte
{
    Incompatible = 0,
    Compatible = 1,
    Autoclear = 2,
}

/// <summary>One entry of the feature name table: what an image calls one bit of its feature bitmaps.</summary>
public readonly record struct Qcow2FeatureName(Qcow2FeatureType Type, int Bit, string Name);

/// <summary>A header extension this reader does not know: kept as it is, so a rewritten header would keep it.</summary>
public sealed record Qcow2UnknownExtension(uint Type, ImmutableArray<byte> Data);

/// <summary>The bitmaps extension: where the bitmap directory is (the bitmaps themselves are not read).</summary>
public readonly record struct Qcow2BitmapsExtension(uint Count, ulong DirectorySize, ulong DirectoryOffset);

/// <summary>How compressed clusters are compressed.</summary>
public enum Qcow2CompressionType : byte
{
    Zlib = 0,
    Zstd = 1,
}

/// <summary>
/// The header of a qcow2 image, versions 2 and 3, with its header extensions and the backing file name, parsed from
/// the image's first cluster as a pure function. <see cref="TryRead"/> judges everything the header says about
/// itself as hostile input; what needs the file's length is <see cref="CheckAgainstFile"/>.
/// </summary>
public sealed record Qcow2Header
{
    public const uint MagicValue = 0x514649FB;

    public const int MinClusterBits = 9;

    /// <summary>QEMU's implementation limit (2 MiB clusters), which every image it writes keeps.</summary>
    public const int MaxClusterBits = 21;

    /// <summary>Extended L2 entries need clusters of at least 16 KiB (subclusters of at least 512 bytes).</summary>
    public const int MinExtendedL2ClusterBits = 14;

    /// <summary>QEMU's cap on the active L1 table, in bytes.</summary>
    public const long MaxL1TableBytes = 32L << 20;

    /// <summary>The longest backing file name the format allows.</summary>
    public const int MaxBackingFileNameBytes = 1023;

    /// <summary>QEMU's cap on the backing format name (it keeps it in a 16-byte buffer).</summary>
    public const int MaxBackingFormatBytes = 15;

    /// <summary>QEMU's cap on the number of bitmaps, and on internal snapshots.</summary>
    public const uint MaxBitmaps = 65535;
    public const uint MaxSnapshots = 65536;

    public const ulong IncompatibleDirty = 1UL << 0;
    public const ulong IncompatibleCorrupt = 1UL << 1;
    public const ulong IncompatibleDataFile = 1UL << 2;
    public const ulong IncompatibleCompressionType = 1UL << 3;
    public const ulong IncompatibleExtendedL2 = 1UL << 4;

    /// <summary>The incompatible features this reader knows.</summary>
    public const ulong KnownIncompatible = IncompatibleDirty | IncompatibleCorrupt | IncompatibleDataFile | IncompatibleCompressionType | IncompatibleExtendedL2;

    public const ulong CompatibleLazyRefcounts = 1UL << 0;

    public const ulong AutoclearBitmaps = 1UL << 0;
    public const ulong AutoclearDataFileRaw = 1UL << 1;

    public uint Version { get; init; }

    public ulong BackingFileOffset { get; init; }

    public uint BackingFileSize { get; init; }

    public int ClusterBits { get; init; }

    /// <summary>Guest size in bytes.</summary>
    public long Size { get; init; }

    public uint CryptMethod { get; init; }

    public uint L1Size { get; init; }

    public long L1TableOffset { get; init; }

    public long RefcountTableOffset { get; init; }

    public uint RefcountTableClusters { get; init; }

    public uint SnapshotCount { get; init; }

    public long SnapshotsOffset { get; init; }

    public ulong IncompatibleFeatures { get; init; }

    public ulong CompatibleFeatures { get; init; }

    public ulong AutoclearFeatures { get; init; }

    /// <summary>Refcount entries are 2^RefcountOrder bits wide (4 for version 2).</summary>
    public int RefcountOrder { get; init; }

    /// <summary>Bytes of the header before its extensions (72 for version 2).</summary>
    public int HeaderLength { get; init; }

    public Qcow2CompressionType CompressionType { get; init; }

    /// <summary>The backing file's name as stored (not resolved), or null for none.</summary>
    public string? BackingFile { get; init; }

    /// <summary>The backing file's format from its header extension ("qcow2", "raw", ...), or null.</summary>
    public string? BackingFormat { get; init; }

    /// <summary>The external data file's name from its header extension, or null.</summary>
    public string? DataFile { get; init; }

    public ImmutableArray<Qcow2FeatureName> FeatureNames { get; init; } = [];

    public Qcow2BitmapsExtension? Bitmaps { get; init; }

    /// <summary>The full disk encryption header pointer (offset, length), when the extension is there.</summary>
    public (ulong Offset, ulong Length)? EncryptionHeader { get; init; }

    public ImmutableArray<Qcow2UnknownExtension> UnknownExtensions { get; init; } = [];

    public long ClusterBytes => 1L << ClusterBits;

    public bool HasExtendedL2 => (IncompatibleFeatures & IncompatibleExtendedL2) != 0;

    public bool HasDataFile => (IncompatibleFeatures & IncompatibleDataFile) != 0;

    public bool IsDataFileRaw => (AutoclearFeatures & AutoclearDataFileRaw) != 0;

    public bool IsDirty => (IncompatibleFeatures & IncompatibleDirty) != 0;

    public bool IsCorrupt => (IncompatibleFeatures & IncompatibleCorrupt) != 0;

    public int L2EntryBytes => HasExtendedL2 ? FieldLocations.ExtendedL2EntrySize : FieldLocations.L2EntrySize;

    /// <summary>Entries in one L2 table (one cluster).</summary>
    public long L2Entries => ClusterBytes / L2EntryBytes;

    /// <summary>L1 entries the guest size needs.</summary>
    public long RequiredL1Entries => RequiredL1(Size, ClusterBits, L2EntryBytes);

    internal static long RequiredL1(long size, int clusterBits, int l2EntryBytes)
    {
        int shift = clusterBits + clusterBits - (l2EntryBytes == FieldLocations.L2EntrySize ? 3 : 4);
        return (long)(((ulong)size + (1UL << shift) - 1) >> shift);
    }

    /// <summary>The features the image uses, by the names QEMU gives them, incompatible first.</summary>
    public IReadOnlyList<string> FeatureList()
    {
        var list = new List<string>();
        void Add(ulong bits, ulong bit, string name)
        {
            if ((bits & bit) != 0)
            {
                list.Add(name);
            }
        }

        Add(IncompatibleFeatures, IncompatibleDirty, "dirty bit");
        Add(IncompatibleFeatures, IncompatibleCorrupt, "corrupt bit");
        Add(IncompatibleFeatures, IncompatibleDataFile, "external data file");
        Add(IncompatibleFeatures, IncompatibleCompressionType, "compression type");
        Add(IncompatibleFeatures, IncompatibleExtendedL2, "extended L2 entries");
        Add(CompatibleFeatures, CompatibleLazyRefcounts, "lazy refcounts");
        Add(AutoclearFeatures, AutoclearBitmaps, "bitmaps");
        Add(AutoclearFeatures, AutoclearDataFileRaw, "raw external data");
        return list;
    }

    /// <summary>True when <paramref name="data"/> starts with "QFI\xfb".</summary>
    public static bool HasMagic(ReadOnlySpan<byte> data) =>
        data.Length >= 4 && BinaryPrimitives.ReadUInt32BigEndian(data) == MagicValue;

    /// <summary>
    /// Parses the header from <paramref name="data"/>, the start of the image (its first cluster, or as much of it as
    /// the file has). Returns false with a one-line <paramref name="error"/> for what no reader may open: not qcow2, an
    /// unknown version, sizes out of bounds, misaligned tables, broken extensions, encryption, unknown incompatible
    /// features (named from the feature name table when it names them).
    /// </summary>
    public static bool TryRead(ReadOnlySpan<byte> data, out Qcow2Header header, out string error)
    {
        header = null!;
        if (data.Length < FieldLocations.Version2HeaderSize || !HasMagic(data))
        {
            error = "not a qcow2 image (no QFI\\xfb magic, or shorter than a header)";
            return false;
        }

        uint version = U32(data, FieldLocations.Version);
        if (version is not (2 or 3))
        {
            error = $"qcow2 version {version} is not supported (only versions 2 and 3)";
            return false;
        }

        uint clusterBits = U32(data, FieldLocations.ClusterBits);
        if (clusterBits is < MinClusterBits or > MaxClusterBits)
        {
            error = $"cluster_bits {clusterBits} is out of range ({MinClusterBits} to {MaxClusterBits})";
            return false;
        }

        long clusterBytes = 1L << (int)clusterBits;
        ulong size = U64(data, FieldLocations.Size);
        if (size > long.MaxValue / 2)
        {
            error = $"disk size {size} is too large";
            return false;
        }

        var h = new Qcow2Header
        {
            Version = version,
            BackingFileOffset = U64(data, FieldLocations.BackingFileOffset),
            BackingFileSize = U32(data, FieldLocations.BackingFileSize),
            ClusterBits = (int)clusterBits,
            Size = (long)size,
            CryptMethod = U32(data, FieldLocations.CryptMethod),
            L1Size = U32(data, FieldLocations.L1Size),
            RefcountTableClusters = U32(data, FieldLocations.RefcountTableClusters),
            SnapshotCount = U32(data, FieldLocations.SnapshotCount),
            HeaderLength = FieldLocations.Version2HeaderSize,
            RefcountOrder = 4,
        };
        ulong l1Offset = U64(data, FieldLocations.L1TableOffset);
        ulong refcountOffset = U64(data, FieldLocations.RefcountTableOffset);
        ulong snapshotsOffset = U64(data, FieldLocations.SnapshotsOffset);
        if (!Aligned("l1_table_offset", l1Offset, clusterBytes, out error)
            || !Aligned("refcount_table_offset", refcountOffset, clusterBytes, out error)
            || !Aligned("snapshots_offset", snapshotsOffset, clusterBytes, out error))
        {
            return false;
        }

        h = h with { L1TableOffset = (long)l1Offset, RefcountTableOffset = (long)refcountOffset, SnapshotsOffset = (long)snapshotsOffset };
        if (version == 3)
        {
            if (data.Length < FieldLocations.Version3MinimumHeaderSize)
            {
                error = "qcow2 version 3 header is truncated";
                return false;
            }

            uint headerLength = U32(data, FieldLocations.HeaderLength);
            uint refcountOrder = U32(data, FieldLocations.RefcountOrder);
            if (headerLength < FieldLocations.Version3MinimumHeaderSize || headerLength % 8 != 0 || headerLength > clusterBytes || headerLength > data.Length)
            {
                error = $"header_length {headerLength} is invalid (at least {FieldLocations.Version3MinimumHeaderSize}, a multiple of 8, within the first cluster)";
                return false;
            }

            if (refcountOrder > 6)
            {
                error = $"refcount_order {refcountOrder} is larger than 6";
                return false;
            }

            h = h with
            {
                IncompatibleFeatures = U64(data, FieldLocations.IncompatibleFeatures),
                CompatibleFeatures = U64(data, FieldLocations.CompatibleFeatures),
                AutoclearFeatures = U64(data, FieldLocations.AutoclearFeatures),
                RefcountOrder = (int)refcountOrder,
                HeaderLength = (int)headerLength,
            };
            byte compression = headerLength > FieldLocations.CompressionType ? data[FieldLocations.CompressionType] : (byte)0;
            bool typeBit = (h.IncompatibleFeatures & IncompatibleCompressionType) != 0;
            if (typeBit != (compression != 0))
            {
                error = typeBit
                    ? "the compression type feature is set but compression_type is zlib"
                    : $"compression_type {compression} is set without the compression type feature";
                return false;
            }

            if (compression > (byte)Qcow2CompressionType.Zstd)
            {
                error = $"compression_type {compression} is unknown (only zlib and zstd)";
                return false;
            }

            h = h with { CompressionType = (Qcow2CompressionType)compression };
        }

        var extensionArea = data[..(int)Math.Min(data.Length, clusterBytes)];
        if (!ReadExtensions(extensionArea, h, out h, out error))
        {
            return false;
        }

        if (h.BackingFileOffset != 0)
        {
            if (h.BackingFileSize > MaxBackingFileNameBytes)
            {
                error = $"backing file name is {h.BackingFileSize} bytes, longer than {MaxBackingFileNameBytes}";
                return false;
            }

            if (h.BackingFileOffset > (ulong)extensionArea.Length || h.BackingFileSize > (ulong)extensionArea.Length - h.BackingFileOffset)
            {
                error = $"backing file name at offset {h.BackingFileOffset} lies outside the first cluster";
                return false;
            }

            h = h with { BackingFile = Encoding.UTF8.GetString(extensionArea.Slice((int)h.BackingFileOffset, (int)h.BackingFileSize)) };
        }

        return Judge(h, out header, out error);
    }

    /// <summary>The rules that need the whole header: features, encryption, the L1 table's size.</summary>
    private static bool Judge(Qcow2Header h, out Qcow2Header header, out string error)
    {
        header = h;
        ulong unknown = h.IncompatibleFeatures & ~KnownIncompatible;
        if (unknown != 0)
        {
            int bit = System.Numerics.BitOperations.TrailingZeroCount(unknown);
            string? name = h.FeatureNames.FirstOrDefault(f => f.Type == Qcow2FeatureType.Incompatible && f.Bit == bit).Name;
            error = name is { Length: > 0 }
                ? $"uses the incompatible feature \"{name}\" (bit {bit}), which prlfuse does not know"
                : $"uses an unknown incompatible feature (bit {bit})";
            return false;
        }

        if (h.CryptMethod != 0)
        {
            string method = h.CryptMethod switch { 1 => "AES", 2 => "LUKS", _ => $"method {h.CryptMethod}" };
            error = $"is encrypted ({method}); prlfuse does not read encrypted qcow2 images: decrypt it with 'qemu-img convert' first";
            return false;
        }

        if (h.HasExtendedL2 && h.ClusterBits < MinExtendedL2ClusterBits)
        {
            error = $"extended L2 entries need clusters of at least {1 << MinExtendedL2ClusterBits} bytes, not {h.ClusterBytes}";
            return false;
        }

        if (h.IsDataFileRaw && !h.HasDataFile)
        {
            error = "the raw external data bit is set without an external data file";
            return false;
        }

        if (h.HasDataFile && h.BackingFile is not null && h.IsDataFileRaw)
        {
            error = "a raw external data file cannot have a backing file";
            return false;
        }

        if ((long)h.L1Size * FieldLocations.L1EntrySize > MaxL1TableBytes)
        {
            error = $"L1 table of {h.L1Size} entries is larger than {MaxL1TableBytes >> 20} MiB";
            return false;
        }

        if (h.L1Size < h.RequiredL1Entries)
        {
            error = $"L1 table of {h.L1Size} entries is too small for a disk of {h.Size} bytes ({h.RequiredL1Entries} needed)";
            return false;
        }

        if (h.SnapshotCount > MaxSnapshots)
        {
            error = $"{h.SnapshotCount} internal snapshots is more than {MaxSnapshots}";
            return false;
        }

        error = "";
        return true;
    }

    /// <summary>
    /// The rules that need the file's length: the L1 table, the refcount table and the snapshot table inside the file.
    /// Returns null, or a one-line reason to refuse the image.
    /// </summary>
    public string? CheckAgainstFile(long fileLength)
    {
        long l1Bytes = (long)L1Size * FieldLocations.L1EntrySize;
        if (L1Size > 0 && (L1TableOffset == 0 || L1TableOffset > fileLength - l1Bytes))
        {
            return $"L1 table at offset {L1TableOffset} ({l1Bytes} bytes) lies outside the file ({fileLength} bytes)";
        }

        long refcountBytes = RefcountTableClusters * ClusterBytes;
        if (RefcountTableOffset == 0 || RefcountTableOffset > fileLength - refcountBytes)
        {
            return $"refcount table at offset {RefcountTableOffset} ({RefcountTableClusters} clusters) lies outside the file ({fileLength} bytes)";
        }

        if (SnapshotCount > 0 && (SnapshotsOffset == 0 || SnapshotsOffset >= fileLength))
        {
            return $"snapshot table at offset {SnapshotsOffset} lies outside the file ({fileLength} bytes)";
        }

        return null;
    }

    private static bool ReadExtensions(ReadOnlySpan<byte> area, Qcow2Header h, out Qcow2Header result, out string error)
    {
        result = h;
        var names = ImmutableArray.CreateBuilder<Qcow2FeatureName>();
        var unknown = ImmutableArray.CreateBuilder<Qcow2UnknownExtension>();
        var seen = new HashSet<uint>();
        int at = h.HeaderLength;
        while (true)
        {
            if (area.Length - at < FieldLocations.ExtensionData)
            {
                // A header that fills its first cluster has no room for the end marker: the area just ends.
                break;
            }

            uint type = U32(area, at + FieldLocations.ExtensionType);
            uint length = U32(area, at + FieldLocations.ExtensionLength);
            if (type == FieldLocations.ExtensionEnd)
            {
                break;
            }

            int dataAt = at + FieldLocations.ExtensionData;
            if (length > (uint)(area.Length - dataAt))
            {
                error = $"header extension 0x{type:x8} at offset {at} ({length} bytes) runs past the first cluster";
                return false;
            }

            var ext = area.Slice(dataAt, (int)length);
            if (!seen.Add(type))
            {
                error = $"header extension 0x{type:x8} appears twice";
                return false;
            }

            switch (type)
            {
                case FieldLocations.ExtensionBackingFormat:
                    if (length > MaxBackingFormatBytes)
                    {
                        error = $"backing format name is {length} bytes, longer than {MaxBackingFormatBytes}";
                        return false;
                    }

                    result = result with { BackingFormat = Encoding.UTF8.GetString(ext) };
                    break;
                case FieldLocations.ExtensionDataFile:
                    result = result with { DataFile = Encoding.UTF8.GetString(ext) };
                    break;
                case FieldLocations.ExtensionFeatureNames:
                    for (int e = 0; e + FieldLocations.FeatureNameEntrySize <= ext.Length; e += FieldLocations.FeatureNameEntrySize)
                    {
                        var entry = ext.Slice(e, FieldLocations.FeatureNameEntrySize);
                        var nameBytes = entry.Slice(FieldLocations.FeatureName, FieldLocations.FeatureNameLength);
                        int end = nameBytes.IndexOf((byte)0);
                        string name = Encoding.UTF8.GetString(end < 0 ? nameBytes : nameBytes[..end]);
                        names.Add(new((Qcow2FeatureType)entry[FieldLocations.FeatureNameType], entry[FieldLocations.FeatureNameBit], name));
                    }

                    break;
                case FieldLocations.ExtensionBitmaps:
                    if (length != FieldLocations.BitmapsExtensionSize)
                    {
                        error = $"bitmaps header extension is {length} bytes, not {FieldLocations.BitmapsExtensionSize}";
                        return false;
                    }

                    var bitmaps = new Qcow2BitmapsExtension(U32(ext, FieldLocations.BitmapsCount), U64(ext, FieldLocations.BitmapsDirectorySize), U64(ext, FieldLocations.BitmapsDirectoryOffset));
                    if (bitmaps.Count is 0 or > MaxBitmaps || bitmaps.DirectoryOffset % (ulong)h.ClusterBytes != 0)
                    {
                        error = $"bitmaps header extension is invalid ({bitmaps.Count} bitmaps, directory at offset {bitmaps.DirectoryOffset})";
                        return false;
                    }

                    result = result with { Bitmaps = bitmaps };
                    break;
                case FieldLocations.ExtensionFullDiskEncryption:
                    if (length >= 16)
                    {
                        result = result with { EncryptionHeader = (U64(ext, 0), U64(ext, 8)) };
                    }

                    break;
                default:
                    unknown.Add(new Qcow2UnknownExtension(type, [.. ext]));
                    break;
            }

            at = dataAt + (int)((length + 7) & ~7u);
            if (at > area.Length)
            {
                break;
            }
        }

        result = result with { FeatureNames = names.ToImmutable(), UnknownExtensions = unknown.ToImmutable() };
        error = "";
        return true;
    }

    private static bool Aligned(string field, ulong value, long clusterBytes, out string error)
    {
        if (value % (ulong)clusterBytes != 0 || value > long.MaxValue / 2)
        {
            error = $"{field} {value} is not on a cluster boundary inside a file";
            return false;
        }

        error = "";
        return true;
    }

    private static uint U32(ReadOnlySpan<byte> data, int at) => BinaryPrimitives.ReadUInt32BigEndian(data[at..]);

    private static ulong U64(ReadOnlySpan<byte> data, int at) => BinaryPrimitives.ReadUInt64BigEndian(data[at..]);
}
