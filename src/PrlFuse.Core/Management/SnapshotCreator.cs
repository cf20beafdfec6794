using System.Collections.Immutable;
using System.Xml.Linq;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.IO;

namespace PrlFuse.Core.Management;

/// <summary>
/// A snapshot whose new images exist and are durable, and whose descriptor is not written yet: what
/// <see cref="SnapshotCreator.Prepare"/> made and <see cref="SnapshotCreator.Commit"/> records.
/// </summary>
/// <param name="DescriptorPath">The descriptor to rewrite.</param>
/// <param name="Snapshot">The new snapshot's GUID: it takes the current state's content (its images).</param>
/// <param name="Top">The current state's GUID, unchanged: it names the new empty images.</param>
/// <param name="Descriptor">The descriptor after the snapshot.</param>
/// <param name="NewImages">The new empty image of each storage (descriptor order), full paths.</param>
public sealed record PreparedSnapshot(string DescriptorPath, Guid Snapshot, Guid Top, DiskDescriptor Descriptor, ImmutableArray<string> NewImages);

/// <summary>
/// Takes a snapshot: what the current state holds becomes a snapshot with a new GUID (its images stay where they
/// are), and the current state goes on, under the same GUID as before (Parallels' predefined top GUID on its disks),
/// in a new empty expandable image per storage. The new images are made durable first, then the descriptor is
/// rewritten atomically: a crash leaves the old disk (with a harmless orphan image) or the new one. An offline disk is
/// opened and locked here (<see cref="Create"/>); a mounted one is snapshotted by its daemon, which holds the locks
/// and calls <see cref="Prepare"/> and <see cref="Commit"/> itself (VirtualDisk.TakeSnapshot).
/// </summary>
public static class SnapshotCreator
{
    /// <summary>The element a snapshot's name is kept in, inside its &lt;Shot&gt;.</summary>
    public const string NameElement = "Name";

    /// <summary>Takes the snapshot of an offline disk; returns its GUID.</summary>
    public static Guid Create(string path, string? name, DurableFiles? files = null, bool allowImagesOutsideBundle = false)
    {
        files ??= DurableFiles.Real;
        using var disk = ManagedDisk.Open(path, "snapshot create", allowImagesOutsideBundle);
        var prepared = Prepare(disk.DescriptorPath, disk.Descriptor, disk.Tree, name, files);
        Commit(prepared, files);
        return prepared.Snapshot;
    }

    /// <summary>
    /// Creates the new empty top image of every storage, durable (files and folder), and works out the descriptor
    /// after the snapshot; nothing the disk reads has changed yet.
    /// </summary>
    public static PreparedSnapshot Prepare(string descriptorPath, DiskDescriptor d, SnapshotTree tree, string? name, DurableFiles? files = null)
    {
        files ??= DurableFiles.Real;
        string bundleFolder = Path.GetDirectoryName(descriptorPath) ?? "/";
        Guid top = tree.Top;
        Guid snapshot = Guid.NewGuid();
        string bundleName = Path.GetFileName(bundleFolder);
        var storages = ImmutableArray.CreateBuilder<StorageDescriptor>();
        var created = ImmutableArray.CreateBuilder<string>();
        for (int i = 0; i < d.Storages.Length; i++)
        {
            var storage = d.Storages[i];
            _ = storage.FindImage(top) ?? throw new PrlFuseException(descriptorPath, $"storage {i} has no image of the current state {DiskDescriptor.FormatGuid(top)}");
            long clusterBytes = storage.BlockSizeSectors * 512;
            if (ParallelsImageCreator.ClusterSizeProblem(clusterBytes) is { } problem)
            {
                throw new PrlFuseException(descriptorPath, $"snapshot create refused: storage {i} has Blocksize {storage.BlockSizeSectors} sectors: {problem}");
            }

            // Named after a GUID of its own: the image GUID (the current state's) already names the old file.
            string file = BundleCreator.ImageFileName(bundleName, i, Guid.NewGuid());
            string full = Path.Combine(bundleFolder, file);
            ParallelsImageCreator.CreateExpandable(full, storage.LengthBytes, clusterBytes, files, syncFolder: false);
            created.Add(full);
            var images = storage.Images.Select(image => image.Guid == top ? image with { Guid = snapshot } : image)
                .Append(new ImageDescriptor(top, ImageType.Compressed, file, []))
                .ToImmutableArray();
            storages.Add(storage with { Images = images });
        }

        files.SyncFolder(bundleFolder);

        // The current state's shot turns into the snapshot's where it stands, keeping its extra elements; whatever
        // hung below the current state now hangs below the snapshot that holds its content.
        var shots = d.Snapshots.Shots.Select(s => s.Guid == top
                ? s with { Guid = snapshot, Extras = WithName(s.Extras, name) }
                : s.ParentGuid == top ? s with { ParentGuid = snapshot } : s)
            .Append(new ShotDescriptor(top, snapshot, []))
            .ToImmutableArray();
        var changed = d with { Storages = storages.ToImmutable(), Snapshots = d.Snapshots with { Shots = shots } };
        SnapshotTree.Build(changed, descriptorPath);
        return new PreparedSnapshot(descriptorPath, snapshot, top, changed, created.ToImmutable());
    }

    /// <summary>Rewrites the descriptor (crash-safely, <see cref="DescriptorStore"/>): from here on the snapshot exists.</summary>
    public static void Commit(PreparedSnapshot prepared, DurableFiles? files = null) =>
        DescriptorStore.Write(prepared.DescriptorPath, prepared.Descriptor, files ?? DurableFiles.Real);

    /// <summary>Removes the images of a snapshot that was prepared and will not be committed (they are in no descriptor).</summary>
    public static void Abandon(PreparedSnapshot prepared, DurableFiles? files = null)
    {
        files ??= DurableFiles.Real;
        foreach (string image in prepared.NewImages)
        {
            files.Delete(image);
        }
    }

    private static ImmutableArray<ExtraElement> WithName(ImmutableArray<ExtraElement> extras, string? name)
    {
        if (name is null)
        {
            return extras;
        }

        var kept = extras.Where(e => XElement.Parse(e.Xml).Name.LocalName != NameElement);
        return [.. kept, new ExtraElement(new XElement(NameElement, name).ToString(SaveOptions.DisableFormatting), "ParentGUID")];
    }
}
