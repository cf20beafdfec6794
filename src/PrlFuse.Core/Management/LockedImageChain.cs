using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.Images;
using PrlFuse.Core.IO;

namespace PrlFuse.Core.Management;

/// <summary>One image of a disk under management, opened for writing and locked as a QEMU writer locks it.</summary>
public sealed record LockedImage(Guid Guid, Guid ParentGuid, ImageLayer Layer)
{
    public string Path => Layer.Path;

    /// <summary>The Parallels expandable image, or null for a plain (raw) one.</summary>
    public ExpandableImage? Expandable => Layer as ExpandableImage;
}

/// <summary>
/// A disk opened for an offline management operation (resize, compact): the descriptor (null for a bare image) and
/// every image of its one storage, each opened read-write and locked in QEMU's writer mode, so a mount, a QEMU user or
/// another prlfuse command that holds any of them refuses this open (<see cref="ImageInUseException"/>) and cannot
/// open them while the operation runs. Images that must not be written (not closed cleanly, damaged, an unknown
/// NECESSARY extension) are refused with what to do.
/// </summary>
public sealed class LockedImageChain : IDisposable
{
    private readonly List<ImageLayer> _opened;

    private LockedImageChain(string source, DiskDescriptor? descriptor, SnapshotTree? tree, List<LockedImage> images, List<ImageLayer> opened)
    {
        SourcePath = source;
        Descriptor = descriptor;
        Tree = tree;
        Images = images;
        _opened = opened;
    }

    /// <summary>The DiskDescriptor.xml, or the image file of a bare image.</summary>
    public string SourcePath { get; }

    /// <summary>Null for a bare image.</summary>
    public DiskDescriptor? Descriptor { get; }

    public SnapshotTree? Tree { get; }

    /// <summary>Every image, parents before children.</summary>
    public IReadOnlyList<LockedImage> Images { get; }

    /// <summary>The disk's size in bytes: Disk_size, or a bare image's own size.</summary>
    public long SizeBytes => Descriptor?.DiskSizeBytes ?? Images[0].Layer.VirtualSize;

    /// <summary>The images below <paramref name="image"/>, nearest first (empty for the root).</summary>
    public ImageLayer[] ParentsOf(LockedImage image)
    {
        var byGuid = Images.ToDictionary(i => i.Guid);
        var chain = new List<ImageLayer>();
        for (var g = image.ParentGuid; g != Guid.Empty && byGuid.TryGetValue(g, out var parent); g = parent.ParentGuid)
        {
            chain.Add(parent.Layer);
        }

        return [.. chain];
    }

    /// <summary>
    /// Opens <paramref name="path"/> (a bundle folder, its DiskDescriptor.xml, or a bare image) for management.
    /// <paramref name="openFile"/> opens image files (tests record what is written); files with a handle are locked.
    /// </summary>
    public static LockedImageChain Open(string path, bool allowImagesOutsideBundle = false, Func<string, bool, ImageFile>? openFile = null)
    {
        openFile ??= PositionalImageFile.Open;
        var (full, kind) = DiskSource.Resolve(path);
        var opened = new List<ImageLayer>();
        try
        {
            switch (kind)
            {
                case DiskSourceKind.Descriptor:
                    return OpenBundle(full, allowImagesOutsideBundle, openFile, opened);
                case DiskSourceKind.ExpandableImage:
                case DiskSourceKind.RawImage:
                    var file = OpenLocked(full, openFile);
                    ImageLayer layer;
                    try
                    {
                        layer = kind == DiskSourceKind.ExpandableImage ? OpenExpandable(file) : new PlainImage(file, file.Length / 512 * 512);
                    }
                    catch
                    {
                        file.Dispose();
                        throw;
                    }

                    opened.Add(layer);
                    return new LockedImageChain(full, null, null, [new LockedImage(DiskDescriptor.PredefinedTopGuid, Guid.Empty, layer)], opened);
                default:
                    throw new PrlFuseException(full, "qcow2 images are not managed by prlfuse (use qemu-img)");
            }
        }
        catch
        {
            foreach (var layer in opened)
            {
                layer.Dispose();
            }

            throw;
        }
    }

    private static LockedImageChain OpenBundle(string descriptorPath, bool allowOutside, Func<string, bool, ImageFile> openFile, List<ImageLayer> opened)
    {
        var descriptor = DescriptorStore.Load(descriptorPath, out _);
        var tree = SnapshotTree.Build(descriptor, descriptorPath);
        if (descriptor.Storages.Length != 1)
        {
            throw new PrlFuseException(descriptorPath, $"disk is split into {descriptor.Storages.Length} storages; resize and compact handle one-storage disks only");
        }

        var storage = descriptor.Storages[0];
        var resolver = new ImagePathResolver(descriptorPath, allowOutside);
        var images = new List<LockedImage>();
        foreach (var guid in Ordered(tree))
        {
            var id = storage.FindImage(guid)!;
            string file = resolver.Resolve(id.File).Path;
            if (!System.IO.File.Exists(file))
            {
                throw new PrlFuseException(file, $"image {DiskDescriptor.FormatGuid(guid)} does not exist");
            }

            var handle = OpenLocked(file, openFile);
            ImageLayer layer;
            try
            {
                layer = id.Type == ImageType.Plain ? new PlainImage(handle, storage.LengthBytes) : OpenExpandable(handle);
            }
            catch
            {
                handle.Dispose();
                throw;
            }

            opened.Add(layer);
            images.Add(new LockedImage(guid, tree.ParentOf(guid), layer));
        }

        return new LockedImageChain(descriptorPath, descriptor, tree, images, opened);
    }

    /// <summary>The snapshots, every parent before its children.</summary>
    private static List<Guid> Ordered(SnapshotTree tree)
    {
        var order = new List<Guid>();
        var pending = new Stack<Guid>();
        pending.Push(tree.Root);
        while (pending.Count > 0)
        {
            var g = pending.Pop();
            order.Add(g);
            foreach (var child in tree.ChildrenOf(g))
            {
                pending.Push(child);
            }
        }

        return order;
    }

    private static ImageFile OpenLocked(string path, Func<string, bool, ImageFile> openFile)
    {
        if (PathRules.ReadOnlyReason(path) is { } readOnly)
        {
            throw new PrlFuseException(path, $"cannot change the image: {readOnly}");
        }

        ImageFile file;
        try
        {
            file = openFile(path, true);
        }
        catch (UnauthorizedAccessException e)
        {
            throw new PrlFuseException(path, "permission denied opening for writing", e);
        }

        try
        {
            ImageLock.Acquire(file, ImageLockMode.ReadWrite);
        }
        catch
        {
            file.Dispose();
            throw;
        }

        return file;
    }

    private static ExpandableImage OpenExpandable(ImageFile file)
    {
        var image = ExpandableImage.Open(file);
        if (image.WasUnclean || image.WriteBlockedReason is not null)
        {
            string why = image.WriteBlockedReason ?? "image was not closed cleanly; run 'prlfuse check --repair'";
            image.Dispose();
            throw new ImageFormatException(file.Path, why);
        }

        if (image.DataOffsetPastEnd)
        {
            image.Dispose();
            throw new ImageFormatException(file.Path, "the file is truncated (data_off lies past its end); run 'prlfuse check --repair'");
        }

        return image;
    }

    public void Dispose()
    {
        foreach (var layer in _opened)
        {
            layer.Dispose();
        }
    }
}
