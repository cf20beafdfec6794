using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.IO;

namespace PrlFuse.Core.Management;

/// <summary>
/// Every effect a management operation (delete, merge, switch, resize, compact) has on a bundle's files, in one place:
/// image files opened, images created, descriptors stored, images unlinked. The operations go through it only, so a test can record the effects in the
/// order they happen and replay every prefix of them as a crash would leave the disk.
/// </summary>
public class BundleFiles
{
    /// <summary>The effects as they really happen.</summary>
    public static readonly BundleFiles Real = new();

    /// <summary>The durable file operations the descriptor store and the image creator go through.</summary>
    protected virtual DurableFiles Durable => DurableFiles.Real;

    /// <summary>Opens an image file (see <see cref="PositionalImageFile.Open(string, bool)"/>).</summary>
    public virtual ImageFile OpenImage(string path, bool writable) => PositionalImageFile.Open(path, writable);

    /// <summary>Replaces the descriptor at <paramref name="descriptorPath"/> atomically and durably (<see cref="DescriptorStore"/>).</summary>
    public virtual void StoreDescriptor(string descriptorPath, DiskDescriptor descriptor) => DescriptorStore.Write(descriptorPath, descriptor, Durable);

    /// <summary>Creates an empty expandable image, durable with its name, before any descriptor names it.</summary>
    public virtual void CreateExpandable(string path, long sizeBytes, long clusterBytes) => ParallelsImageCreator.CreateExpandable(path, sizeBytes, clusterBytes, Durable);

    /// <summary>Removes an image file that no descriptor names any more, durably (its folder is synced).</summary>
    public virtual void Unlink(string path)
    {
        Durable.Delete(path);
        Durable.SyncFolder(Path.GetDirectoryName(Path.GetFullPath(path)) ?? "/");
    }
}
