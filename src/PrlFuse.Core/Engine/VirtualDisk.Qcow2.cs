using System.Collections.Immutable;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.Formats.Qcow2;
using PrlFuse.Core.Formats.Qed;
using PrlFuse.Core.IO;
using PrlFuse.Core.Images;

namespace PrlFuse.Core.Engine;

/// <summary>Opening a bare qcow2 or QED image: a one-image disk whose layers are the image and its backing chain.</summary>
public sealed partial class VirtualDisk
{
    /// <summary>Deepest backing chain opened: deeper is refused (a loop that escaped detection, or a hostile chain).</summary>
    public const int MaxBackingDepth = 64;

    /// <summary>Protocols QEMU would take a backing or data file name for: never followed, never taken as file names.</summary>
    private static readonly string[] ProtocolPrefixes = ["nbd:", "nbd+", "http:", "https:", "ftp:", "ftps:", "ssh:", "iscsi:", "rbd:", "gluster:", "gluster+", "nfs:", "vvfat:", "blkdebug:", "null-co:", "null-aio:"];

    private static DiskDescriptor DescribeQcow2Image(string path, DiskOpenOptions options)
    {
        using var file = options.OpenFile(path, false);
        ImageLock.Acquire(file, ReadOnlyLockMode(options));
        byte[] head = new byte[(int)Math.Min(file.Length, 1L << Qcow2Header.MaxClusterBits)];
        file.ReadZeroFilled(head, 0);
        if (!Qcow2Header.TryRead(head, out var header, out string error))
        {
            throw new ImageFormatException(path, error);
        }

        return DescribeOneImage(path, header.Size / 512, header.ClusterBytes / 512, ImageType.Compressed);
    }

    private static DiskDescriptor DescribeQedImage(string path, DiskOpenOptions options)
    {
        using var file = options.OpenFile(path, false);
        ImageLock.Acquire(file, ReadOnlyLockMode(options));
        var header = QedImage.ReadHeader(file);
        return DescribeOneImage(path, header.ImageSize / 512, header.ClusterBytes / 512, ImageType.Compressed);
    }

    /// <summary>
    /// Opens the qcow2 or QED image <paramref name="path"/> (in <paramref name="format"/>) with its backing chain, top
    /// first: each backing file named relative to the folder of the image that names it, in the format its header says
    /// or its magic shows (qcow2, QED, Parallels, else raw). Only the top is opened for writing, and only with
    /// <paramref name="writable"/> (and unless <see cref="Qcow2Image.WriteBlockedReason"/> says otherwise, in
    /// <paramref name="readOnlyReason"/>). Every layer opened is added to <paramref name="opened"/> (so a failure
    /// disposes it).
    /// </summary>
    private static ImageLayer[] OpenBackingChain(string path, string format, bool writable, DiskOpenOptions options, ImmutableArray<DiskWarning>.Builder warnings, List<ImageLayer> opened, out string? readOnlyReason)
    {
        readOnlyReason = null;
        var chain = new List<ImageLayer>();
        var seen = new HashSet<(ulong, ulong)>();
        string current = path;
        string? currentFormat = format;
        string? namedBy = null;
        while (true)
        {
            if (chain.Count == MaxBackingDepth)
            {
                throw new ImageFormatException(path, $"backing chain is deeper than {MaxBackingDepth} images; refused");
            }

            if (PathRules.Identity(current) is { } identity && !seen.Add(identity))
            {
                throw new ImageFormatException(namedBy ?? path, $"backing chain loops back to {current}; refused");
            }

            var layer = OpenChainLayer(current, currentFormat, writable && chain.Count == 0, options, warnings);
            opened.Add(layer);
            if (writable && chain.Count == 0 && layer is Qcow2Image { WriteBlockedReason: null } checkedFirst && Checking.Qcow2Checker.WriteHazard(checkedFirst.File) is { } hazard)
            {
                checkedFirst.BlockWrites(hazard);
            }

            if (writable && chain.Count == 0 && layer is Qcow2Image { WriteBlockedReason: { } blocked })
            {
                // Served read-only: hold what a reader holds, so QEMU readers are not kept out for nothing.
                ImageLock.Acquire(layer.File, ReadOnlyLockMode(options));
                readOnlyReason = $"{current}: served read-only: {blocked}";
            }

            layer.CacheId = opened.Count;
            warnings.AddRange(layer.DiskWarnings);
            chain.Add(layer);
            if (BackingOf(layer) is not var (backingName, backingFormat))
            {
                return [.. chain];
            }

            namedBy = current;
            current = ResolveNamedFile(current, backingName, "backing file");
            currentFormat = backingFormat;
        }
    }

