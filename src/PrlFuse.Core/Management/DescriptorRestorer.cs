using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.IO;

namespace PrlFuse.Core.Management;

/// <summary>An image file found in a bundle folder: an expandable image (with its header's size and cluster) or a raw one.</summary>
public sealed record FoundImage(string File, ImageType Type, long SizeBytes, long ClusterBytes, long FileBytes);

/// <summary>What <see cref="DescriptorRestorer.Restore"/> found, and whether it wrote a descriptor.</summary>
public sealed record RestoreResult(string DescriptorPath, IReadOnlyList<FoundImage> Images, bool Written);

/// <summary>
/// Gives a bundle whose DiskDescriptor.xml is lost a new one when its images leave no doubt: exactly one image, which is
/// then the whole disk. Several images are a chain (or a split disk) whose order only the lost descriptor knew, so
/// then nothing is written and what was found is listed.
/// </summary>
public static class DescriptorRestorer
{
    public static RestoreResult Restore(string folder, DurableFiles? files = null)
    {
        string full = Path.GetFullPath(folder.TrimEnd('/'));
        if (!Directory.Exists(full))
        {
            throw new PrlFuseException(full, "no such folder; give the bundle folder (NAME.hdd) whose DiskDescriptor.xml is lost");
        }

        string xml = Path.Combine(full, DescriptorStore.FileName);
        if (File.Exists(xml) && Parses(xml))
        {
            throw new PrlFuseException(xml, "exists and reads fine; restore-descriptor only writes a lost or unreadable one");
        }

        var images = FindImages(full);
        if (images.Count != 1)
        {
            return new RestoreResult(xml, images, Written: false);
        }

        var image = images[0];
        string name = Path.GetFileNameWithoutExtension(Path.GetFileName(full));
        long clusterSectors = (image.Type == ImageType.Compressed ? image.ClusterBytes : ParallelsImageCreator.DefaultClusterBytes) / 512;
        var descriptor = BundleCreator.NewDescriptor(name, image.SizeBytes / 512, clusterSectors, image.Type, image.File);
        DescriptorStore.Write(xml, descriptor, files);
        return new RestoreResult(xml, images, Written: true);
    }

    private static bool Parses(string xml)
    {
        try
        {
            DescriptorParser.ParseFile(xml);
            return true;
        }
        catch (DescriptorException)
        {
            return false;
        }
    }

    /// <summary>
    /// The folder's image files: every <c>.hds</c> file, and any other regular file with a Parallels header. The
    /// empty file of the bundle's own name and the descriptor's own files are not images.
    /// </summary>
    public static List<FoundImage> FindImages(string folder)
    {
        var found = new List<FoundImage>();
        Span<byte> head = stackalloc byte[FieldLocations.HeaderSize];
        foreach (string path in Directory.EnumerateFiles(folder).Order(StringComparer.Ordinal))
        {
            string file = Path.GetFileName(path);
            if (file.StartsWith(DescriptorStore.FileName, StringComparison.Ordinal) || new FileInfo(path).LinkTarget is not null)
            {
                continue;
            }

            int n;
            long length;
            using (var handle = File.OpenHandle(path))
            {
                n = RandomAccess.Read(handle, head, 0);
                length = RandomAccess.GetLength(handle);
            }

            if (ParallelsHeader.TryRead(head[..n], out var header, out _))
            {
                found.Add(new FoundImage(file, ImageType.Compressed, (long)header.SectorCount * 512, header.ClusterBytes, length));
            }
            else if (file.EndsWith(".hds", StringComparison.OrdinalIgnoreCase) && length > 0 && length % 512 == 0)
            {
                found.Add(new FoundImage(file, ImageType.Plain, length, 0, length));
            }
        }

        return found;
    }
}
