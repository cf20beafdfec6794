using PrlFuse.Core.Checking;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.Images;
using PrlFuse.Core.IO;

namespace PrlFuse.Core.Management;

/// <summary>
/// A Parallels bundle opened for deleting, merging or switching snapshots: its descriptor and snapshot tree, and every image of every
/// storage opened and locked as a writer holds it (so a mount, QEMU, or any reader or writer of an image makes the
/// operation refuse before anything is written). Offline only; owns and closes its images.
/// </summary>
internal sealed class MergingDisk : IDisposable
{
    private readonly List<ImageLayer> _opened;

    private MergingDisk(string descriptorPath, DiskDescriptor descriptor, SnapshotTree tree, Dictionary<Guid, ImageLayer>[] images, Dictionary<Guid, string>[] paths, List<ImageLayer> opened)
    {
        DescriptorPath = descriptorPath;
        Descriptor = descriptor;
        Tree = tree;
        Images = images;
        Paths = paths;
        _opened = opened;
    }

    public string DescriptorPath { get; }

    public DiskDescriptor Descriptor { get; }

    public SnapshotTree Tree { get; }

    /// <summary>Per storage: each snapshot's image.</summary>
    public Dictionary<Guid, ImageLayer>[] Images { get; }

    /// <summary>Per storage: each snapshot's image file, resolved.</summary>
    public Dictionary<Guid, string>[] Paths { get; }

    /// <summary>The descriptor file of the bundle <paramref name="path"/> names (a folder or its DiskDescriptor.xml); bare images are refused.</summary>
    public static string DescriptorOf(string path)
    {
        var (full, kind) = DiskSource.Resolve(path);
        return kind == DiskSourceKind.Descriptor
            ? full
            : throw new PrlFuseException(full, "is a bare image, which has no snapshots: snapshot operations need a bundle (a folder with DiskDescriptor.xml)");
    }

    /// <summary>
    /// Opens every image of the bundle. <paramref name="repairUnclean"/>: an image not closed cleanly (an operation that
    /// was interrupted left it so) is repaired first, as 'prlfuse check --repair' does; otherwise it is refused.
    /// </summary>
    public static MergingDisk Open(string descriptorPath, BundleFiles files, bool repairUnclean)
    {
        var descriptor = DescriptorParser.ParseFile(descriptorPath);
        var tree = SnapshotTree.Build(descriptor, descriptorPath);
        var resolver = new ImagePathResolver(descriptorPath, allowOutsideBundle: false);
        var paths = new Dictionary<Guid, string>[descriptor.Storages.Length];
        for (int s = 0; s < paths.Length; s++)
        {
            paths[s] = [];
            foreach (var guid in tree.Snapshots)
            {
                paths[s][guid] = resolver.Resolve(descriptor.Storages[s].FindImage(guid)!.File).Path;
            }
        }

        if (repairUnclean)
        {
            RepairUnclean(paths, descriptor);
        }

        var opened = new List<ImageLayer>();
        var images = new Dictionary<Guid, ImageLayer>[paths.Length];
        try
        {
            for (int s = 0; s < paths.Length; s++)
            {
                images[s] = [];
                var sd = descriptor.Storages[s];
                foreach (var (guid, path) in paths[s])
                {
                    var layer = OpenImage(files, path, sd, sd.FindImage(guid)!.Type);
                    opened.Add(layer);
                    images[s][guid] = layer;
                }
            }

            return new MergingDisk(descriptorPath, descriptor, tree, images, paths, opened);
        }
        catch
        {
            opened.ForEach(l => l.Dispose());
            throw;
        }
    }

    /// <summary>
    /// After a crash in an operation an image may be unclean, or clean with space leaked past its end (the trim of a
    /// clean close not yet durable when the header was): each one the checker finds anything in is repaired.
    /// </summary>
    private static void RepairUnclean(Dictionary<Guid, string>[] paths, DiskDescriptor descriptor)
    {
        for (int s = 0; s < paths.Length; s++)
        {
            foreach (var (guid, path) in paths[s])
            {
                if (descriptor.Storages[s].FindImage(guid)!.Type == ImageType.Compressed && File.Exists(path) && ImageChecker.Check(path).Problems.Count > 0)
                {
                    var result = ImageChecker.Repair(path);
                    if (result.ExitCode != 0)
                    {
                        throw new PrlFuseException(path, "an interrupted operation left the image damaged and a repair did not make it clean; run 'prlfuse check --repair' and look at what it says");
                    }
                }
            }
        }
    }

    private static ImageLayer OpenImage(BundleFiles files, string path, StorageDescriptor sd, ImageType type)
    {
        if (!File.Exists(path))
        {
            throw new PrlFuseException(path, "image does not exist; the disk cannot be changed until it is back");
        }

        if (PathRules.ReadOnlyReason(path) is { } readOnly)
        {
            throw new PrlFuseException(path, $"cannot change the disk: {readOnly}");
        }

        ImageFile file;
        try
        {
            file = files.OpenImage(path, writable: true);
        }
        catch (Exception e) when (e is UnauthorizedAccessException or IOException)
        {
            throw new PrlFuseException(path, $"cannot open for writing: {e.Message}", e);
        }

        try
        {
            // Held as a writer holds it: every other user of the image, reader or writer, makes this refuse.
            ImageLock.Acquire(file, ImageLockMode.ReadWrite);
            if (type == ImageType.Plain)
            {
                return file.Length >= sd.LengthBytes
                    ? new PlainImage(file, sd.LengthBytes)
                    : throw new ImageFormatException(path, $"raw image is {file.Length} bytes, smaller than its storage ({sd.LengthBytes} bytes)");
            }

            var image = ExpandableImage.Open(file);
            if (image.WasUnclean)
            {
                throw new PrlFuseException(path, "image was not closed cleanly; run 'prlfuse check --repair' first");
            }

            if (image.DamageText is { } damage)
            {
                throw new PrlFuseException(path, $"image has {damage}; run 'prlfuse check --repair' first");
            }

            return image;
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    /// <summary>The chain of snapshot <paramref name="guid"/> in storage <paramref name="storage"/>, read-only.</summary>
    public StorageChain ChainOf(int storage, Guid guid) => Chain(storage, guid, writable: false);

    /// <summary>
    /// The chain of snapshot <paramref name="guid"/> with its own image opened for writing over the images below it.
    /// Each image is written through one chain only.
    /// </summary>
    public StorageChain WritableChainOf(int storage, Guid guid)
    {
        var top = Images[storage][guid];
        if (top.IsImmutable)
        {
            string why = top is ExpandableImage { WriteBlockedReason: { } reason } ? reason : "image is read-only";
            throw new PrlFuseException(top.Path, $"cannot be written: {why}");
        }

        return Chain(storage, guid, writable: true);
    }

    private StorageChain Chain(int storage, Guid guid, bool writable)
    {
        var sd = Descriptor.Storages[storage];
        var layers = Tree.ChainOf(guid).Select(g => Images[storage][g]).ToArray();
        return new StorageChain(storage, sd.StartSector * 512, sd.LengthBytes, layers, cache: null, writable);
    }

    /// <summary>Closes every image; a written one is flushed, trimmed and marked clean. The first failure is rethrown.</summary>
    public void Dispose() => ImageLayer.DisposeAll(_opened, "the disk's images");
}