    /// <summary>The backing file a layer names and the format its header fixes for it (null: probe it), or null without one.</summary>
    private static (string Name, string? Format)? BackingOf(ImageLayer layer) => layer switch
    {
        Qcow2Image { Header.BackingFile: { } name } q => (name, q.Header.BackingFormat),
        QedImage { Header.BackingFile: { } name } q => (name, q.Header.BackingFormat),
        _ => null,
    };

    /// <summary>
    /// The file that <paramref name="name"/>, stored in image <paramref name="image"/>, names: relative to the image's
    /// folder. <c>json:</c> names, protocols, missing files and anything but a regular file are refused in one line.
    /// </summary>
    private static string ResolveNamedFile(string image, string name, string what)
    {
        if (name.StartsWith("json:", StringComparison.Ordinal))
        {
            throw new ImageFormatException(image, $"{what} is given as a json: description, which prlfuse does not follow; refused");
        }

        if (name.Contains("://", StringComparison.Ordinal) || ProtocolPrefixes.Any(p => name.StartsWith(p, StringComparison.OrdinalIgnoreCase)))
        {
            throw new ImageFormatException(image, $"{what} \"{name}\" is a network or protocol name, not a file; refused");
        }

        if (name.Length == 0 || name.Contains('\0', StringComparison.Ordinal))
        {
            throw new ImageFormatException(image, $"{what} name is empty or holds a NUL byte; refused");
        }

        string file = name.StartsWith("file:", StringComparison.Ordinal) ? name["file:".Length..] : name;
        string full = Path.GetFullPath(Path.Combine(Path.GetDirectoryName(image) ?? "/", file));
        if (!File.Exists(full))
        {
            throw new ImageFormatException(image, $"{what} {full} does not exist");
        }

        PathRules.CheckRegularFile(full);
        return full;
    }

