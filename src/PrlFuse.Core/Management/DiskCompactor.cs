namespace PrlFuse.Core.Management;

/// <summary>What compacting a disk did, image by image (plain images are left as they are).</summary>
public sealed record DiskCompactResult(IReadOnlyList<CompactResult> Images)
{
    public long BytesBefore => Images.Sum(i => i.BytesBefore);

    public long BytesAfter => Images.Sum(i => i.BytesAfter);
}

/// <summary>
/// 'prlfuse compact': every expandable image of a disk compacted (<see cref="ImageCompactor"/>), offline, each on its
/// own: no view changes at any step, so the images can be done in any order and a crash leaves nothing to finish.
/// </summary>
public static class DiskCompactor
{
    /// <summary>Compacts the disk at <paramref name="path"/>; <paramref name="progress"/> gets (image path, phase, done, total).</summary>
    public static DiskCompactResult Compact(string path, ManagementOptions? options = null, Action<string, string, long, long>? progress = null)
    {
        options ??= new ManagementOptions();
        using var disk = LockedImageChain.Open(path, options.AllowImagesOutsideBundle, options.Files.OpenImage);
        long storageBytes = disk.SizeBytes;
        var results = new List<CompactResult>();
        foreach (var image in disk.Images)
        {
            if (image.Expandable is { } expandable)
            {
                results.Add(ImageCompactor.Compact(expandable, disk.ParentsOf(image), storageBytes, progress is null ? null : (phase, done, total) => progress(image.Path, phase, done, total)));
            }
        }

        return new DiskCompactResult(results);
    }
}
