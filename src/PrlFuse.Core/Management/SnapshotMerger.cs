using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Images;

namespace PrlFuse.Core.Management;

/// <summary>What a long operation reports as it goes: the step in words, bytes copied so far, bytes it will copy.</summary>
public delegate void OperationProgress(string step, long done, long total);

/// <summary>
/// Deleting snapshots of an offline Parallels bundle, and merging all of them into one image, so that every view that
/// remains reads byte for byte as before. The order of effects makes every crash recoverable:
/// <list type="number">
/// <item>The snapshot to delete is marked (<see cref="IntentMark"/>) and the descriptor stored (atomic, durable).</item>
/// <item>Its data is merged, written only where no remaining view reads it from: down into the snapshot's own image
/// (its one child's clusters, as ploop does) or up into each child (the clusters the child lacks). Images are flushed and
/// closed cleanly: data and tables durable.</item>
/// <item>The descriptor without the snapshot is stored: the one pointer switch.</item>
/// <item>Images no descriptor names any more are unlinked, last.</item>
/// </list>
/// A crash before step 1 changes nothing; between 1 and 3 the next operation (or 'check --repair') repairs the image
/// being written (it was not closed cleanly; its views are whole) and deletes the marked snapshot again from the start,
/// which is idempotent; after 3 at worst an unlinked-to-be image file is left in the folder.
/// </summary>
public static class SnapshotMerger
{
    /// <summary>Bytes copied between flushes, so an interrupted merge redoes little and the dirty tables stay small.</summary>
    private const long FlushEveryBytes = 256L << 20;

    /// <summary>Deletes snapshot <paramref name="guid"/> (any but the current state) of the bundle <paramref name="disk"/>.</summary>
    public static void Delete(string disk, Guid guid, BundleFiles? files = null, OperationProgress? progress = null)
    {
        files ??= BundleFiles.Real;
        string descriptorPath = MergingDisk.DescriptorOf(disk);
        FinishInterrupted(descriptorPath, files, progress);
        var tree = SnapshotTree.Build(DescriptorParser.ParseFile(descriptorPath), descriptorPath);
        if (!tree.Contains(guid))
        {
            throw new PrlFuseException(descriptorPath, $"no snapshot {DiskDescriptor.FormatGuid(guid)}; 'prlfuse snapshot list' lists them");
        }

        if (guid == tree.Top)
        {
            throw new PrlFuseException(descriptorPath, $"snapshot {DiskDescriptor.FormatGuid(guid)} is the current state, which cannot be deleted; 'prlfuse snapshot switch' makes another snapshot current");
        }

        DeleteOne(descriptorPath, files, guid, progress);
    }

    /// <summary>Merges every snapshot of <paramref name="disk"/> into one image that holds the current state. Returns how many were merged.</summary>
    public static int Merge(string disk, BundleFiles? files = null, OperationProgress? progress = null)
    {
        files ??= BundleFiles.Real;
        string descriptorPath = MergingDisk.DescriptorOf(disk);
        FinishInterrupted(descriptorPath, files, progress);
        var descriptor = DescriptorParser.ParseFile(descriptorPath);
        var tree = SnapshotTree.Build(descriptor, descriptorPath);
        var doomed = tree.Snapshots.Where(g => g != tree.Top).ToList();
        if (doomed.Count == 0)
        {
            return 0;
        }

        // Every doomed snapshot is marked at once: whatever stops the merge, the next operation finishes all of it.
        using (MergingDisk.Open(descriptorPath, files, repairUnclean: false))
        {
            files.StoreDescriptor(descriptorPath, IntentMark.Mark(descriptor, doomed));
        }

        FinishInterrupted(descriptorPath, files, progress);
        return doomed.Count;
    }

