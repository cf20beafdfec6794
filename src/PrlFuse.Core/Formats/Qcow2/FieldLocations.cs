namespace PrlFuse.Core.Formats.Qcow2;

/// <summary>
/// Where each field of a qcow2 image lives (shared/specs/qcow2-v2.md; QEMU's docs/interop/qcow2.txt for version 3),
/// named once: the header's fields, the header extensions' types, and the bits of L1 and L2 entries.
/// </summary>
public static class FieldLocations
{
    public const int Magic = 0;
    public const int Version = 4;
    public const int BackingFileOffset = 8;
    public const int BackingFileSize = 16;
    public const int ClusterBits = 20;
    public const int Size = 24;
    public const int CryptMethod = 32;
    public const int L1Size = 36;
    public const int L1TableOffset = 40;
    public const int RefcountTableOffset = 48;
    public const int RefcountTableClusters = 56;
    public const int SnapshotCount = 60;
    public const int SnapshotsOffset = 64;

    /// <summary>The whole header of version 2, and where version 3's own fields start.</summary>
    public const int Version2HeaderSize = 72;

    public const int IncompatibleFeatures = 72;
    public const int CompatibleFeatures = 80;
    public const int AutoclearFeatures = 88;
    public const int RefcountOrder = 96;
    public const int HeaderLength = 100;

    /// <summary>The shortest header of version 3: through header_length.</summary>
    public const int Version3MinimumHeaderSize = 104;

    /// <summary>Present only when header_length is larger than this offset.</summary>
    public const int CompressionType = 104;

    /// <summary>A header extension: its type, its data's length, then the data padded to a multiple of 8.</summary>
    public const int ExtensionType = 0;
    public const int ExtensionLength = 4;
    public const int ExtensionData = 8;

    public const uint ExtensionEnd = 0x00000000;
    public const uint ExtensionBackingFormat = 0xE2792ACA;
    public const uint ExtensionFeatureNames = 0x6803F857;
    public const uint ExtensionBitmaps = 0x23852875;
    public const uint ExtensionFullDiskEncryption = 0x0537BE77;
    public const uint ExtensionDataFile = 0x44415441;

    /// <summary>One entry of the feature name table: type, bit, name.</summary>
    public const int FeatureNameEntrySize = 48;
    public const int FeatureNameType = 0;
    public const int FeatureNameBit = 1;
    public const int FeatureName = 2;
    public const int FeatureNameLength = 46;

    /// <summary>The bitmaps extension's fields.</summary>
    public const int BitmapsCount = 0;
    public const int BitmapsDirectorySize = 8;
    public const int BitmapsDirectoryOffset = 16;
    public const int BitmapsExtensionSize = 24;

    /// <summary>Bytes of one L1 entry and of one L2 entry (an extended L2 entry is two: the entry, then its subcluster bitmap).</summary>
    public const int L1EntrySize = 8;
    public const int L2EntrySize = 8;
    public const int ExtendedL2EntrySize = 16;

    /// <summary>Bits 9-55 of an L1 entry: the L2 table's offset; of a standard L2 entry: the host cluster's offset.</summary>
    public const ulong OffsetMask = 0x00FF_FFFF_FFFF_FE00;

    /// <summary>Bit 63 of L1 and L2 entries: the refcount is exactly one.</summary>
    public const ulong CopiedFlag = 1UL << 63;

    /// <summary>Bit 62 of an L2 entry: a compressed cluster.</summary>
    public const ulong CompressedFlag = 1UL << 62;

    /// <summary>Bit 0 of a standard L2 entry (without extended L2 entries): the cluster reads as zeros.</summary>
    public const ulong ZeroFlag = 1;

    /// <summary>Bits of an L1 entry that must be zero (1-8 and 56-62).</summary>
    public const ulong L1ReservedMask = 0x7F00_0000_0000_01FE;

    /// <summary>Bits of a standard L2 entry that must be zero (1-8 and 56-61).</summary>
    public const ulong L2ReservedMask = 0x3F00_0000_0000_01FE;

    /// <summary>Subclusters per cluster with extended L2 entries: bits 0-31 of the bitmap say allocated, 32-63 say zero.</summary>
    public const int SubclustersPerCluster = 32;

    /// <summary>One entry of the snapshot table: its fixed part, then extra data, the ID, the name, padding to 8 bytes.</summary>
    public const int SnapshotL1TableOffset = 0;
    public const int SnapshotL1Size = 8;
    public const int SnapshotIdSize = 12;
    public const int SnapshotNameSize = 14;
    public const int SnapshotDateSeconds = 16;
    public const int SnapshotDateNanoseconds = 20;
    public const int SnapshotVmClockNanoseconds = 24;
    public const int SnapshotVmStateSize = 32;
    public const int SnapshotExtraDataSize = 36;
    public const int SnapshotFixedSize = 40;

    /// <summary>The snapshot entry's extra data (version 3 writes at least the first two): offsets within it.</summary>
    public const int SnapshotExtraVmStateSizeLarge = 0;
    public const int SnapshotExtraDiskSize = 8;
    public const int SnapshotExtraIcount = 16;
}
