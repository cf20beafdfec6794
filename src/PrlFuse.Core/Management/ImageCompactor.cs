using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.Images;

namespace PrlFuse.Core.Management;

/// <summary>What compacting one image did.</summary>
public sealed record CompactResult(string Path, long ClustersDropped, long ClustersMoved, long BytesBefore, long BytesAfter);

/// <summary>
/// Compacts one expandable image, crash-safely and without changing what any view reads. Clusters that read as zeros
/// are dropped where the chain below reads zeros there too (in the root: always; an overlay's zero cluster over data
/// below keeps hiding it, as a discarded one does, see docs/ARCHITECTURE.md "Holes"). Then the clusters past the first
/// free slots are moved down into them and the file is cut after the last cluster, which also releases leaked space.
/// Order: the dropped entries are made durable before their slots are reused; every copy is durable before an entry
/// points at it; every entry is durable before the file is cut.
/// </summary>
public static class ImageCompactor
{
    /// <summary>
    /// Compacts <paramref name="image"/> over <paramref name="parents"/> (the images below it, nearest first, each
    /// giving its own allocation) of a storage of <paramref name="storageBytes"/>. <paramref name="progress"/> gets
    /// (clusters looked at or moved, of how many) for each phase.
    /// </summary>
    public static CompactResult Compact(ExpandableImage image, ImageLayer[] parents, long storageBytes, Action<string, long, long>? progress = null)
    {
        var file = image.File;
        var bat = image.Bat;
        long cluster = image.ClusterBytes;
        long before = file.Length;
        var below = parents.Length == 0 ? null : new StorageChain(0, 0, storageBytes, parents, cache: null, writable: false);

        // Phase 1: zero clusters that nothing below needs hidden.
        var dropped = new List<long>();
        var buffer = new byte[(int)cluster];
        long allocated = bat.CountAllocated();
        long seen = 0;
        for (long i = bat.FindNext(0, allocated: true); i < bat.Count; i = bat.FindNext(i + 1, allocated: true))
        {
            progress?.Invoke("scan", ++seen, allocated);
            file.ReadZeroFilled(buffer, bat.GetHostOffset(i));
            if (buffer.AsSpan().ContainsAnyExcept((byte)0))
            {
                continue;
            }

            if (below is not null && i * cluster < storageBytes)
            {
                var part = buffer.AsSpan(0, (int)Math.Min(cluster, storageBytes - (i * cluster)));
                below.Read(part, i * cluster);
                if (part.ContainsAnyExcept((byte)0))
                {
                    continue;
                }
            }

            dropped.Add(i);
        }

        foreach (long i in dropped)
        {
            bat.SetEntry(i, 0);
        }

        if (dropped.Count > 0)
        {
            ImageResizer.WriteBatPages(image, dropped);
            file.Flush(dataOnly: true);
        }

        // Phase 2: the clusters past the first free slots move down into them.
        long moved = MoveDown(image, progress);
        long end = UsedEnd(image);
        if (end < file.Length)
        {
            file.SetLength(end);
        }

        file.Flush(dataOnly: false);
        return new CompactResult(image.Path, dropped.Count, moved, before, file.Length);
    }

    /// <summary>Space in use: the data area's start, every cluster, and the extension's clusters (never moved).</summary>
    private static long UsedEnd(ExpandableImage image)
    {
        long end = Math.Max(image.DataOffsetBytes, image.Bat.UsedEnd());
        foreach (long slot in PinnedSlots(image))
        {
            end = Math.Max(end, slot + image.ClusterBytes);
        }

        return end;
    }

    /// <summary>Clusters the format extension holds (its own, a dirty bitmap's): they stay where they are.</summary>
    private static IEnumerable<long> PinnedSlots(ExpandableImage image)
    {
        if (image.Header.ExtensionOffsetSectors != 0)
        {
            yield return (long)image.Header.ExtensionOffsetSectors * 512;
        }

        if (image.Extension?.DirtyBitmap is { } bitmap)
        {
            foreach (ulong e in bitmap.L1Table.Where(e => e > 1))
            {
                yield return (long)e * 512;
            }
        }
    }

    private static long MoveDown(ExpandableImage image, Action<string, long, long>? progress)
    {
        var bat = image.Bat;
        var file = image.File;
        long cluster = image.ClusterBytes;
        long dataOff = image.DataOffsetBytes;

        // Slot k is at dataOff + k * cluster; who holds each.
        var owner = new Dictionary<long, long>();
        for (long i = bat.FindNext(0, allocated: true); i < bat.Count; i = bat.FindNext(i + 1, allocated: true))
        {
            owner[(bat.GetHostOffset(i) - dataOff) / cluster] = i;
        }

        var pinned = PinnedSlots(image).Where(s => s >= dataOff).Select(s => (s - dataOff) / cluster).ToHashSet();

        // The first slots, enough for every cluster, skipping pinned ones: the free ones among them take the clusters
        // that lie past them, highest first.
        var free = new List<long>();
        long needed = owner.Count;
        long slot = 0;
        for (long placed = 0; placed < needed; slot++)
        {
            if (pinned.Contains(slot))
            {
                continue;
            }

            if (!owner.ContainsKey(slot))
            {
                free.Add(slot);
            }

            placed++;
        }

        var movers = owner.Where(kv => kv.Key >= slot).OrderByDescending(kv => kv.Key).Select(kv => kv.Value).ToList();
        if (movers.Count == 0)
        {
            return 0;
        }

        var buffer = new byte[(int)Math.Min(cluster, 1 << 20)];
        for (int k = 0; k < movers.Count; k++)
        {
            ImageResizer.CopyCluster(file, bat.GetHostOffset(movers[k]), dataOff + (free[k] * cluster), cluster, buffer);
            progress?.Invoke("move", k + 1, movers.Count);
        }

        file.Flush(dataOnly: true);
        for (int k = 0; k < movers.Count; k++)
        {
            bat.SetEntry(movers[k], bat.EntryForHostOffset(dataOff + (free[k] * cluster)));
        }

        ImageResizer.WriteBatPages(image, movers);
        file.Flush(dataOnly: true);
        return movers.Count;
    }
}