    /// <summary>
    /// Deletes, to the end, every snapshot an interrupted operation marked (<see cref="IntentMark"/>); the images it was
    /// writing are repaired first. Every operation starts with this; 'check --repair' runs it too. Returns how many.
    /// </summary>
    public static int FinishInterrupted(string descriptorPath, BundleFiles? files = null, OperationProgress? progress = null)
    {
        files ??= BundleFiles.Real;
        int finished = 0;
        while (true)
        {
            var descriptor = DescriptorParser.ParseFile(descriptorPath);
            var marked = IntentMark.Marked(descriptor);
            if (marked.Count == 0)
            {
                return finished;
            }

            var tree = SnapshotTree.Build(descriptor, descriptorPath);
            var candidates = marked.Where(g => g != tree.Top).ToList();
            if (candidates.Count == 0)
            {
                // Only a top can be left marked by hand: the current state is never deleted, so the mark goes.
                using (MergingDisk.Open(descriptorPath, files, repairUnclean: true))
                {
                    files.StoreDescriptor(descriptorPath, Unmarked(descriptor));
                }

                return finished;
            }

            // Leaves first (they are only dropped), then from the root up: each merge copies a child down once.
            var next = candidates.OrderBy(g => tree.ChildrenOf(g).Count == 0 ? 0 : 1).ThenBy(g => tree.ChainOf(g).Length).First();
            DeleteOne(descriptorPath, files, next, progress);
            finished++;
        }
    }

    private static DiskDescriptor Unmarked(DiskDescriptor d) =>
        d with { Snapshots = d.Snapshots with { Shots = [.. d.Snapshots.Shots.Select(s => s with { Extras = IntentMark.Without(s.Extras) })] } };

    private static void DeleteOne(string descriptorPath, BundleFiles files, Guid guid, OperationProgress? progress)
    {
        var before = DescriptorParser.ParseFile(descriptorPath);
        using var disk = MergingDisk.Open(descriptorPath, files, repairUnclean: IntentMark.Marked(before).Count > 0);
        var tree = disk.Tree;
        var children = tree.ChildrenOf(guid).ToList();
        string name = DiskDescriptor.FormatGuid(guid);
        var descriptor = disk.Descriptor;
        var down = new HashSet<int>();
        if (children.Count > 0)
        {
            if (!IntentMark.IsMarked(descriptor.Snapshots.Shots.First(s => s.Guid == guid)))
            {
                descriptor = IntentMark.Mark(descriptor, [guid]);
                files.StoreDescriptor(descriptorPath, descriptor);
            }

            var plan = Plan(disk, guid, children);
            long total = plan.Sum(p => p.Bytes);
            long done = 0;
            void Report(long bytes)
            {
                done += bytes;
                progress?.Invoke($"delete {name}", done, total);
            }

            progress?.Invoke($"delete {name}", 0, total);
            foreach (var step in plan)
            {
                if (step.Down)
                {
                    down.Add(step.Storage);
                    CopyDown(disk, step.Storage, guid, children[0], Report);
                }
                else
                {
                    foreach (var child in children)
                    {
                        CopyUp(disk, step.Storage, guid, child, Report);
                    }
                }
            }
        }

        // The tables the copies wrote are durable before the descriptor that relies on them.
        foreach (var layer in disk.Images.SelectMany(i => i.Values))
        {
            layer.Writer?.Close();
        }

        files.StoreDescriptor(descriptorPath, Without(descriptor, guid, children.Count == 1 ? children[0] : Guid.Empty, down));
        for (int s = 0; s < disk.Paths.Length; s++)
        {
            files.Unlink(down.Contains(s) ? disk.Paths[s][children[0]] : disk.Paths[s][guid]);
        }
    }

    /// <summary>How one storage merges the doomed snapshot's data, and about how many bytes that copies.</summary>
    private readonly record struct MergeStep(int Storage, bool Down, long Bytes);

    /// <summary>
    /// Per storage, the cheaper safe direction: with one child, down (the child's clusters into the doomed image, which
    /// then serves the child) when that copies less than up (the doomed image's clusters into the child); with several
    /// children, up into each. A raw root is never copied up: it is all data.
    /// </summary>
    private static List<MergeStep> Plan(MergingDisk disk, Guid guid, List<Guid> children)
    {
        var steps = new List<MergeStep>();
        for (int s = 0; s < disk.Images.Length; s++)
        {
            var doomed = disk.Images[s][guid];
            long upBytes = children.Count * AllocatedBytes(doomed);
            if (children.Count == 1)
            {
                var child = disk.Images[s][children[0]];
                long downBytes = AllocatedBytes(child);
                if (doomed.Kind == ImageKind.Plain || downBytes < upBytes)
                {
                    steps.Add(new MergeStep(s, Down: true, downBytes));
                    continue;
                }
            }

            steps.Add(new MergeStep(s, Down: false, upBytes));
        }

        return steps;
    }