    private static ImageLayer OpenChainLayer(string path, string? format, bool writable, DiskOpenOptions options, ImmutableArray<DiskWarning>.Builder warnings)
    {
        ImageFile file = OpenFile(path, writable, options);
        try
        {
            var locked = Lock(file, writable ? ImageLockMode.ReadWrite : ReadOnlyLockMode(options), warnings);
            format ??= ProbeFormat(file);
            ImageLayer layer = format switch
            {
                "qcow2" => Qcow2Image.Open(file, name => OpenDataFile(path, name, writable, options, warnings)),
                "qed" => QedImage.Open(file),
                "parallels" => ExpandableImage.Open(file, locked.OtherWriter),
                "raw" => new PlainImage(file, file.Length),
                _ => throw new ImageFormatException(path, $"backing format \"{format}\" is not one prlfuse reads (qcow2, qed, parallels, raw)"),
            };
            if (locked.OtherWriter && layer is not ExpandableImage)
            {
                layer.MarkInUseByOtherWriter();
            }

            return layer;
        }
        catch (IOException e)
        {
            // A file that opens but cannot be read (a /proc file named as a backing file, a failing disk): refused by name.
            file.Dispose();
            throw new ImageFormatException(path, $"cannot be read as an image: {e.Message}", e);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The external data file <paramref name="name"/> of qcow2 image <paramref name="image"/>, named relative to the
    /// image's folder: opened and locked as the image is (a writer's lock when the image is written, as QEMU locks it).
    /// </summary>
    private static ImageFile OpenDataFile(string image, string name, bool writable, DiskOpenOptions options, ImmutableArray<DiskWarning>.Builder warnings)
    {
        string path = ResolveNamedFile(image, name, "external data file");
        ImageFile file = OpenFile(path, writable, options);
        try
        {
            Lock(file, writable ? ImageLockMode.ReadWrite : ReadOnlyLockMode(options), warnings);
            return file;
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    /// <summary>A backing file without a format given: qcow2, QED or Parallels by magic, else raw.</summary>
    private static string ProbeFormat(ImageFile file)
    {
        Span<byte> head = stackalloc byte[64];
        int n = file.Read(head, 0);
        return Qcow2Header.HasMagic(head[..n]) ? "qcow2" : QedHeader.HasMagic(head[..n]) ? "qed" : ParallelsHeader.HasMagic(head[..n]) ? "parallels" : "raw";
    }

    /// <summary>
    /// A view per internal snapshot of the qcow2 image <paramref name="top"/>: its own L1 table and guest size over the
    /// image's backing chain, read-only, named as <see cref="SnapshotFileNames"/> says.
    /// </summary>
    private static ImmutableArray<SnapshotView> OpenInternalSnapshots(ImageLayer top, Dictionary<ImageLayer, ImageLayer[]> backing, List<ImageLayer> opened, BlockCache? cache, ImmutableArray<DiskWarning>.Builder warnings)
    {
        if (top is not Qcow2Image { Snapshots.IsEmpty: false } image)
        {
            return [];
        }

        var below = backing.GetValueOrDefault(top, []);
        var names = SnapshotFileNames(image.Snapshots);
        var views = ImmutableArray.CreateBuilder<SnapshotView>(image.Snapshots.Length);
        foreach (var snapshot in image.Snapshots)
        {
            var layer = image.OpenSnapshot(snapshot);
            opened.Add(layer);
            layer.CacheId = opened.Count;
            warnings.AddRange(layer.DiskWarnings);
            var chain = new StorageChain(0, 0, snapshot.DiskSize, [layer, .. below], cache, writable: false);
            views.Add(new SnapshotView(InternalSnapshotKey(snapshot), isTop: false, isWritable: false, snapshot.DiskSize, [chain])
            {
                Name = names[snapshot.Index],
                Internal = snapshot,
            });
        }

        return views.MoveToImmutable();
    }

    /// <summary>
    /// The file name (without .raw) of each internal snapshot: its name when that is a safe file name no other
    /// snapshot has, else its ID, else "snapshot-N" (N its place in the table).
    /// </summary>
    internal static string[] SnapshotFileNames(IReadOnlyList<Qcow2Snapshot> snapshots)
    {
        var nameCounts = snapshots.GroupBy(s => s.Name, StringComparer.Ordinal).ToDictionary(g => g.Key, g => g.Count(), StringComparer.Ordinal);
        var ids = snapshots.Select(s => s.Id).ToHashSet(StringComparer.Ordinal);
        var taken = new HashSet<string>(StringComparer.Ordinal);
        string[] result = new string[snapshots.Count];
        foreach (var s in snapshots)
        {
            // A name equal to another snapshot's ID would make lookups ambiguous: then the ID names it.
            string name = IsSafeFileName(s.Name) && nameCounts[s.Name] == 1 && (!ids.Contains(s.Name) || s.Name == s.Id) ? s.Name
                : IsSafeFileName(s.Id) ? s.Id
                : $"snapshot-{s.Index}";
            if (!taken.Add(name))
            {
                name = $"snapshot-{s.Index}";
                taken.Add(name);
            }

            result[s.Index] = name;
        }

        return result;
    }

    /// <summary>A name that can stand as a file name in every tool: no slash, no control character, not a GUID form.</summary>
    private static bool IsSafeFileName(string name) =>
        name.Length is > 0 and <= 200
        && name is not "." and not ".."
        && !name.Any(c => c == '/' || char.IsControl(c) || c == '\uFFFD')
        && !name.StartsWith('-')
        && !Guid.TryParse(name, out _)
        && name != "current";

    /// <summary>A key for an internal snapshot's view, never equal to a tree snapshot's GUID (which are random).</summary>
    private static Guid InternalSnapshotKey(Qcow2Snapshot snapshot)
    {
        Span<byte> bytes = stackalloc byte[16];
        BitConverter.TryWriteBytes(bytes, 0x71636f77_32736e61L);
        BitConverter.TryWriteBytes(bytes[8..], (long)snapshot.Index);
        return new Guid(bytes);
    }

    private SnapshotView? FindInternalSnapshot(string text) =>
        InternalSnapshots.FirstOrDefault(v => v.Name == text)
        ?? InternalSnapshots.FirstOrDefault(v => v.Internal!.Id == text)
        ?? InternalSnapshots.FirstOrDefault(v => v.Internal!.Name == text);
}
