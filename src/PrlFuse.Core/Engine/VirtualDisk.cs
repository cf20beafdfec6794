using System.Collections.Immutable;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.IO;
using PrlFuse.Core.Images;
using PrlFuse.Core.Management;

namespace PrlFuse.Core.Engine;

/// <summary>How to open a disk.</summary>
public sealed record DiskOpenOptions
{
    public const long DefaultCacheBytes = 64L << 20;

    /// <summary>When false, the top snapshot's images are opened for writing (if clean and a leaf).</summary>
    public bool ReadOnly { get; init; } = true;

    /// <summary>Bytes of block cache shared by all views; 0 disables it.</summary>
    public long CacheBytes { get; init; } = DefaultCacheBytes;

    /// <summary>
    /// Let relative image paths resolve outside the bundle folder (after symlinks). Off by default: the descriptor is
    /// untrusted. Device nodes, FIFOs and sockets are refused either way.
    /// </summary>
    public bool AllowImagesOutsideBundle { get; init; }

    /// <summary>
    /// Read-only and sharing every permission with other users of the images, as <c>qemu-img -U</c>: the disk opens
    /// beside a writer (QEMU or prlfuse), with the warning "in use by another writer; data may be inconsistent" on
    /// each image it holds. Only with <see cref="ReadOnly"/>. Without it, a read-only open takes QEMU's read-only locks
    /// and fails with <see cref="ImageInUseException"/> while anyone writes an image.
    /// </summary>
    public bool ForceShare { get; init; }

    /// <summary>What a bare image file is (--format): recognised from its content by default.</summary>
    public DiskFormat Format { get; init; } = DiskFormat.Auto;

    /// <summary>
    /// Opens image files; tests substitute one that injects faults. Files with an operating-system handle
    /// (<see cref="ImageFile.Handle"/>) get QEMU's image locks on it; others are not locked.
    /// </summary>
    public Func<string, bool, ImageFile> OpenFile { get; init; } = PositionalImageFile.Open;
}

/// <summary>One storage of an opened disk: its descriptor and its images by GUID.</summary>
public sealed record OpenStorage(int Index, StorageDescriptor Descriptor, IReadOnlyDictionary<Guid, ImageLayer> Images);

/// <summary>
/// An opened Parallels disk: the validated descriptor, every image file, one block cache, and a
/// <see cref="SnapshotView"/> per snapshot. Owns and disposes every image it opened.
/// </summary>
public sealed partial class VirtualDisk : IDisposable
{
    private readonly List<ImageLayer> _opened;
    // Replaced whole by a live snapshot (TakeSnapshot), so a reader never sees one being changed.
    private Dictionary<Guid, SnapshotView> _views;

    private VirtualDisk(string sourcePath, bool isBareImage, DiskDescriptor descriptor, SnapshotTree tree, List<ImageLayer> opened, IReadOnlyList<OpenStorage> storages, Dictionary<Guid, SnapshotView> views, BlockCache? cache, ImmutableArray<DiskWarning> warnings)
    {
        SourcePath = sourcePath;
        IsBareImage = isBareImage;
        Descriptor = descriptor;
        Tree = tree;
        _opened = opened;
        Storages = storages;
        _views = views;
        Cache = cache;
        DiskWarnings = warnings;
        Warnings = warnings.Select(w => w.Message).ToImmutableArray();
    }

    /// <summary>The descriptor file, or the image file for a bare image.</summary>
    public string SourcePath { get; }

    public bool IsBareImage { get; }

    public DiskDescriptor Descriptor { get; private set; }

    public SnapshotTree Tree { get; private set; }

    public IReadOnlyList<OpenStorage> Storages { get; private set; }

    public BlockCache? Cache { get; }

    /// <summary>Everything odd but usable, from the descriptor and each image: the messages.</summary>
    public ImmutableArray<string> Warnings { get; private set; }

