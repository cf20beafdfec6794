using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.Images;

namespace PrlFuse.Core.Management;

/// <summary>What a resize did.</summary>
public sealed record ResizeResult(long OldBytes, long NewBytes, int Images);

/// <summary>
/// 'prlfuse resize': gives a disk a new size, offline. Every image of the chain gets the new size
/// (<see cref="ImageResizer"/>), and the descriptor's Disk_size, Cylinders and storage End follow. Order, so that a
/// crash at any point leaves every view as it was or as it is after, and running the command again finishes the job:
/// a grow changes the images first and the descriptor last (an image larger than Disk_size is harmless: the disk ends
/// at Disk_size); a shrink changes the descriptor first and the images after (an image smaller than a Disk_size whose
/// tail it never held reads as zeros there). A shrink is refused, before anything is written, when any image holds
/// data past the new end.
/// </summary>
public static class DiskResizer
{
    /// <summary>
    /// Resizes the disk at <paramref name="path"/> to <paramref name="newBytes"/>. <paramref name="shrink"/> allows a
    /// smaller size. <paramref name="progress"/> gets (image path, clusters moved, clusters to move).
    /// </summary>
    public static ResizeResult Resize(string path, long newBytes, bool shrink, ManagementOptions? options = null, Action<string, long, long>? progress = null)
    {
        options ??= new ManagementOptions();
        if (newBytes <= 0 || newBytes % 512 != 0)
        {
            throw new PrlFuseException(null, $"the new size must be a positive whole number of 512-byte sectors (got {newBytes} bytes)");
        }

        using var disk = LockedImageChain.Open(path, options.AllowImagesOutsideBundle, options.Files.OpenImage);
        long oldBytes = disk.SizeBytes;
        if (disk.Descriptor is { } d)
        {
            var (heads, sectors) = TrackShape(d.Parameters);
            long unit = heads * sectors * 512;
            if (newBytes % unit != 0)
            {
                throw new PrlFuseException(disk.SourcePath, $"the new size must be a whole number of cylinders ({unit / 1024} KiB: {heads} heads x {sectors} sectors), so that Cylinders x Heads x Sectors is Disk_size; try {(newBytes + unit - 1) / unit * unit} bytes");
            }
        }

        bool smaller = newBytes < oldBytes;
        if (smaller && !shrink)
        {
            throw new PrlFuseException(disk.SourcePath, $"{newBytes} bytes is smaller than the disk ({oldBytes} bytes): add --shrink to make it smaller (refused when data lies past the new end)");
        }

        // Everything that can refuse is asked before anything is written.
        foreach (var image in disk.Images)
        {
            if (ImageResizer.WhyNotResize(image.Layer, newBytes) is { } why)
            {
                throw new ImageFormatException(image.Path, $"cannot resize: {why}");
            }

            if (smaller && ImageResizer.WhyNotShrink(image.Layer, newBytes) is { } data)
            {
                throw new ImageFormatException(image.Path, $"cannot shrink to {newBytes} bytes: the image {data}; the disk was not changed");
            }
        }

        if (smaller)
        {
            WriteDescriptor(disk, newBytes, options.Files);
        }

        foreach (var image in disk.Images)
        {
            if (SizeOf(image.Layer) != newBytes)
            {
                ImageResizer.Resize(image.Layer, newBytes, progress is null ? null : (done, total) => progress(image.Path, done, total));
            }
        }

        if (!smaller)
        {
            WriteDescriptor(disk, newBytes, options.Files);
        }

        return new ResizeResult(oldBytes, newBytes, disk.Images.Count);
    }

    /// <summary>The size an image says it has: a header's, or a plain file's length.</summary>
    private static long SizeOf(ImageLayer layer) => layer is ExpandableImage e ? (long)e.Header.SectorCount * 512 : layer.File.Length;

    /// <summary>Disk_size, Cylinders and the storage's End for the new size (the geometry of <see cref="DiskGeometry"/>).</summary>
    internal static DiskDescriptor Resized(DiskDescriptor d, long newBytes)
    {
        long sectors = newBytes / 512;
        var p = d.Parameters;
        var (heads, perTrack) = TrackShape(p);
        var geometry = DiskGeometry.For(sectors, heads, perTrack);
        var storage = d.Storages[0] with { EndSector = d.Storages[0].StartSector + sectors };
        return d with
        {
            Parameters = p with { DiskSizeSectors = sectors, Cylinders = geometry.Cylinders, Heads = heads, Sectors = perTrack },
            Storages = [storage],
        };
    }

    /// <summary>The descriptor's heads and sectors per track, or Parallels' 16 and 32 when they are not usable.</summary>
    private static (long Heads, long Sectors) TrackShape(DiskParameters p) =>
        p.Heads is > 0 and <= 255 && p.Sectors is > 0 and <= 255 ? (p.Heads, p.Sectors) : (DiskGeometry.DefaultHeads, DiskGeometry.DefaultSectors);

    private static void WriteDescriptor(LockedImageChain disk, long newBytes, BundleFiles files)
    {
        if (disk.Descriptor is not { } d || d.DiskSizeBytes == newBytes)
        {
            return;
        }

        files.StoreDescriptor(disk.SourcePath, Resized(d, newBytes));
    }
}
