using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Engine;

namespace PrlFuse.Core.Management;

/// <summary>
/// A bundle opened for a management operation: its descriptor path, and the disk opened read-write so that its image
/// locks are held for the whole operation (QEMU's locks: a mount, a QEMU or another prlfuse writing the disk makes the
/// open fail, and none can start writing until this is disposed).
/// </summary>
public sealed class ManagedDisk : IDisposable
{
    private ManagedDisk(string descriptorPath, VirtualDisk disk)
    {
        DescriptorPath = descriptorPath;
        Disk = disk;
    }

    public string DescriptorPath { get; }

    public string BundleFolder => Path.GetDirectoryName(DescriptorPath) ?? "/";

    public VirtualDisk Disk { get; }

    public DiskDescriptor Descriptor => Disk.Descriptor;

    public SnapshotTree Tree => Disk.Tree;

    /// <summary>Opens a bundle for <paramref name="operation"/> (named in refusals), refusing bare images and disks in use or damaged.</summary>
    public static ManagedDisk Open(string path, string operation, bool allowImagesOutsideBundle = false)
    {
        var (full, kind) = DiskSource.Resolve(path);
        if (kind != DiskSourceKind.Descriptor)
        {
            throw new PrlFuseException(full, $"is a bare image, which has no DiskDescriptor.xml to record {operation} in; give a disk bundle (NAME.hdd)");
        }

        VirtualDisk disk;
        try
        {
            disk = VirtualDisk.Open(full, new DiskOpenOptions { ReadOnly = false, AllowImagesOutsideBundle = allowImagesOutsideBundle });
        }
        catch (ImageInUseException e)
        {
            throw new PrlFuseException(e.ImagePath, $"{operation} refused: the disk is in use ({e.Holder}); unmount it or stop the program using it first");
        }

        try
        {
            if (disk.ReadOnlyPlaceReason is { } readOnly)
            {
                throw new PrlFuseException(full, $"{operation} refused: {readOnly}");
            }

            if (disk.DiskWarnings.FirstOrDefault(w => w.Code is WarningCodes.NotClosedCleanly or WarningCodes.DamagedClusters or WarningCodes.InUseByOtherWriter or WarningCodes.TopHasChildren) is { } problem)
            {
                throw new PrlFuseException(full, $"{operation} refused: {problem.Message}; run 'prlfuse check --repair' first");
            }

            return new ManagedDisk(full, disk);
        }
        catch
        {
            disk.Dispose();
            throw;
        }
    }

    public void Dispose() => Disk.Dispose();
}