    /// <summary>The same warnings with their stable codes (<see cref="WarningCodes"/>).</summary>
    public ImmutableArray<DiskWarning> DiskWarnings { get; private set; }

    public long Size => Descriptor.DiskSizeBytes;

    public IReadOnlyDictionary<Guid, SnapshotView> Views => Volatile.Read(ref _views);

    public SnapshotView Top => _views[Tree.Top];

    /// <summary>
    /// The views a mount shows under snapshots/ and a server exports besides the top, in a stable order: the tree's
    /// other snapshots by GUID, then a qcow2 image's internal snapshots in table order. Each is named by its
    /// <see cref="SnapshotView.Name"/>.
    /// </summary>
    public IReadOnlyList<SnapshotView> SnapshotViews =>
        [.. _views.Values.Where(v => v != Top).OrderBy(v => v.Id), .. InternalSnapshots];

    /// <summary>A qcow2 image's internal snapshots, read-only, in the order of its snapshot table (empty otherwise).</summary>
    public ImmutableArray<SnapshotView> InternalSnapshots { get; private init; } = [];

    /// <summary>
    /// Finds a view by GUID text (with or without braces, in any case), or an internal snapshot by its file name, its
    /// ID or its name, in that order.
    /// </summary>
    public SnapshotView GetView(string guidText)
    {
        string t = guidText.Trim();
        if (!Guid.TryParseExact(t, "B", out var guid) && !Guid.TryParseExact(t, "D", out guid) && !Guid.TryParseExact(t, "N", out guid))
        {
            if (FindInternalSnapshot(guidText) is { } found)
            {
                return found;
            }

            throw new PrlFuseException(null, InternalSnapshots.IsEmpty
                ? $"\"{guidText}\" is not a snapshot GUID"
                : $"\"{guidText}\" is neither a snapshot GUID nor the name or ID of an internal snapshot; 'prlfuse info' lists them");
        }

        return _views.TryGetValue(guid, out var view)
            ? view
            : throw new PrlFuseException(SourcePath, $"no snapshot {DiskDescriptor.FormatGuid(guid)}; 'prlfuse info' lists them");
    }

    /// <summary>Opens a bundle folder, the path of its DiskDescriptor.xml, or a bare .hds image.</summary>
    public static VirtualDisk Open(string path, DiskOpenOptions? options = null)
    {
        options ??= new DiskOpenOptions();
        if (options.ForceShare && !options.ReadOnly)
        {
            throw new PrlFuseException(null, "--force-share opens read-only: it cannot be combined with writing (add --read-only, or drop --force-share)");
        }

        var (full, kind) = DiskSource.Resolve(path, options.Format);
        bool bare = kind != DiskSourceKind.Descriptor;
        var extra = ImmutableArray.CreateBuilder<DiskWarning>();
        DiskDescriptor descriptor;
        if (bare)
        {
            descriptor = DescribeBareImage(full, kind, options, extra);
        }
        else
        {
            descriptor = DescriptorStore.Load(full, out var fromBackup);
            if (fromBackup is not null)
            {
                extra.Add(fromBackup);
            }
        }

        if (kind == DiskSourceKind.ExpandableImage && OverlayParentNote(full) is { } note)
        {
            extra.Add(new(WarningCodes.OverlayWithoutParents, note));
        }

        var tree = SnapshotTree.Build(descriptor, full);
        var disk = OpenImages(full, kind, descriptor, tree, options);
        if (extra.Count > 0)
        {
            disk.AddWarnings(extra);
        }

        disk.RawUnrecognised = kind == DiskSourceKind.RawImage && options.Format == DiskFormat.Auto;
        return disk;
    }

    /// <summary>
    /// Set when a read-write open found a top image that must not be written (mode 0444, or a read-only filesystem):
    /// it was opened read-only instead, and this says why, naming the file.
    /// </summary>
    public string? ReadOnlyPlaceReason { get; private init; }

    /// <summary>How the disk was opened: a live snapshot opens its new images the same way.</summary>
    private DiskOpenOptions OpenOptions { get; init; } = new();

