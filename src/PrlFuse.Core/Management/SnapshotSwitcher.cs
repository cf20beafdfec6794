using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Formats.Parallels;

namespace PrlFuse.Core.Management;

/// <summary>What <see cref="SnapshotSwitcher.Switch"/> did: the current state's GUID, and the GUID the old current state is kept under (null when it was dropped).</summary>
public sealed record SwitchResult(Guid Top, Guid? Kept);

/// <summary>
/// Makes a snapshot's content the current state of an offline bundle: a new empty top image over it. The old top is
/// dropped, or kept as a snapshot under a new GUID. Order: the new images are created and made durable (file and
/// folder), a dropped top is marked (<see cref="IntentMark"/>), then the descriptor that names the new images is stored
/// (the one switch), then a dropped top's images are unlinked. A crash leaves the old disk (plus an unused new image
/// file) or the new one (plus, at worst, the old top's file); 'check --repair' removes either file
/// (<see cref="Checking.OrphanImages"/>).
/// </summary>
public static class SnapshotSwitcher
{
    public static SwitchResult Switch(string disk, Guid guid, bool keepCurrent, BundleFiles? files = null, OperationProgress? progress = null)
    {
        files ??= BundleFiles.Real;
        string descriptorPath = MergingDisk.DescriptorOf(disk);
        SnapshotMerger.FinishInterrupted(descriptorPath, files, progress);
        using var opened = MergingDisk.Open(descriptorPath, files, repairUnclean: false);
        var tree = opened.Tree;
        var d = opened.Descriptor;
        string name = DiskDescriptor.FormatGuid(guid);
        if (!tree.Contains(guid))
        {
            throw new PrlFuseException(descriptorPath, $"no snapshot {name}; 'prlfuse snapshot list' lists them");
        }

        var top = tree.Top;
        if (guid == top)
        {
            throw new PrlFuseException(descriptorPath, $"snapshot {name} is already the current state");
        }

        if (!keepCurrent && tree.ChildrenOf(top).Count > 0)
        {
            throw new PrlFuseException(descriptorPath, $"the current state {DiskDescriptor.FormatGuid(top)} has snapshots of its own, so it cannot be dropped; add --keep-current");
        }

        // The new top takes the current state's GUID (the predefined top GUID, or TopGUID's), so every reader finds it
        // as before; a kept old top gets a new GUID, as taking a snapshot gives one.
        Guid? kept = keepCurrent ? Guid.NewGuid() : null;
        string folder = Path.GetDirectoryName(descriptorPath) ?? "/";
        string bundleName = Path.GetFileName(folder);
        var newFiles = new string[d.Storages.Length];
        for (int s = 0; s < d.Storages.Length; s++)
        {
            var sd = d.Storages[s];
            string file;
            do
            {
                file = $"{bundleName}.{s}.{DiskDescriptor.FormatGuid(Guid.NewGuid())}.hds";
            }
            while (File.Exists(Path.Combine(folder, file)));

            long cluster = sd.BlockSizeSectors * 512;
            if (ParallelsImageCreator.ClusterSizeProblem(cluster) is not null)
            {
                cluster = ParallelsImageCreator.DefaultClusterBytes;
            }

            files.CreateExpandable(Path.Combine(folder, file), sd.LengthBytes, cluster);
            newFiles[s] = file;
        }

        var storages = d.Storages.Select((sd, s) =>
        {
            var images = sd.Images.Where(i => i.Guid != top || kept is not null)
                .Select(i => i.Guid == top ? i with { Guid = kept!.Value } : i)
                .Append(new ImageDescriptor(top, ImageType.Compressed, newFiles[s], []));
            return sd with { Images = [.. images] };
        });
        var shots = d.Snapshots.Shots.Where(s => s.Guid != top || kept is not null)
            .Select(s => s.Guid == top ? s with { Guid = kept!.Value } : s)
            .Select(s => s.ParentGuid == top && kept is not null ? s with { ParentGuid = kept.Value } : s)
            .Append(new ShotDescriptor(top, guid, []));
        if (kept is null)
        {
            // The top to drop is marked first: the descriptor this one replaces (its .Backup) then says which images the
            // unlinks below remove, and 'check --repair' removes them when a crash stops the switch before it does. A
            // crash before the switch leaves the mark on the current state, which the next operation drops.
            files.StoreDescriptor(descriptorPath, IntentMark.Mark(d, [top]));
        }

        files.StoreDescriptor(descriptorPath, d with { Storages = [.. storages], Snapshots = d.Snapshots with { Shots = [.. shots] } });
        if (kept is null)
        {
            foreach (var paths in opened.Paths)
            {
                files.Unlink(paths[top]);
            }
        }

        return new SwitchResult(top, kept);
    }
}
