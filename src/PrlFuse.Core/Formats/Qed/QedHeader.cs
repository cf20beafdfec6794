using System.Buffers.Binary;
using System.Numerics;
using System.Text;

namespace PrlFuse.Core.Formats.Qed;

/// <summary>
/// The header of a QED image: its fixed fields and the backing file name they point at. <see cref="TryRead"/> takes
/// untrusted bytes and judges every field against the specification and against caps of our own, so that what it
/// accepts can be opened without unbounded allocation.
/// </summary>
public sealed record QedHeader
{
    public const int MinClusterBits = 12;
    public const int MaxClusterBits = 26;
    public const int MaxTableClusters = 16;

    /// <summary>Longest backing file name taken, as QEMU (which keeps it in a buffer of PATH_MAX bytes).</summary>
    public const int MaxBackingNameBytes = 4095;

    /// <summary>
    /// Largest L1 or L2 table opened: a table is read and cached whole, so this bounds what one table lookup allocates.
    /// Tables of qemu-img's defaults are 256 KiB.
    /// </summary>
    public const long MaxTableBytes = 64L << 20;

    /// <summary>Bytes at the start of the file <see cref="TryRead"/> is given: a backing file name must lie within them.</summary>
    public const int MaxHeadBytes = 1 << 20;

    public required uint ClusterBytes { get; init; }

    public required uint TableClusters { get; init; }

    public required uint HeaderClusters { get; init; }

    public required ulong Features { get; init; }

    public required ulong CompatFeatures { get; init; }

    public required ulong AutoclearFeatures { get; init; }

    public required long L1TableOffset { get; init; }

    public required long ImageSize { get; init; }

    public uint BackingNameOffset { get; init; }

    public uint BackingNameSize { get; init; }

    /// <summary>The backing file name as stored (relative to the image's folder, or absolute), or null.</summary>
    public string? BackingFile { get; init; }

    public int ClusterBits => BitOperations.Log2(ClusterBytes);

    /// <summary>Bytes of one L1 or L2 table.</summary>
    public long TableBytes => (long)TableClusters * ClusterBytes;

    /// <summary>Entries of one table.</summary>
    public long TableEntries => TableBytes / FieldLocations.EntrySize;

    /// <summary>Bytes before the first regular cluster: no table or data cluster may start below it.</summary>
    public long HeaderBytes => (long)HeaderClusters * ClusterBytes;

    /// <summary>Guest bytes one L2 table maps.</summary>
    public long L2SpanBytes => TableEntries * ClusterBytes;

    /// <summary>L1 entries the guest size needs.</summary>
    public long RequiredL1Entries => (ImageSize + L2SpanBytes - 1) / L2SpanBytes;

    public bool NeedsCheck => (Features & FieldLocations.FeatureNeedCheck) != 0;

    /// <summary>The backing format the header fixes ("raw" when probing is forbidden), or null to probe it.</summary>
    public string? BackingFormat => BackingFile is not null && (Features & FieldLocations.FeatureBackingFormatNoProbe) != 0 ? "raw" : null;

    public static bool HasMagic(ReadOnlySpan<byte> head) =>
        head.Length >= 4 && BinaryPrimitives.ReadUInt32LittleEndian(head) == FieldLocations.MagicValue;

