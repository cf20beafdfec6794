using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.Images;
using PrlFuse.Core.IO;

namespace PrlFuse.Core.Management;

/// <summary>
/// Gives one image a new virtual size, crash-safely: at every point a crash can stop it, the image reads as it did
/// (with its old size) or as it does after (the old content, then zeros). A plain image grows by extending its file.
/// An expandable image whose BAT must grow moves the data clusters that lie where the larger BAT goes: each is copied
/// to the end of the file and made durable, its BAT entry is repointed and made durable, and only then is the old place
/// overwritten by the new BAT's (zero) entries; the header with the new size comes last, in one sector-sized write.
/// A shrink first checks (<see cref="WhyNotShrink"/>) that nothing the image holds lies past the new end.
/// </summary>
public static class ImageResizer
{
    private const int CopyChunkBytes = 1 << 20;

    /// <summary>Why <paramref name="layer"/> cannot take <paramref name="newBytes"/> at all (format limits), or null.</summary>
    public static string? WhyNotResize(ImageLayer layer, long newBytes)
    {
        if (layer is not ExpandableImage image)
        {
            return null;
        }

        var h = image.Header;
        long sectors = newBytes / 512;
        long entries = (sectors + h.ClusterSectors - 1) / h.ClusterSectors;
        if (entries > ParallelsHeader.MaxBatEntries)
        {
            return $"a BAT of {entries} clusters is more than a Parallels image can have";
        }

        if (h.Magic == ParallelsMagic.WithoutFreeSpace && sectors > uint.MaxValue)
        {
            return "a WithoutFreeSpace image holds at most 2 TiB";
        }

        return image.Extension is not null || h.ExtensionOffsetSectors != 0
            ? "the image has a format extension (a dirty bitmap), which a resize would make untrue; remove it first (qemu-img check -r all drops it)"
            : null;
    }

    /// <summary>
    /// Why <paramref name="layer"/> cannot shrink to <paramref name="newBytes"/>: it holds data past the new end (a
    /// cluster allocated wholly past it, or nonzero bytes past it in the cluster it ends in). Null when it can.
    /// </summary>
    public static string? WhyNotShrink(ImageLayer layer, long newBytes)
    {
        if (layer is PlainImage plain)
        {
            long end = Math.Min(plain.File.Length, plain.VirtualSize);
            long at = FirstNonzero(plain.File, newBytes, end);
            return at < 0 ? null : $"holds data at byte {at}, past the new end";
        }

        var image = (ExpandableImage)layer;
        long cluster = image.ClusterBytes;
        long firstPast = (newBytes + cluster - 1) / cluster;
        long next = image.Bat.FindNext(firstPast, allocated: true);
        if (next < image.Bat.Count)
        {
            return $"holds data in cluster {next} (byte {next * cluster}), past the new end";
        }

        if (newBytes % cluster != 0 && image.Bat.GetHostOffset(newBytes / cluster) is var host and not 0)
        {
            long within = newBytes % cluster;
            long visible = Math.Min(cluster, image.VirtualSize - (newBytes - within));
            long at = FirstNonzero(image.File, host + within, host + Math.Max(within, visible));
            if (at >= 0)
            {
                return $"holds data at byte {newBytes + (at - host - within)}, past the new end";
            }
        }

        return null;
    }

    /// <summary>
    /// Resizes <paramref name="layer"/> to <paramref name="newBytes"/> (a whole number of sectors). A shrink must have been
    /// checked with <see cref="WhyNotShrink"/>. <paramref name="progress"/> gets (clusters moved, clusters to move).
    /// </summary>
    public static void Resize(ImageLayer layer, long newBytes, Action<long, long>? progress = null)
    {
        if (layer is PlainImage plain)
        {
            ResizePlain(plain.File, newBytes);
            return;
        }

        var image = (ExpandableImage)layer;
        if (WhyNotResize(image, newBytes) is { } why)
        {
            throw new ImageFormatException(image.Path, $"cannot resize: {why}");
        }

        long newSectors = newBytes / 512;
        if (newSectors < (long)image.Header.SectorCount)
        {
            Shrink(image, newSectors);
        }
        else
        {
            Grow(image, newSectors, progress);
        }
    }

    private static void ResizePlain(ImageFile file, long newBytes)
    {
        if (file.Length == newBytes)
        {
            return;
        }

        file.SetLength(newBytes);
        file.Flush(dataOnly: false);
    }