    /// <summary>A bare file taken as a raw disk because it has no known format (not because --format raw said so).</summary>
    public bool RawUnrecognised { get; private set; }

    private void AddWarnings(IEnumerable<DiskWarning> more)
    {
        DiskWarnings = DiskWarnings.AddRange(more);
        Warnings = DiskWarnings.Select(w => w.Message).ToImmutableArray();
    }

    /// <summary>
    /// An expandable image opened alone that a DiskDescriptor.xml beside it names as an overlay: its parents hold the
    /// rest of the disk, so what it shows alone is not the disk. Null when no descriptor says so (or none parses).
    /// </summary>
    private static string? OverlayParentNote(string image)
    {
        string folder = Path.GetDirectoryName(image) ?? "/";
        string xml = Path.Combine(folder, "DiskDescriptor.xml");
        if (!File.Exists(xml))
        {
            return null;
        }

        try
        {
            var descriptor = DescriptorParser.ParseFile(xml);
            string name = Path.GetFileName(image);
            var resolver = new ImagePathResolver(xml, allowOutsideBundle: true);
            var identity = PathRules.Identity(image);
            var guids = descriptor.Storages.SelectMany(s => s.Images).Where(i => resolver.TryResolve(i.File) is { } file && PathRules.Identity(file) == identity).Select(i => i.Guid).ToHashSet();
            bool overlay = descriptor.Snapshots.Shots.Any(s => guids.Contains(s.Guid) && s.ParentGuid != Guid.Empty);
            return overlay
                ? $"{name}: is an overlay (a snapshot's changes) in {xml}; its parent snapshots are not included, so unchanged data reads as zeros: open the bundle {folder} for the whole disk"
                : null;
        }
#pragma warning disable CA1031 // only a note: a descriptor we cannot read says nothing about the image
        catch (Exception)
#pragma warning restore CA1031
        {
            return null;
        }
    }

    /// <summary>A bare image is a one-image disk with no snapshots: the predefined top GUID, one storage.</summary>
    private static DiskDescriptor DescribeBareImage(string path, DiskSourceKind kind, DiskOpenOptions options, ImmutableArray<DiskWarning>.Builder warnings)
    {
        if (kind == DiskSourceKind.Qcow2Image)
        {
            return DescribeQcow2Image(path, options);
        }

        if (kind == DiskSourceKind.QedImage)
        {
            return DescribeQedImage(path, options);
        }

        using var file = options.OpenFile(path, false);

        // Locked like any read-only open before its header is read: a writer's half-written header is not taken for
        // the image's geometry, and a refusal says who holds the image.
        ImageLock.Acquire(file, ReadOnlyLockMode(options));
        Span<byte> head = stackalloc byte[FieldLocations.HeaderSize];
        int n = file.Read(head, 0);
        long sectors;
        ImageType type;
        long blocksize = 2048;
        if (kind == DiskSourceKind.ExpandableImage)
        {
            if (!ParallelsHeader.TryRead(head[..n], out var header, out string error))
            {
                throw new ImageFormatException(path, error);
            }

            sectors = (long)Math.Min(header.SectorCount, long.MaxValue / 1024);
            blocksize = header.ClusterSectors;
            type = ImageType.Compressed;
        }
        else
        {
            sectors = file.Length / 512;
            type = ImageType.Plain;
            if (file.Length % 512 != 0)
            {
                warnings.Add(new(WarningCodes.RawTailNotServed, $"{Path.GetFileName(path)}: its last {file.Length % 512} bytes are not a whole sector and are not part of the disk"));
            }
        }

        return DescribeOneImage(path, sectors, blocksize, type);
    }