    /// <summary>
    /// Parses and judges the header at the start of <paramref name="head"/> (the first bytes of the file, up to
    /// <see cref="MaxHeadBytes"/>). On failure <paramref name="error"/> says what is wrong, in one line.
    /// </summary>
    public static bool TryRead(ReadOnlySpan<byte> head, out QedHeader header, out string error)
    {
        header = null!;
        if (head.Length < FieldLocations.HeaderBytes)
        {
            error = $"file is shorter than a QED header ({head.Length} of {FieldLocations.HeaderBytes} bytes)";
            return false;
        }

        if (!HasMagic(head))
        {
            error = "no QED magic";
            return false;
        }

        uint cluster = BinaryPrimitives.ReadUInt32LittleEndian(head[FieldLocations.ClusterSize..]);
        uint table = BinaryPrimitives.ReadUInt32LittleEndian(head[FieldLocations.TableSize..]);
        uint headerClusters = BinaryPrimitives.ReadUInt32LittleEndian(head[FieldLocations.HeaderSize..]);
        ulong features = BinaryPrimitives.ReadUInt64LittleEndian(head[FieldLocations.Features..]);
        ulong l1 = BinaryPrimitives.ReadUInt64LittleEndian(head[FieldLocations.L1TableOffset..]);
        ulong size = BinaryPrimitives.ReadUInt64LittleEndian(head[FieldLocations.ImageSize..]);
        uint nameOffset = BinaryPrimitives.ReadUInt32LittleEndian(head[FieldLocations.BackingFilenameOffset..]);
        uint nameSize = BinaryPrimitives.ReadUInt32LittleEndian(head[FieldLocations.BackingFilenameSize..]);

        if (!BitOperations.IsPow2(cluster) || cluster < 1u << MinClusterBits || cluster > 1u << MaxClusterBits)
        {
            error = $"cluster size {cluster} is not a power of two from 4 KiB to 64 MiB";
            return false;
        }

        if (!BitOperations.IsPow2(table) || table > MaxTableClusters)
        {
            error = $"table size {table} clusters is not a power of two from 1 to 16";
            return false;
        }

        if ((long)table * cluster > MaxTableBytes)
        {
            error = $"tables of {(long)table * cluster} bytes are larger than prlfuse opens ({MaxTableBytes} bytes)";
            return false;
        }

        if (headerClusters == 0)
        {
            error = "header size is 0 clusters";
            return false;
        }

        if ((features & ~FieldLocations.KnownFeatures) != 0)
        {
            error = $"image uses unknown incompatible features 0x{features & ~FieldLocations.KnownFeatures:x}; refused";
            return false;
        }

        ulong headerBytes = (ulong)headerClusters * cluster;
        if (l1 % cluster != 0 || l1 < headerBytes || l1 > long.MaxValue / 2)
        {
            error = $"L1 table offset {l1} is not a cluster boundary past the header";
            return false;
        }

        ulong entries = (ulong)table * cluster / FieldLocations.EntrySize;
        ulong max = entries * entries * cluster;
        if (size % 512 != 0 || size > max || size > long.MaxValue / 2)
        {
            error = $"image size {size} is not a multiple of 512 within what the tables can map ({max} bytes)";
            return false;
        }

        string? backing = null;
        if ((features & FieldLocations.FeatureBackingFile) != 0)
        {
            if (nameSize == 0 || nameSize > MaxBackingNameBytes)
            {
                error = $"backing file name of {nameSize} bytes (1 to {MaxBackingNameBytes} are taken)";
                return false;
            }

            ulong nameEnd = (ulong)nameOffset + nameSize;
            if (nameEnd > headerBytes)
            {
                error = $"backing file name at {nameOffset} (+{nameSize}) lies outside the header's {headerBytes} bytes";
                return false;
            }

            if (nameEnd > (ulong)head.Length)
            {
                error = $"backing file name at {nameOffset} (+{nameSize}) lies past the end of the file or its first {MaxHeadBytes} bytes";
                return false;
            }

            try
            {
                backing = new UTF8Encoding(false, true).GetString(head.Slice((int)nameOffset, (int)nameSize));
            }
            catch (DecoderFallbackException)
            {
                error = "backing file name is not valid UTF-8";
                return false;
            }
        }

        header = new QedHeader
        {
            ClusterBytes = cluster,
            TableClusters = table,
            HeaderClusters = headerClusters,
            Features = features,
            CompatFeatures = BinaryPrimitives.ReadUInt64LittleEndian(head[FieldLocations.CompatFeatures..]),
            AutoclearFeatures = BinaryPrimitives.ReadUInt64LittleEndian(head[FieldLocations.AutoclearFeatures..]),
            L1TableOffset = (long)l1,
            ImageSize = (long)size,
            BackingNameOffset = nameOffset,
            BackingNameSize = nameSize,
            BackingFile = backing,
        };
        error = "";
        return true;
    }

    /// <summary>
    /// Judges the header against the file's length: the L1 table must lie whole within it. Null when it does, else
    /// what is wrong.
    /// </summary>
    public string? CheckAgainstFile(long fileLength) =>
        L1TableOffset > fileLength - TableBytes ? $"L1 table at {L1TableOffset} (+{TableBytes} bytes) lies past the end of the file ({fileLength} bytes)" : null;

    /// <summary>Writes the fixed fields (the first <see cref="FieldLocations.HeaderBytes"/> bytes) to <paramref name="destination"/>.</summary>
    public void WriteTo(Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(destination[FieldLocations.Magic..], FieldLocations.MagicValue);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[FieldLocations.ClusterSize..], ClusterBytes);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[FieldLocations.TableSize..], TableClusters);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[FieldLocations.HeaderSize..], HeaderClusters);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[FieldLocations.Features..], Features);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[FieldLocations.CompatFeatures..], CompatFeatures);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[FieldLocations.AutoclearFeatures..], AutoclearFeatures);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[FieldLocations.L1TableOffset..], (ulong)L1TableOffset);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[FieldLocations.ImageSize..], (ulong)ImageSize);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[FieldLocations.BackingFilenameOffset..], BackingNameOffset);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[FieldLocations.BackingFilenameSize..], BackingNameSize);
    }

    /// <summary>Feature names for info: the known bits set.</summary>
    public IEnumerable<string> FeatureList()
    {
        if ((Features & FieldLocations.FeatureBackingFile) != 0)
        {
            yield return "backing file";
        }

        if (NeedsCheck)
        {
            yield return "need check";
        }

        if ((Features & FieldLocations.FeatureBackingFormatNoProbe) != 0)
        {
            yield return "raw backing";
        }
    }
}
