namespace PrlFuse.Core.Formats.Qed;

/// <summary>
/// Where each field of a QED image lives (shared/specs/qed.txt; QEMU's docs/interop/qed_spec.rst), named once: the
/// header's fields (all little-endian), its feature bits, and the special values of table entries.
/// </summary>
public static class FieldLocations
{
    public const int Magic = 0;
    public const int ClusterSize = 4;
    public const int TableSize = 8;
    public const int HeaderSize = 12;
    public const int Features = 16;
    public const int CompatFeatures = 24;
    public const int AutoclearFeatures = 32;
    public const int L1TableOffset = 40;
    public const int ImageSize = 48;
    public const int BackingFilenameOffset = 56;
    public const int BackingFilenameSize = 60;

    /// <summary>Bytes of the fixed header: every field, the backing file ones included.</summary>
    public const int HeaderBytes = 64;

    /// <summary>"QED\0" read as a little-endian 32-bit number.</summary>
    public const uint MagicValue = 0x00444551;

    /// <summary>The image has a backing file.</summary>
    public const ulong FeatureBackingFile = 0x01;

    /// <summary>The image must be checked before use: set while clusters are allocated, cleared when metadata is durable.</summary>
    public const ulong FeatureNeedCheck = 0x02;

    /// <summary>The backing file is raw: no probing of its format.</summary>
    public const ulong FeatureBackingFormatNoProbe = 0x04;

    /// <summary>Every incompatible feature bit this reader knows.</summary>
    public const ulong KnownFeatures = FeatureBackingFile | FeatureNeedCheck | FeatureBackingFormatNoProbe;

    /// <summary>Bytes of one L1 or L2 entry.</summary>
    public const int EntrySize = 8;

    /// <summary>A table entry that is not yet allocated (reads go to the backing file).</summary>
    public const ulong Unallocated = 0;

    /// <summary>A data cluster entry that reads as zeros and hides the backing file, with no cluster behind it.</summary>
    public const ulong ZeroCluster = 1;
}
