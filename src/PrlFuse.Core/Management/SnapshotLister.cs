using System.Xml.Linq;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Engine;

namespace PrlFuse.Core.Management;

/// <summary>One image of a snapshot: its storage, file, type and the bytes of data it holds itself.</summary>
public sealed record SnapshotImage(int Storage, string File, ImageType Type, long AllocatedBytes);

/// <summary>One snapshot of the tree, in tree order (parents before children); <see cref="Depth"/> 0 is the root.</summary>
public sealed record SnapshotEntry(Guid Guid, Guid Parent, int Depth, bool IsCurrent, string? Name, string? Description, IReadOnlyList<SnapshotImage> Images);

/// <summary>The snapshot tree of a disk for 'snapshot list': GUIDs, names and descriptions the descriptor holds, images and their allocation.</summary>
public static class SnapshotLister
{
    public static IReadOnlyList<SnapshotEntry> List(VirtualDisk disk)
    {
        var entries = new List<SnapshotEntry>();
        var shots = disk.Descriptor.Snapshots.Shots.ToDictionary(s => s.Guid);
        // Depth first with an explicit stack: a chain may be thousands of snapshots long.
        var pending = new Stack<(Guid Guid, int Depth)>();
        pending.Push((disk.Tree.Root, 0));
        while (pending.Count > 0)
        {
            var (guid, depth) = pending.Pop();
            var shot = shots[guid];
            var images = new List<SnapshotImage>();
            foreach (var storage in disk.Storages)
            {
                if (storage.Descriptor.FindImage(guid) is { } image && storage.Images.TryGetValue(guid, out var layer))
                {
                    images.Add(new SnapshotImage(storage.Index, image.File, image.Type, layer.CountAllocatedClusters() * layer.ClusterBytes));
                }
            }

            entries.Add(new SnapshotEntry(guid, shot.ParentGuid, depth, guid == disk.Tree.Top, Text(shot, "Name"), Text(shot, "Description"), images));

            // Pushed in reverse so that they come out in order: other snapshots by GUID, the current state last.
            foreach (var child in disk.Tree.ChildrenOf(guid).OrderBy(g => g == disk.Tree.Top).ThenBy(g => g).Reverse())
            {
                pending.Push((child, depth + 1));
            }
        }

        return entries;
    }

    private static string? Text(ShotDescriptor shot, string element)
    {
        foreach (var extra in shot.Extras)
        {
            var e = XElement.Parse(extra.Xml);
            if (e.Name.LocalName == element)
            {
                return e.Value.Trim();
            }
        }

        return null;
    }
}