    /// <summary>The descriptor of a one-image disk of <paramref name="sectors"/> sectors, with no snapshots.</summary>
    private static DiskDescriptor DescribeOneImage(string path, long sectors, long blocksize, ImageType type)
    {
        if (sectors <= 0)
        {
            throw new ImageFormatException(path, "image describes a disk of 0 sectors");
        }

        var guid = DiskDescriptor.PredefinedTopGuid;
        var image = new ImageDescriptor(guid, type, path, []);
        return new DiskDescriptor(
            DescriptorParser.RootName,
            "1.0",
            new DiskParameters(sectors, sectors, 1, 1, 0, []),
            [new StorageDescriptor(0, sectors, blocksize, [image], [])],
            new SnapshotsDescriptor(null, [new ShotDescriptor(guid, Guid.Empty, [])], []),
            [],
            []);
    }

    private static VirtualDisk OpenImages(string source, DiskSourceKind kind, DiskDescriptor descriptor, SnapshotTree tree, DiskOpenOptions options)
    {
        bool bare = kind != DiskSourceKind.Descriptor;
        var warnings = ImmutableArray.CreateBuilder<DiskWarning>();
        warnings.AddRange(tree.DiskWarnings);
        var opened = new List<ImageLayer>();

        // Layers below an image that are not in the descriptor: a qcow2 image's backing chain, top first.
        var backing = new Dictionary<ImageLayer, ImageLayer[]>(ReferenceEqualityComparer.Instance);
        BlockCache? cache = null;
        try
        {
            var resolver = new ImagePathResolver(source, options.AllowImagesOutsideBundle || bare);
            bool topWritable = !options.ReadOnly && tree.ChildrenOf(tree.Top).Count == 0;
            string? readOnlyPlace = null;
            var storages = new List<OpenStorage>();
            for (int s = 0; s < descriptor.Storages.Length; s++)
            {
                var sd = descriptor.Storages[s];
                var images = new Dictionary<Guid, ImageLayer>();
                foreach (var guid in tree.Snapshots)
                {
                    var id = sd.FindImage(guid)!;
                    var resolved = resolver.Resolve(id.File);
                    string file = resolved.Path;
                    if (resolved.Warning is { } stale)
                    {
                        warnings.Add(stale);
                    }

                    bool writable = topWritable && guid == tree.Top;
                    if (writable && PathRules.ReadOnlyReason(file) is { } readOnly)
                    {
                        // Never write through a 0444 file (root could) or try a read-only filesystem: served read-only.
                        writable = false;
                        readOnlyPlace ??= $"{file}: {readOnly}";
                    }

                    ImageLayer layer;
                    if (kind is DiskSourceKind.Qcow2Image or DiskSourceKind.QedImage)
                    {
                        var chain = OpenBackingChain(file, kind == DiskSourceKind.QedImage ? "qed" : "qcow2", writable, options, warnings, opened, out string? chainReadOnly);
                        readOnlyPlace ??= chainReadOnly;
                        layer = chain[0];
                        backing[layer] = chain[1..];
                    }
                    else
                    {
                        layer = OpenLayer(file, id, sd, s, writable, options, warnings);
                        opened.Add(layer);
                        layer.CacheId = opened.Count;
                        warnings.AddRange(layer.DiskWarnings);
                    }

                    images[guid] = layer;
                }

                storages.Add(new OpenStorage(s, sd, images));
            }

            // A damaged qcow2 top is served read-only (its WriteBlockedReason), so its damage only makes reads of it fail.
            if (!options.ReadOnly && opened.FirstOrDefault(l => l.DamageText is not null && l is not Formats.Qcow2.Qcow2Image) is { } damaged)
            {
                // Served read-only it can be inspected; written, new clusters could land where damaged entries point.
                throw new ImageFormatException(damaged.Path, $"image has {damaged.DamageText}, so it is not opened for writing: run 'prlfuse check --repair {source}' first, or open it read-only");
            }

            if (options.CacheBytes > 0)
            {
                cache = new BlockCache(options.CacheBytes);
            }

            var views = new Dictionary<Guid, SnapshotView>();
            foreach (var guid in tree.Snapshots)
            {
                var chainGuids = tree.ChainOf(guid);
                var layers = storages.Select(st => chainGuids.SelectMany(g => (ImageLayer[])[st.Images[g], .. backing.GetValueOrDefault(st.Images[g], [])]).ToArray()).ToArray();

                // The top is written only when the top of every storage can be: one read-only piece makes the disk read-only.
                bool writable = guid == tree.Top && layers.All(l => !l[0].IsImmutable);
                var chains = new StorageChain[storages.Count];
                for (int s = 0; s < storages.Count; s++)
                {
                    var sd = storages[s].Descriptor;
                    chains[s] = new StorageChain(s, sd.StartSector * 512, sd.LengthBytes, layers[s], cache, writable);
                }

                views[guid] = new SnapshotView(guid, guid == tree.Top, writable, descriptor.DiskSizeBytes, chains);
            }

            var internalViews = kind == DiskSourceKind.Qcow2Image
                ? OpenInternalSnapshots(storages[0].Images[tree.Top], backing, opened, cache, warnings)
                : [];
            return new VirtualDisk(source, bare, descriptor, tree, opened, storages, views, cache, warnings.ToImmutable())
            {
                ReadOnlyPlaceReason = readOnlyPlace,
                InternalSnapshots = internalViews,
                OpenOptions = options,
            };
        }
        catch
        {
            foreach (var layer in opened)
            {
                layer.Dispose();
            }

            cache?.Dispose();
            throw;
        }
    }