    private static void Shrink(ExpandableImage image, long newSectors)
    {
        var h = image.Header;
        uint entries = (uint)((newSectors + h.ClusterSectors - 1) / h.ClusterSectors);
        var geometry = DiskGeometry.ForImage(h.Heads, h.Cylinders, h.SectorCount, newSectors);

        // The entries past the new BAT are all zero (checked), so the header alone shrinks the image; data_off is written
        // out (0 would mean "right after the now smaller BAT" and move every cluster's place).
        WriteHeader(image, h with
        {
            SectorCount = (ulong)newSectors,
            BatEntries = entries,
            Cylinders = (uint)geometry.Cylinders,
            DataOffsetSectors = (uint)(image.DataOffsetBytes / 512),
        });
    }

    private static void Grow(ExpandableImage image, long newSectors, Action<long, long>? progress)
    {
        var h = image.Header;
        var file = image.File;
        var bat = image.Bat;
        long cluster = image.ClusterBytes;
        long oldBytes = (long)h.SectorCount * 512;
        long visibleClusters = (oldBytes + cluster - 1) / cluster;

        // What lies past the old end in this image must read as zeros in the new tail. It is not visible before the
        // header changes, so clearing it in place is safe at any moment.
        ClearPastOldEnd(image, oldBytes, visibleClusters);

        long newEntries = (newSectors + h.ClusterSectors - 1) / h.ClusterSectors;
        long dataOff = image.DataOffsetBytes;
        long newDataOff = dataOff;
        if (newEntries > h.BatEntries)
        {
            long minimum = (FieldLocations.BatEnd(newEntries) + 511) / 512 * 512;
            if (h.Magic == ParallelsMagic.WithouFreSpacExt)
            {
                minimum = (minimum + cluster - 1) / cluster * cluster;
            }

            // Every cluster keeps its place relative to the data area's start: data_off moves by whole clusters.
            if (minimum > dataOff)
            {
                newDataOff = dataOff + ((minimum - dataOff + cluster - 1) / cluster * cluster);
            }

            MoveClustersOutOf(image, dataOff, newDataOff, progress);

            // The new entries must read as zeros. The space they take is past the old BAT, which the old header does
            // not read, and holds no cluster any more.
            long oldBatEnd = FieldLocations.BatEnd(h.BatEntries);
            long newBatEnd = FieldLocations.BatEnd(newEntries);
            if (file.Length < newDataOff)
            {
                file.SetLength(newDataOff);
            }

            WriteZeros(file, oldBatEnd, Math.Min(newBatEnd, file.Length) - oldBatEnd);
            file.Flush(dataOnly: false);
        }

        var geometry = DiskGeometry.ForImage(h.Heads, h.Cylinders, h.SectorCount, newSectors);
        WriteHeader(image, h with
        {
            SectorCount = (ulong)newSectors,
            BatEntries = (uint)Math.Max(newEntries, h.BatEntries),
            Cylinders = (uint)Math.Min(geometry.Cylinders, uint.MaxValue),
            DataOffsetSectors = (uint)(newDataOff / 512),
        });
    }

    /// <summary>
    /// Zeros the bytes past the old end in the last visible cluster, and drops entries past it (a BAT larger than the
    /// disk may have some), each made durable before the header can show them.
    /// </summary>
    private static void ClearPastOldEnd(ExpandableImage image, long oldBytes, long visibleClusters)
    {
        var bat = image.Bat;
        long cluster = image.ClusterBytes;
        bool changed = false;
        if (oldBytes % cluster != 0 && bat.GetHostOffset(visibleClusters - 1) is var host and not 0)
        {
            long within = oldBytes % cluster;
            if (FirstNonzero(image.File, host + within, host + cluster) >= 0)
            {
                WriteZeros(image.File, host + within, cluster - within);
                changed = true;
            }
        }

        var dropped = new List<long>();
        for (long i = bat.FindNext(visibleClusters, allocated: true); i < bat.Count; i = bat.FindNext(i + 1, allocated: true))
        {
            bat.SetEntry(i, 0);
            dropped.Add(i);
        }

        if (dropped.Count > 0)
        {
            WriteBatPages(image, dropped);
            changed = true;
        }

        if (changed)
        {
            image.File.Flush(dataOnly: true);
        }
    }

