namespace PrlFuse.Core.Formats.Parallels;

/// <summary>
/// Where each field of a Parallels expandable image lives (shared/specs/parallels.rst), named once: the header's
/// fields, the BAT right after it, and the page size the BAT is written in.
/// </summary>
public static class FieldLocations
{
    public const int Magic = 0;
    public const int Version = 16;
    public const int Heads = 20;
    public const int Cylinders = 24;
    public const int Tracks = 28;
    public const int BatEntries = 32;
    public const int SectorCount = 36;
    public const int InUse = 44;
    public const int DataOffset = 48;
    public const int Flags = 52;
    public const int ExtensionOffset = 56;

    /// <summary>The header's size; the BAT starts here.</summary>
    public const int HeaderSize = 64;

    /// <summary>Bytes of one BAT entry.</summary>
    public const int BatEntrySize = 4;

    /// <summary>
    /// The unit in which a writer writes BAT entries back: a host page, so one entry's update never tears a sector
    /// that other entries share with it and a flush writes only the pages that changed.
    /// </summary>
    public const int BatPageBytes = 4096;

    /// <summary>File offset of BAT entry <paramref name="index"/>.</summary>
    public static long BatEntry(long index) => HeaderSize + (index * BatEntrySize);

    /// <summary>End of a BAT of <paramref name="entries"/> entries (the file offset just past it).</summary>
    public static long BatEnd(long entries) => BatEntry(entries);

    /// <summary>The BAT page (of <see cref="BatPageBytes"/>, counted from the start of the file) holding entry <paramref name="index"/>.</summary>
    public static long BatPageOf(long index) => BatEntry(index) / BatPageBytes;

    /// <summary>How many BAT pages a BAT of <paramref name="entries"/> entries touches (page 0 holds the header too).</summary>
    public static int BatPageCount(long entries) => (int)((BatEnd(entries) + BatPageBytes - 1) / BatPageBytes);

    /// <summary>The entries [first, first + count) that BAT page <paramref name="page"/> holds, of a BAT of <paramref name="entries"/>.</summary>
    public static (int First, int Count, long FileOffset) BatPage(long page, long entries)
    {
        long start = Math.Max(HeaderSize, page * BatPageBytes);
        long end = Math.Min(BatEnd(entries), (page + 1) * BatPageBytes);
        return ((int)((start - HeaderSize) / BatEntrySize), (int)((end - start) / BatEntrySize), start);
    }
}
