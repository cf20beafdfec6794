using PrlFuse.Core.Formats;
using PrlFuse.Core.IO;

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
}

/// <summary>
/// The one place that turns what the user typed into a disk source: a bundle folder, the path of its
/// DiskDescriptor.xml, or a bare .hds image. Used by every command, so they all accept the same inputs.
/// </summary>
public static class DiskSource
{
    public static (string Path, DiskSourceKind Kind) Resolve(string path)
    {
        string full = System.IO.Path.GetFullPath(path);
        if (Directory.Exists(full))
        {
            string xml = System.IO.Path.Combine(full, "DiskDescriptor.xml");
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
        return (full, KindOf(full));
    }

    private static DiskSourceKind KindOf(string path)
    {
        if (path.EndsWith(".xml", StringComparison.OrdinalIgnoreCase))
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

        var text = head[..n].TrimStart((byte)0xEF).TrimStart((byte)0xBB).TrimStart((byte)0xBF).TrimStart(" \t\r\n"u8);
        bool xml = text.StartsWith("<?xml"u8) || text.StartsWith("<Parallels_disk_image"u8) || text.StartsWith("<Virtuozzo_disk_image"u8);
        return xml ? DiskSourceKind.Descriptor : DiskSourceKind.RawImage;
    }
}
