using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.IO;
using PrlFuse.Core.Management;

namespace PrlFuse.Core.Convert;

/// <summary>
/// One snapshot of a disk as 'convert --keep-snapshots' writes it: its view, the index of its parent level (earlier in
/// the list; -1 for the root), whether the view's own layer (the first of each storage's chain, the others shared with
/// the parent's view) holds all it changes, and the snapshot's name when it has one.
/// </summary>
internal sealed record ConvertLevel(SnapshotView View, int Parent, bool OwnLayer, string? Name);

/// <summary>
/// 'convert --keep-snapshots': the whole snapshot tree of a disk written as a new disk of another format. A Parallels
/// bundle (or any disk) becomes a qcow2 backing chain, one file per snapshot, each holding only the clusters where its
/// snapshot differs from its parent's (zero clusters where it reads zeros over data); a qcow2 or QED backing chain, or a
/// qcow2 image's internal snapshots, become a Parallels bundle with a snapshot per level. Every view of the result reads
/// as the same view of the source. Files are written under temporary names, made durable and renamed, the top last.
/// </summary>
public static class SnapshotTreeConverter
{
    /// <summary>
    /// Writes every snapshot of <paramref name="disk"/> (opened with <paramref name="options"/>, which also open the
    /// levels of a backing chain) to <paramref name="destination"/>; returns the files or bundle written, the top first.
    /// </summary>
    public static IReadOnlyList<string> Convert(VirtualDisk disk, DiskOpenOptions options, string destination, ConvertFormat format, long? clusterBytes = null, Action<long, long>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(disk);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(destination);
        progress ??= static (_, _) => { };
        string full = DiskConverter.CheckDestination(destination);
        var opened = new List<VirtualDisk>();
        try
        {
            var levels = Levels(disk, options, opened);
            long total = levels.Sum(l => l.View.Size);
            return format switch
            {
                ConvertFormat.Qcow2 => WriteQcow2Chain(levels, full, clusterBytes ?? Qcow2Writer.DefaultClusterBytes, total, progress),
                ConvertFormat.Parallels => [WriteBundle(levels, full, clusterBytes ?? ParallelsImageCreator.DefaultClusterBytes, total, progress)],
                _ => throw new PrlFuseException(full, $"--keep-snapshots writes qcow2 or Parallels; {format.ToString().ToLowerInvariant()} holds one view only"),
            };
        }
        finally
        {
            foreach (var level in opened)
            {
                level.Dispose();
            }
        }
    }

    /// <summary>The name of the file a non-top level (numbered from 1, root first) is written to: DST's name with the number before its extension.</summary>
    public static string LevelFileName(string destination, int number)
    {
        ArgumentNullException.ThrowIfNull(destination);
        string folder = Path.GetDirectoryName(destination) ?? "";
        return Path.Combine(folder, $"{Path.GetFileNameWithoutExtension(destination)}.{number}{Path.GetExtension(destination)}");
    }

    /// <summary>
    /// The disk's snapshots, every parent before its children, the top last: a bundle's snapshot tree; a bare image's
    /// backing chain (each backing file opened as a disk of its own, root first), then its internal snapshots in
    /// table order, then its current state.
    /// </summary>
    internal static List<ConvertLevel> Levels(VirtualDisk disk, DiskOpenOptions options, List<VirtualDisk> opened)
    {
        var levels = new List<ConvertLevel>();
        if (!disk.IsBareImage)
        {
            var index = new Dictionary<Guid, int>();
            var queue = new Queue<Guid>([disk.Tree.Root]);
            var order = new List<Guid>();
            while (queue.Count > 0)
            {
                var guid = queue.Dequeue();
                order.Add(guid);
                foreach (var child in disk.Tree.ChildrenOf(guid))
                {
                    queue.Enqueue(child);
                }
            }

            // The top last, so it is written (and renamed into place) after everything it leads to.
            order.Remove(disk.Tree.Top);
            order.Add(disk.Tree.Top);
            foreach (var guid in order)
            {
                int parent = guid == disk.Tree.Root ? -1 : index[disk.Tree.ParentOf(guid)];
                index[guid] = levels.Count;
                levels.Add(new ConvertLevel(disk.Views[guid], parent, OwnLayer: true, ShotName(disk.Descriptor, guid)));
            }

            return levels;
        }

        var layers = disk.Top.Storages[0].Layers;
        for (int i = layers.Count - 1; i >= 1; i--)
        {
            var backing = VirtualDisk.Open(layers[i].Path, options with { ReadOnly = true, Format = DiskFormat.Auto });
            opened.Add(backing);
            levels.Add(new ConvertLevel(backing.Top, levels.Count - 1, OwnLayer: true, Path.GetFileName(layers[i].Path)));
        }

        // An internal snapshot's view does not share the layers of the levels around it: it is compared whole.
        foreach (var snapshot in disk.InternalSnapshots)
        {
            levels.Add(new ConvertLevel(snapshot, levels.Count - 1, OwnLayer: false, snapshot.Internal?.Name));
        }

        levels.Add(new ConvertLevel(disk.Top, levels.Count - 1, OwnLayer: disk.InternalSnapshots.IsEmpty, null));
        return levels;
    }

