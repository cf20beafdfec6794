using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.IO;
using PrlFuse.Core.Management;

namespace PrlFuse.Core.Descriptor;

/// <summary>What the user named as the disk.</summary>
public enum DiskSourceKind
{
    /// <summary>A DiskDescriptor.xml (named directly, or found in the bundle folder named).</summary>
    Descriptor,

    /// <summary>A bare Parallels expandable image: a one-image disk.</summary>
    ExpandableImage,

    /// <summary>A bare raw image: a one-image disk.</summary>
    RawImage,

    /// <summary>A qcow2 image: a one-image disk over its backing chain.</summary>
    Qcow2Image,

    /// <summary>A QED image: a one-image disk over its backing chain.</summary>
    QedImage,
}

/// <summary>What a bare image file is: recognised from its content, or as the user said (--format).</summary>
public enum DiskFormat
{
    Auto,
    Raw,
    Parallels,
}

/// <summary>
/// The one place that turns what the user typed into a disk source: a bundle folder, the path of its
/// DiskDescriptor.xml, a bare .hds image, or a VM bundle (NAME.pvm) with one disk. Used by every command, so they all accept the same inputs.
/// </summary>
public static class DiskSource
{
    public static (string Path, DiskSourceKind Kind) Resolve(string path, DiskFormat format = DiskFormat.Auto)
    {
        string full = System.IO.Path.GetFullPath(path);
        if (VmBundle.IsVmBundle(full))
        {
            // The VM's one disk (or a one-line refusal listing its disks); a config naming another VM is not followed.
            full = VmBundle.SelectDisk(full, null);
            if (VmBundle.IsVmBundle(full))
            {
                throw new PrlFuseException(full, "a VM bundle's disk is itself a VM bundle; give the disk (NAME.hdd) instead");
            }
        }

        if (Directory.Exists(full))
        {
            string xml = System.IO.Path.Combine(full, DescriptorStore.FileName);
            if (!File.Exists(xml) && File.Exists(DescriptorStore.BackupPath(xml)))
            {
                // Lost in a crash or by hand: opening reads the backup and says so (DescriptorStore.Load).
                return (xml, DiskSourceKind.Descriptor);
            }

            if (!File.Exists(xml))
            {
                throw new PrlFuseException(full, "folder has no DiskDescriptor.xml; give a Parallels disk bundle (NAME.hdd) or an .hds image");
            }

            full = xml;
        }
        else if (!File.Exists(full))
        {
            throw new PrlFuseException(full, "no such file or folder");
        }

        PathRules.CheckRegularFile(full);
        var kind = KindOf(full, format);
        if (kind == DiskSourceKind.RawImage && format == DiskFormat.Auto)
        {
            // Any file would do as a raw disk: take one only when it looks like one, and say what it is otherwise.
            long length = new FileInfo(full).Length;
            if (length == 0 || length % 512 != 0)
            {
                throw new PrlFuseException(full, $"is not a disk image: no known format, and its size ({length} bytes) is not a whole number of 512-byte sectors; give --format raw to read it as a raw disk anyway");
            }
        }

        return (full, kind);
    }

    /// <summary>
    /// The image files of the disk <paramref name="path"/> names, each once, without opening them: its descriptor's
    /// images as <see cref="ImagePathResolver"/> maps them (the ones it refuses left out), or the bare image itself.
    /// Throws <see cref="PrlFuseException"/> when the disk or its descriptor cannot be read.
    /// </summary>
    public static IReadOnlyList<string> ImageFiles(string path, bool allowImagesOutsideBundle = false, DiskFormat format = DiskFormat.Auto)
    {
        var (source, kind) = Resolve(path, format);
        if (kind != DiskSourceKind.Descriptor)
        {
            return [source];
        }

        var resolver = new ImagePathResolver(source, allowImagesOutsideBundle);
        var images = DescriptorStore.Load(source, out _).Storages
            .SelectMany(s => s.Images)
            .Select(i => resolver.TryResolve(i.File))
            .OfType<string>()
            .Distinct(StringComparer.Ordinal);
        return [.. images];
    }

    /// <summary>Magics of formats prlfuse does not read, at offset 0: a clear refusal beats serving their metadata as data.</summary>
    private static readonly (byte[] Magic, string Name)[] ForeignFormats =
    [
        ("conectix"u8.ToArray(), "VHD"),
        ("vhdxfile"u8.ToArray(), "VHDX"),
        ("KDMV"u8.ToArray(), "VMDK"),
        ("<<< Oracle VM VirtualBox Disk Image >>>"u8.ToArray(), "VDI"),
    ];

    private static DiskSourceKind KindOf(string path, DiskFormat format)
    {
        if (format == DiskFormat.Raw)
        {
            return DiskSourceKind.RawImage;
        }

        if (format == DiskFormat.Auto && path.EndsWith(".xml", StringComparison.OrdinalIgnoreCase))
        {
            return DiskSourceKind.Descriptor;
        }

        Span<byte> head = stackalloc byte[64];
        using var handle = File.OpenHandle(path);
        int n = RandomAccess.Read(handle, head, 0);
        if (ParallelsHeader.HasMagic(head[..n]))
        {
            return DiskSourceKind.ExpandableImage;
        }

        if (format == DiskFormat.Auto && Formats.Qcow2.Qcow2Header.HasMagic(head[..n]))
        {
            return DiskSourceKind.Qcow2Image;
        }

        if (format == DiskFormat.Auto && Formats.Qed.QedHeader.HasMagic(head[..n]))
        {
            return DiskSourceKind.QedImage;
        }

        if (format == DiskFormat.Parallels)
        {
            throw new PrlFuseException(path, "is not a Parallels image (no WithoutFreeSpace or WithouFreSpacExt magic); drop --format parallels, or give the bundle folder");
        }

        foreach (var (magic, name) in ForeignFormats)
        {
            if (head[..n].StartsWith(magic))
            {
                throw new PrlFuseException(path, $"is a {name} image, which prlfuse does not read yet; convert it with 'qemu-img convert -O raw', or give --format raw to read its bytes as a raw disk");
            }
        }

        var text = head[..n].TrimStart((byte)0xEF).TrimStart((byte)0xBB).TrimStart((byte)0xBF).TrimStart(" \t\r\n"u8);
        bool xml = text.StartsWith("<?xml"u8) || text.StartsWith("<Parallels_disk_image"u8) || text.StartsWith("<Virtuozzo_disk_image"u8);
        return xml ? DiskSourceKind.Descriptor : DiskSourceKind.RawImage;
    }
}
