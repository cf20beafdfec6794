using System.Collections.Immutable;

namespace PrlFuse.Core.Descriptor;

public enum ImageType
{
    /// <summary>A raw file.</summary>
    Plain,

    /// <summary>A Parallels expandable image.</summary>
    Compressed,
}

/// <summary>
/// Elements the model does not interpret, kept as their XML text (immutable) in document order so a rewrite of
/// the descriptor puts them back. <see cref="After"/> names the known element they followed (null: first).
/// </summary>
public readonly record struct ExtraElement(string Xml, string? After);

public sealed record DiskParameters(
    long DiskSizeSectors,
    long Cylinders,
    long Heads,
    long Sectors,
    long Padding,
    ImmutableArray<ExtraElement> Extras);

public sealed record ImageDescriptor(Guid Guid, ImageType Type, string File, ImmutableArray<ExtraElement> Extras);

public sealed record StorageDescriptor(
    long StartSector,
    long EndSector,
    long BlockSizeSectors,
    ImmutableArray<ImageDescriptor> Images,
    ImmutableArray<ExtraElement> Extras)
{
    public long LengthBytes => (EndSector - StartSector) * 512;

    public ImageDescriptor? FindImage(Guid guid)
    {
        foreach (var image in Images)
        {
            if (image.Guid == guid)
            {
                return image;
            }
        }

        return null;
    }
}

public sealed record ShotDescriptor(Guid Guid, Guid ParentGuid, ImmutableArray<ExtraElement> Extras);

public sealed record SnapshotsDescriptor(Guid? TopGuid, ImmutableArray<ShotDescriptor> Shots, ImmutableArray<ExtraElement> Extras);

/// <summary>
/// DiskDescriptor.xml as an immutable model (shared/specs/prl-xml.rst). Elements it does not interpret are kept
/// so <see cref="DescriptorWriter"/> can write the file back without losing them.
/// </summary>
public sealed record DiskDescriptor(
    string RootElementName,
    string Version,
    DiskParameters Parameters,
    ImmutableArray<StorageDescriptor> Storages,
    SnapshotsDescriptor Snapshots,
    ImmutableArray<ExtraElement> Extras,
    ImmutableArray<ExtraElement> StorageDataExtras)
{
    /// <summary>The predefined GUID of the top snapshot when there is no TopGUID.</summary>
    public static readonly Guid PredefinedTopGuid = new("5fbaabe3-6958-40ff-92a7-860e329aab41");

    /// <summary>A GUID backup software uses; never the top snapshot.</summary>
    public static readonly Guid BackupGuid = new("704718e1-2314-44c8-9087-d78ed36b0f4e");

    public long DiskSizeBytes => Parameters.DiskSizeSectors * 512;

    /// <summary>A GUID as DiskDescriptor.xml writes it: braces, lower case.</summary>
    public static string FormatGuid(Guid guid) => guid.ToString("B");
}