    private static ImageLayer OpenLayer(string path, ImageDescriptor id, StorageDescriptor sd, int storageIndex, bool writable, DiskOpenOptions options, ImmutableArray<DiskWarning>.Builder warnings)
    {
        if (!File.Exists(path))
        {
            throw new PrlFuseException(path, $"image {DiskDescriptor.FormatGuid(id.Guid)} of storage {storageIndex} does not exist");
        }

        ImageFile file = OpenFile(path, writable, options);
        try
        {
            // The lock comes before the header is read: "Ynot" then means a crash only when no writer holds the image.
            var locked = Lock(file, writable ? ImageLockMode.ReadWrite : ReadOnlyLockMode(options), warnings);
            if (id.Type == ImageType.Plain)
            {
                if (file.Length < sd.LengthBytes)
                {
                    throw new ImageFormatException(path, $"raw image is {file.Length} bytes, smaller than its storage ({sd.LengthBytes} bytes)");
                }

                var plain = new PlainImage(file, sd.LengthBytes);
                if (locked.OtherWriter)
                {
                    plain.MarkInUseByOtherWriter();
                }

                return plain;
            }

            var image = ExpandableImage.Open(file, locked.OtherWriter);
            if (writable && image.WasUnclean)
            {
                // Never write over an image whose last writer died: repair first.
                image.Dispose();
                file = OpenFile(path, false, options);
                Lock(file, ImageLockMode.ReadOnly, warnings: null);
                image = ExpandableImage.Open(file);
            }
            else if (writable && image.WriteBlockedReason is not null)
            {
                // Served read-only: hold what a reader holds, so QEMU readers are not kept out for nothing.
                ImageLock.Acquire(file, ImageLockMode.ReadOnly);
            }

            if (image.Header.ClusterSectors != sd.BlockSizeSectors)
            {
                warnings.Add(new(WarningCodes.ClusterSizeMismatch, $"{Path.GetFileName(path)}: cluster size {image.Header.ClusterSectors} sectors differs from the storage's Blocksize {sd.BlockSizeSectors}; the image's own header is used"));
            }

            if (image.VirtualSize < sd.LengthBytes)
            {
                warnings.Add(new(WarningCodes.ImageSmallerThanStorage, $"{Path.GetFileName(path)}: image holds {image.VirtualSize} bytes, less than its storage ({sd.LengthBytes} bytes); the rest reads as unallocated"));
            }

            return image;
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    private static ImageLockMode ReadOnlyLockMode(DiskOpenOptions options) => options.ForceShare ? ImageLockMode.ForceShare : ImageLockMode.ReadOnly;

    /// <summary>QEMU's image locks on the file (see <see cref="ImageLock"/>); throws <see cref="ImageInUseException"/>.</summary>
    private static ImageLockState Lock(ImageFile file, ImageLockMode mode, ImmutableArray<DiskWarning>.Builder? warnings)
    {
        var state = ImageLock.Acquire(file, mode);
        if (state.NotLockedReason is { } reason)
        {
            warnings?.Add(new(WarningCodes.NoImageLocks, $"{Path.GetFileName(file.Path)}: {reason}"));
        }

        return state;
    }

    private static ImageFile OpenFile(string path, bool writable, DiskOpenOptions options)
    {
        try
        {
            return options.OpenFile(path, writable);
        }
        catch (UnauthorizedAccessException e)
        {
            throw new PrlFuseException(path, writable ? "permission denied opening for writing (use --read-only to look without writing)" : "permission denied", e);
        }
        catch (IOException e)
        {
            throw new PrlFuseException(path, $"cannot open: {e.Message}", e);
        }
    }

    /// <summary>
    /// <see cref="SnapshotView.CountAllocatedBytes"/> of every view at once: each layer's allocated ranges are listed
    /// once and each view takes their union, instead of every view asking every layer of its chain at every range
    /// boundary (which grows with the square of the depth). A chain with a layer that may hold zeros (they hide data
    /// below) is counted by its view.
    /// </summary>
    public Dictionary<Guid, long> CountAllocatedBytesOfEveryView()
    {
        var ranges = new Dictionary<(ImageLayer, long), List<(long Start, long End)>>();
        var result = new Dictionary<Guid, long>();
        foreach (var (guid, view) in _views)
        {
            if (view.Storages.Any(s => s.Layers.Any(l => l.MayHoldZeros)))
            {
                result[guid] = view.CountAllocatedBytes();
                continue;
            }

            long total = 0;
            foreach (var storage in view.Storages)
            {
                var all = new List<(long Start, long End)>();
                foreach (var layer in storage.Layers)
                {
                    if (!ranges.TryGetValue((layer, storage.LengthBytes), out var own))
                    {
                        own = AllocatedRanges(layer, storage.LengthBytes);
                        ranges[(layer, storage.LengthBytes)] = own;
                    }

                    all.AddRange(own);
                }

                all.Sort();
                long coveredTo = 0;
                foreach (var (start, end) in all)
                {
                    long from = Math.Max(start, coveredTo);
                    if (end > from)
                    {
                        total += end - from;
                        coveredTo = end;
                    }
                }
            }

            result[guid] = total;
        }

        return result;
    }

    /// <summary>Where <paramref name="layer"/> holds data in guest bytes [0, <paramref name="length"/>), from its allocation table.</summary>
    private static List<(long Start, long End)> AllocatedRanges(ImageLayer layer, long length)
    {
        var list = new List<(long, long)>();
        for (long at = layer.FindNext(0, allocated: true); at < length;)
        {
            long end = Math.Min(length, layer.FindNext(at, allocated: false));
            if (end <= at)
            {
                break;
            }

            list.Add((at, end));
            at = end >= length ? length : layer.FindNext(end, allocated: true);
        }

        return list;
    }

    /// <summary>Flushes every writable top image, so completed writes are durable.</summary>
    public void Flush()
    {
        foreach (var view in _views.Values)
        {
            view.Flush();
        }
    }

    /// <summary>
    /// Closes every image; a written top image is flushed, trimmed and marked clean. Every image is closed even if
    /// one fails; the first failure is rethrown so a failed close is never silent.
    /// </summary>
    public void Dispose()
    {
        try
        {
            ImageLayer.DisposeAll(_opened, "the disk");
        }
        finally
        {
            Cache?.Dispose();
        }
    }
}