    /// <summary>
    /// Moves every cluster in [<paramref name="from"/>, <paramref name="to"/>) to the end of the file: all copies made
    /// durable, then all entries repointed and made durable. Until the second flush an entry points at its old place,
    /// which nothing writes before it.
    /// </summary>
    private static void MoveClustersOutOf(ExpandableImage image, long from, long to, Action<long, long>? progress)
    {
        var bat = image.Bat;
        var file = image.File;
        long cluster = image.ClusterBytes;
        var inTheWay = new List<long>();
        for (long i = bat.FindNext(0, allocated: true); i < bat.Count; i = bat.FindNext(i + 1, allocated: true))
        {
            long host = bat.GetHostOffset(i);
            if (host >= from && host < to)
            {
                inTheWay.Add(i);
            }
        }

        if (inTheWay.Count == 0)
        {
            return;
        }

        // Past the last cluster the BAT points at lies nothing of the disk: at most the copies of a run that was killed
        // before its BAT pages were written, which this run makes again in the same places instead of after them.
        long used = Math.Max(bat.UsedEnd(), to);
        long next = from + ((used - from + cluster - 1) / cluster * cluster);
        if ((next + (inTheWay.Count * cluster)) / bat.UnitBytes > uint.MaxValue)
        {
            throw new ImageFormatException(image.Path, "cannot resize: the moved clusters would lie past what the BAT can address");
        }

        var buffer = new byte[(int)Math.Min(cluster, CopyChunkBytes)];
        var targets = new long[inTheWay.Count];
        for (int k = 0; k < inTheWay.Count; k++)
        {
            targets[k] = next;
            CopyCluster(file, bat.GetHostOffset(inTheWay[k]), next, cluster, buffer);
            next += cluster;
            progress?.Invoke(k + 1, inTheWay.Count);
        }

        file.Flush(dataOnly: false);
        for (int k = 0; k < inTheWay.Count; k++)
        {
            bat.SetEntry(inTheWay[k], bat.EntryForHostOffset(targets[k]));
        }

        WriteBatPages(image, inTheWay);
        file.Flush(dataOnly: true);
    }

    internal static void CopyCluster(ImageFile file, long from, long to, long cluster, byte[] buffer)
    {
        for (long done = 0; done < cluster; done += buffer.Length)
        {
            var span = buffer.AsSpan(0, (int)Math.Min(buffer.Length, cluster - done));
            file.ReadZeroFilled(span, from + done);
            file.Write(span, to + done);
        }
    }

    /// <summary>Writes the BAT pages holding <paramref name="indices"/> from the in-memory table (no flush).</summary>
    internal static void WriteBatPages(ExpandableImage image, IEnumerable<long> indices)
    {
        var buffer = new byte[FieldLocations.BatPageBytes];
        foreach (long page in indices.Select(FieldLocations.BatPageOf).Distinct().Order())
        {
            var (first, count, offset) = FieldLocations.BatPage(page, image.Bat.Count);
            image.Bat.WriteEntries(buffer, first, count);
            image.File.Write(buffer.AsSpan(0, count * FieldLocations.BatEntrySize), offset);
        }
    }

    /// <summary>Writes <paramref name="header"/> (one write inside the first sector) and makes it durable.</summary>
    internal static void WriteHeader(ExpandableImage image, ParallelsHeader header)
    {
        Span<byte> bytes = stackalloc byte[FieldLocations.HeaderSize];
        header.WriteTo(bytes);
        image.File.Write(bytes, 0);
        image.File.Flush(dataOnly: false);
        image.ReplaceHeader(header);
    }

    internal static void WriteZeros(ImageFile file, long offset, long length)
    {
        var zeros = new byte[(int)Math.Min(Math.Max(length, 0), CopyChunkBytes)];
        for (long done = 0; done < length; done += zeros.Length)
        {
            file.Write(zeros.AsSpan(0, (int)Math.Min(zeros.Length, length - done)), offset + done);
        }
    }

    /// <summary>The file offset of the first nonzero byte in [<paramref name="from"/>, <paramref name="to"/>), or -1.</summary>
    internal static long FirstNonzero(ImageFile file, long from, long to)
    {
        to = Math.Min(to, file.Length);
        var buffer = new byte[CopyChunkBytes];
        for (long at = from; at < to; at += buffer.Length)
        {
            var span = buffer.AsSpan(0, (int)Math.Min(buffer.Length, to - at));
            file.ReadZeroFilled(span, at);
            int i = span.IndexOfAnyExcept((byte)0);
            if (i >= 0)
            {
                return at + i;
            }
        }

        return -1;
    }
}