    /// <summary>The clusters of a level that may differ from its parent's view (all its data for the root).</summary>
    private static List<(long Start, long End)> Candidates(List<ConvertLevel> levels, ConvertLevel level, long clusterBytes) =>
        level.Parent < 0 ? DiskConverter.DataClusters(level.View, clusterBytes)
        : level.OwnLayer ? DiskConverter.OwnClusters(level.View, clusterBytes)
        : DiskConverter.Union(DiskConverter.DataClusters(level.View, clusterBytes), DiskConverter.DataClusters(levels[level.Parent].View, clusterBytes));

    private static string? ShotName(DiskDescriptor descriptor, Guid guid)
    {
        var shot = descriptor.Snapshots.Shots.FirstOrDefault(s => s.Guid == guid);
        foreach (var extra in shot?.Extras ?? [])
        {
            var element = System.Xml.Linq.XElement.Parse(extra.Xml);
            if (element.Name.LocalName == SnapshotCreator.NameElement)
            {
                return element.Value;
            }
        }

        return null;
    }

    private static List<string> WriteQcow2Chain(List<ConvertLevel> levels, string full, long clusterBytes, long total, Action<long, long> progress)
    {
        var names = new string[levels.Count];
        for (int i = 0; i < levels.Count - 1; i++)
        {
            names[i] = LevelFileName(full, i + 1);
            if (Path.Exists(names[i]))
            {
                throw new PrlFuseException(names[i], "already exists; convert --keep-snapshots writes a snapshot there: give DST a new name or remove it first");
            }
        }

        names[^1] = full;
        string folder = Path.GetDirectoryName(full)!;
        var temporaries = new List<string>();
        long before = 0;
        try
        {
            for (int i = 0; i < levels.Count; i++)
            {
                var level = levels[i];
                var parent = level.Parent < 0 ? null : levels[level.Parent];
                string temp = DiskConverter.TemporaryName(names[i]);
                temporaries.Add(temp);
                using var handle = File.OpenHandle(temp, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None);
                long done = before;
                Qcow2Writer.WriteLayer(level.View, parent?.View, Candidates(levels, level, clusterBytes), handle, clusterBytes, parent is null ? null : Path.GetFileName(names[level.Parent]), at => progress(done + at, total));
                DiskConverter.Sync(names[i], PosixSync.FSync(handle), "fsync");
                before += level.View.Size;
            }

            // The snapshots first, the top last: DST appears only with everything below it in place.
            for (int i = 0; i < levels.Count; i++)
            {
                File.Move(temporaries[i], names[i], overwrite: false);
            }
        }
        catch (IOException e)
        {
            DeleteAll(temporaries);
            throw new PrlFuseException(full, $"writing failed: {e.Message}", e);
        }
        catch
        {
            DeleteAll(temporaries);
            throw;
        }

        DiskConverter.Sync(full, PosixSync.FSyncFolder(folder), "fsync of the folder");
        return [names[^1], .. names[..^1]];
    }

    private static string WriteBundle(List<ConvertLevel> levels, string full, long clusterBytes, long total, Action<long, long> progress)
    {
        for (int i = 0; i < levels.Count; i++)
        {
            if (levels[i].Parent != i - 1)
            {
                throw new PrlFuseException(full, "the snapshot tree has branches, which a Parallels bundle written here cannot hold; convert --keep-snapshots to qcow2 instead");
            }

            if (levels[i].View.Size != levels[^1].View.Size)
            {
                throw new PrlFuseException(full, $"snapshot {levels[i].Name ?? levels[i].View.Name} has a size of {levels[i].View.Size} bytes, the current state {levels[^1].View.Size}; a Parallels bundle's snapshots share one size");
            }
        }

        return DiskConverter.BuildBundle(full, bundle =>
        {
            long before = 0;
            string created = BundleCreator.Create(bundle, levels[^1].View.Size, plain: false, clusterBytes);
            for (int i = 0; i < levels.Count; i++)
            {
                if (i > 0)
                {
                    SnapshotCreator.Create(created, levels[i - 1].Name);
                }

                var level = levels[i];
                using var disk = VirtualDisk.Open(created, new DiskOpenOptions { ReadOnly = false, CacheBytes = 0 });
                var top = disk.Top;
                byte[] zeros = new byte[clusterBytes];
                long done = before;
                DiskConverter.ForEachChangedRun(
                    level.View,
                    level.Parent < 0 ? null : levels[level.Parent].View,
                    Candidates(levels, level, clusterBytes),
                    clusterBytes,
                    at => progress(done + at, total),
                    (offset, data) => top.Write(data, offset),
                    (offset, length) =>
                    {
                        for (long z = 0; z < length; z += clusterBytes)
                        {
                            top.Write(zeros.AsSpan(0, (int)Math.Min(clusterBytes, length - z)), offset + z);
                        }
                    });
                top.Flush();
                before += level.View.Size;
            }

            return created;
        });
    }

    private static void DeleteAll(List<string> files)
    {
        foreach (string file in files)
        {
            File.Delete(file);
        }
    }
}
