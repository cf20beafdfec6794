using System.Buffers.Binary;

namespace PrlFuse.Core.Formats.Parallels;

/// <summary>Which of the two expandable-image magics a header carries; it decides the unit of BAT entries.</summary>
public enum ParallelsMagic
{
    /// <summary>"WithoutFreeSpace": BAT entries count sectors, nb_sectors is 32-bit.</summary>
    WithoutFreeSpace,

    /// <summary>"WithouFreSpacExt": BAT entries count clusters.</summary>
    WithouFreSpacExt,
}

/// <summary>
/// The 64-byte header of a Parallels expandable image (shared/specs/parallels.rst), parsed as a pure function.
/// Values are as stored, except <see cref="SectorCount"/>, which already applies the 32-bit rule of the old magic.
/// </summary>
public readonly record struct ParallelsHeader(
    ParallelsMagic Magic,
    uint Version,
    uint Heads,
    uint Cylinders,
    uint ClusterSectors,
    uint BatEntries,
    ulong SectorCount,
    uint InUse,
    uint DataOffsetSectors,
    uint Flags,
    ulong ExtensionOffsetSectors)
{

    public const uint SupportedVersion = 2;

    /// <summary>"Ynot": the image is open read-write, or was not closed cleanly. Every other value means clean.</summary>
    public const uint InUseOpen = 0x746F6E59;

    /// <summary>What the spec says a clean close writes ("v2.1").</summary>
    public const uint InUseClosed = 0x312E3276;

    public const uint FlagEmpty = 1;

    /// <summary>QEMU's cap: larger cluster sizes overflow its arithmetic and no real image has them.</summary>
    public const uint MaxClusterSectors = int.MaxValue / 513;

    /// <summary>QEMU's cap on the BAT ("Catalog too large").</summary>
    public const uint MaxBatEntries = int.MaxValue / 4;

    public static ReadOnlySpan<byte> MagicOld => "WithoutFreeSpace"u8;

    public static ReadOnlySpan<byte> MagicExt => "WithouFreSpacExt"u8;

    public long ClusterBytes => (long)ClusterSectors * 512;

    public bool IsUnclean => InUse == InUseOpen;

    public bool IsEmpty => (Flags & FlagEmpty) != 0;

    /// <summary>Bytes one BAT unit stands for: a sector for the old magic, a cluster for the new.</summary>
    public long BatUnitBytes => Magic == ParallelsMagic.WithoutFreeSpace ? 512 : ClusterBytes;

    /// <summary>The smallest valid data offset in sectors: header plus BAT, rounded to a sector (and to a cluster for the new magic).</summary>
    public long MinimumDataOffsetSectors
    {
        get
        {
            long sectors = (FieldLocations.BatEnd(BatEntries) + 511) / 512;
            if (Magic == ParallelsMagic.WithouFreSpacExt && ClusterSectors != 0)
            {
                sectors = (sectors + ClusterSectors - 1) / ClusterSectors * ClusterSectors;
            }

            return sectors;
        }
    }

    /// <summary>True when <paramref name="data"/> starts with one of the two magics.</summary>
    public static bool HasMagic(ReadOnlySpan<byte> data) =>
        data.Length >= 16 && (data[..16].SequenceEqual(MagicOld) || data[..16].SequenceEqual(MagicExt));

    /// <summary>Parses and checks the fields that need no file size. Hostile input is assumed.</summary>
    public static bool TryRead(ReadOnlySpan<byte> data, out ParallelsHeader header, out string error)
    {
        header = default;
        if (data.Length < FieldLocations.HeaderSize)
        {
            error = $"file is shorter than a Parallels header ({data.Length} of {FieldLocations.HeaderSize} bytes)";
            return false;
        }

        ParallelsMagic magic;
        if (data[..16].SequenceEqual(MagicOld))
        {
            magic = ParallelsMagic.WithoutFreeSpace;
        }
        else if (data[..16].SequenceEqual(MagicExt))
        {
            magic = ParallelsMagic.WithouFreSpacExt;
        }
        else
        {
            error = "not a Parallels expandable image (no WithoutFreeSpace or WithouFreSpacExt magic)";
            return false;
        }

        uint version = BinaryPrimitives.ReadUInt32LittleEndian(data[FieldLocations.Version..]);
        uint tracks = BinaryPrimitives.ReadUInt32LittleEndian(data[FieldLocations.Tracks..]);
        uint batEntries = BinaryPrimitives.ReadUInt32LittleEndian(data[FieldLocations.BatEntries..]);
        ulong sectors = BinaryPrimitives.ReadUInt64LittleEndian(data[FieldLocations.SectorCount..]);
        if (magic == ParallelsMagic.WithoutFreeSpace)
        {
            sectors &= 0xFFFF_FFFF;
        }

        if (version != SupportedVersion)
        {
            error = $"unsupported Parallels image version {version} (only 2 exists)";
            return false;
        }

        if (tracks == 0)
        {
            error = "cluster size (tracks) is 0";
            return false;
        }

        if (tracks > MaxClusterSectors)
        {
            error = $"cluster size of {tracks} sectors is too big";
            return false;
        }

        if (batEntries > MaxBatEntries)
        {
            error = $"BAT of {batEntries} entries is too large";
            return false;
        }

        header = new ParallelsHeader(
            magic,
            version,
            BinaryPrimitives.ReadUInt32LittleEndian(data[FieldLocations.Heads..]),
            BinaryPrimitives.ReadUInt32LittleEndian(data[FieldLocations.Cylinders..]),
            tracks,
            batEntries,
            sectors,
            BinaryPrimitives.ReadUInt32LittleEndian(data[FieldLocations.InUse..]),
            BinaryPrimitives.ReadUInt32LittleEndian(data[FieldLocations.DataOffset..]),
            BinaryPrimitives.ReadUInt32LittleEndian(data[FieldLocations.Flags..]),
            BinaryPrimitives.ReadUInt64LittleEndian(data[FieldLocations.ExtensionOffset..]));
        error = string.Empty;
        return true;
    }

    /// <summary>Writes this header in its on-disk form.</summary>
    public void WriteTo(Span<byte> data)
    {
        data[..FieldLocations.HeaderSize].Clear();
        (Magic == ParallelsMagic.WithoutFreeSpace ? MagicOld : MagicExt).CopyTo(data);
        BinaryPrimitives.WriteUInt32LittleEndian(data[FieldLocations.Version..], Version);
        BinaryPrimitives.WriteUInt32LittleEndian(data[FieldLocations.Heads..], Heads);
        BinaryPrimitives.WriteUInt32LittleEndian(data[FieldLocations.Cylinders..], Cylinders);
        BinaryPrimitives.WriteUInt32LittleEndian(data[FieldLocations.Tracks..], ClusterSectors);
        BinaryPrimitives.WriteUInt32LittleEndian(data[FieldLocations.BatEntries..], BatEntries);
        BinaryPrimitives.WriteUInt64LittleEndian(data[FieldLocations.SectorCount..], SectorCount);
        BinaryPrimitives.WriteUInt32LittleEndian(data[FieldLocations.InUse..], InUse);
        BinaryPrimitives.WriteUInt32LittleEndian(data[FieldLocations.DataOffset..], DataOffsetSectors);
        BinaryPrimitives.WriteUInt32LittleEndian(data[FieldLocations.Flags..], Flags);
        BinaryPrimitives.WriteUInt64LittleEndian(data[FieldLocations.ExtensionOffset..], ExtensionOffsetSectors);
    }

    /// <summary>The in_use field as text: "Ynot", a creator tag such as "pd17", or a number.</summary>
    public string InUseText
    {
        get
        {
            Span<byte> b = stackalloc byte[4];
            BinaryPrimitives.WriteUInt32LittleEndian(b, InUse);
            foreach (byte c in b)
            {
                if (c < 0x20 || c > 0x7E)
                {
                    return $"0x{InUse:x8}";
                }
            }

            return System.Text.Encoding.ASCII.GetString(b);
        }
    }
}
