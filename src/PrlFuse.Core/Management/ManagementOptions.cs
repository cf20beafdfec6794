using PrlFuse.Core.IO;

namespace PrlFuse.Core.Management;

/// <summary>How a management command opens a disk.</summary>
public sealed record ManagementOptions
{
    /// <summary>Let relative image paths in the descriptor lead outside the bundle folder.</summary>
    public bool AllowImagesOutsideBundle { get; init; }

    /// <summary>Opens image files; tests substitute one that records every write and flush.</summary>
    public Func<string, bool, ImageFile> OpenFile { get; init; } = PositionalImageFile.Open;
}
