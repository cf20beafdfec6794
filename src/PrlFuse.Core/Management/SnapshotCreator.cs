using System.Collections.Immutable;
using System.Xml.Linq;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.IO;

namespace PrlFuse.Core.Management;

/// <summary>
/// Takes a snapshot of an offline disk: what the current state holds becomes a snapshot with a new GUID (its images
/// stay where they are), and the current state goes on, under the same GUID as before (Parallels' predefined top
/// GUID on its disks), in a new empty expandable image per storage. The new images are made durable first, then the
/// descriptor is rewritten atomically: a crash leaves the old disk (with a harmless orphan image) or the new one.
/// </summary>
public static class SnapshotCreator
{
    /// <summary>The element a snapshot's name is kept in, inside its &lt;Shot&gt;.</summary>
    public const string NameElement = "Name";

    /// <summary>Takes the snapshot; returns its GUID.</summary>
    public static Guid Create(string path, string? name, DurableFiles? files = null, bool allowImagesOutsideBundle = false)
    {
        files ??= DurableFiles.Real;
        using var disk = ManagedDisk.Open(path, "snapshot create", allowImagesOutsideBundle);
        var d = disk.Descriptor;
        Guid top = disk.Tree.Top;
        Guid snapshot = Guid.NewGuid();
        string bundleName = Path.GetFileName(disk.BundleFolder);
        var storages = ImmutableArray.CreateBuilder<StorageDescriptor>();
        for (int i = 0; i < d.Storages.Length; i++)
        {
            var storage = d.Storages[i];
            _ = storage.FindImage(top) ?? throw new PrlFuseException(disk.DescriptorPath, $"storage {i} has no image of the current state {DiskDescriptor.FormatGuid(top)}");
            long clusterBytes = storage.BlockSizeSectors * 512;
            if (ParallelsImageCreator.ClusterSizeProblem(clusterBytes) is { } problem)
            {
                throw new PrlFuseException(disk.DescriptorPath, $"snapshot create refused: storage {i} has Blocksize {storage.BlockSizeSectors} sectors: {problem}");
            }

            // Named after a GUID of its own: the image GUID (the current state's) already names the old file.
            string file = BundleCreator.ImageFileName(bundleName, i, Guid.NewGuid());
            ParallelsImageCreator.CreateExpandable(Path.Combine(disk.BundleFolder, file), storage.LengthBytes, clusterBytes, files, syncFolder: false);
            var images = storage.Images.Select(image => image.Guid == top ? image with { Guid = snapshot } : image)
                .Append(new ImageDescriptor(top, ImageType.Compressed, file, []))
                .ToImmutableArray();
            storages.Add(storage with { Images = images });
        }

        files.SyncFolder(disk.BundleFolder);

        // The current state's shot turns into the snapshot's where it stands, keeping its extra elements; whatever
        // hung below the current state now hangs below the snapshot that holds its content.
        var shots = d.Snapshots.Shots.Select(s => s.Guid == top
                ? s with { Guid = snapshot, Extras = WithName(s.Extras, name) }
                : s.ParentGuid == top ? s with { ParentGuid = snapshot } : s)
            .Append(new ShotDescriptor(top, snapshot, []))
            .ToImmutableArray();
        var changed = d with { Storages = storages.ToImmutable(), Snapshots = d.Snapshots with { Shots = shots } };
        SnapshotTree.Build(changed, disk.DescriptorPath);
        DescriptorStore.Write(disk.DescriptorPath, changed, files);
        return snapshot;
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
