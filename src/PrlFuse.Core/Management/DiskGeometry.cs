namespace PrlFuse.Core.Management;

/// <summary>
/// Cylinders, heads and sectors per track of a disk of a given size, as Parallels Desktop writes them (the samples in
/// shared/samples): the descriptor always has 16 heads and 32 sectors, Cylinders = Disk_size / 512. An image header
/// keeps the heads and sectors per track it was made with (Parallels wrote 63 in the headers of some split storages),
/// so a resize recomputes only its cylinders.
/// </summary>
public readonly record struct DiskGeometry(long Cylinders, long Heads, long Sectors)
{
    public const long DefaultHeads = 16;
    public const long DefaultSectors = 32;

    /// <summary>The geometry for <paramref name="sectors"/> with the given heads and sectors per track (cylinders rounded down).</summary>
    public static DiskGeometry For(long sectors, long heads = DefaultHeads, long sectorsPerTrack = DefaultSectors) =>
        new(sectors / (heads * sectorsPerTrack), heads, sectorsPerTrack);

    /// <summary>
    /// A header's geometry for <paramref name="newSectors"/>: its heads, and the sectors per track its old cylinders
    /// imply for <paramref name="oldSectors"/> (16 and 32, as QEMU writes, when the old values say nothing).
    /// </summary>
    public static DiskGeometry ForImage(uint heads, uint cylinders, ulong oldSectors, long newSectors)
    {
        long h = heads is > 0 and <= 255 ? heads : DefaultHeads;
        long perTrack = cylinders > 0 ? (long)(oldSectors / ((ulong)h * cylinders)) : 0;
        if (perTrack is < 1 or > 255)
        {
            perTrack = DefaultSectors;
        }

        return For(newSectors, h, perTrack);
    }
}
