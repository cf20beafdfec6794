namespace PrlFuse.Core.Management;

/// <summary>How a management command opens a disk.</summary>
public sealed record ManagementOptions
{
    /// <summary>Let relative image paths in the descriptor lead outside the bundle folder.</summary>
    public bool AllowImagesOutsideBundle { get; init; }

    /// <summary>The effects on the disk's files (images opened, the descriptor stored); tests substitute one that records them all.</summary>
    public BundleFiles Files { get; init; } = BundleFiles.Real;
}