    private static long AllocatedBytes(ImageLayer layer) => layer.CountAllocatedClusters() * layer.ClusterBytes;

    /// <summary>
    /// Copies every cluster <paramref name="child"/>'s image holds into the image of <paramref name="doomed"/>, which then
    /// reads as the child. Only the doomed view changes: the child reads those ranges from its own image throughout.
    /// </summary>
    private static void CopyDown(MergingDisk disk, int storage, Guid doomed, Guid child, Action<long> report)
    {
        var source = disk.Images[storage][child];
        var childView = disk.ChainOf(storage, child);
        var target = disk.WritableChainOf(storage, doomed);
        long end = target.LengthBytes;
        byte[] buffer = new byte[1 << 20];
        long sinceFlush = 0;
        for (long at = 0; at < end;)
        {
            long start = source.FindNext(at, allocated: true);
            if (start >= end)
            {
                break;
            }

            long stop = Math.Min(source.FindNext(start, allocated: false), end);
            for (long pos = start; pos < stop;)
            {
                int n = (int)Math.Min(buffer.Length, stop - pos);
                childView.Read(buffer.AsSpan(0, n), pos);
                target.Write(buffer.AsSpan(0, n), pos);
                pos += n;
                report(n);
                sinceFlush = FlushNowAndThen(target, sinceFlush + n);
            }

            at = stop;
        }

        target.Flush();
    }

    /// <summary>
    /// Copies into <paramref name="child"/>'s image every one of its clusters that it does not hold and the image of
    /// <paramref name="doomed"/> has data in: the child then reads the same without the doomed snapshot. Nothing any view
    /// reads changes: the clusters written hold what the child read through them before.
    /// </summary>
    private static void CopyUp(MergingDisk disk, int storage, Guid doomed, Guid child, Action<long> report)
    {
        var source = disk.Images[storage][doomed];
        var target = disk.WritableChainOf(storage, child);
        var childImage = target.TopLayer;
        var doomedView = disk.ChainOf(storage, doomed);
        long end = target.LengthBytes;
        long cluster = childImage.ClusterBytes;
        byte[] buffer = new byte[cluster];
        long sinceFlush = 0;
        for (long at = 0; at < end;)
        {
            long data = source.FindNext(at, allocated: true);
            if (data >= end)
            {
                break;
            }

            long start = data / cluster * cluster;
            int n = (int)Math.Min(cluster, end - start);
            if (childImage.FindNext(start, allocated: true) != start)
            {
                doomedView.Read(buffer.AsSpan(0, n), start);
                target.Write(buffer.AsSpan(0, n), start);
                report(n);
                sinceFlush = FlushNowAndThen(target, sinceFlush + n);
            }

            at = start + cluster;
        }

        target.Flush();
    }

    private static long FlushNowAndThen(StorageChain target, long sinceFlush)
    {
        if (sinceFlush < FlushEveryBytes)
        {
            return sinceFlush;
        }

        target.Flush();
        return 0;
    }

    /// <summary>
    /// The descriptor without snapshot <paramref name="guid"/>: its children hang from its parent; in the storages of
    /// <paramref name="down"/> its one child <paramref name="heir"/> takes over its image file (and type).
    /// </summary>
    private static DiskDescriptor Without(DiskDescriptor d, Guid guid, Guid heir, HashSet<int> down)
    {
        var parent = d.Snapshots.Shots.First(s => s.Guid == guid).ParentGuid;
        var storages = d.Storages.Select((sd, s) =>
        {
            var doomed = sd.FindImage(guid)!;
            var images = sd.Images.Where(i => i.Guid != guid)
                .Select(i => down.Contains(s) && i.Guid == heir ? i with { File = doomed.File, Type = doomed.Type } : i);
            return sd with { Images = [.. images] };
        });
        var shots = d.Snapshots.Shots.Where(s => s.Guid != guid).Select(s => s.ParentGuid == guid ? s with { ParentGuid = parent } : s);
        return d with { Storages = [.. storages], Snapshots = d.Snapshots with { Shots = [.. shots] } };
    }
}
