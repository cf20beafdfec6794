using PrlFuse.Core.IO;

namespace PrlFuse.Core.Formats.Parallels;

/// <summary>
/// Creates new image files for a bundle: an empty expandable image (header and an all-zero BAT, magic
/// <c>WithouFreSpacExt</c>, data area starting on a cluster boundary, as QEMU and Parallels Desktop make them) or a
/// preallocated plain (raw) one. Each is durable when this returns: the file fsync'd and, unless the caller batches
/// that itself, its folder too.
/// </summary>
public static class ParallelsImageCreator
{
    /// <summary>What Parallels Desktop uses (Blocksize 2048 sectors in its descriptors).</summary>
    public const long DefaultClusterBytes = 1 << 20;

    public const long MinClusterBytes = 4096;

    public const long MaxClusterBytes = 64L << 20;

    /// <summary>The geometry Parallels Desktop writes: 16 heads, 32 sectors per track.</summary>
    public const uint Heads = 16;

    public const uint SectorsPerTrack = 32;

    /// <summary>Cylinders for a disk of <paramref name="sectors"/> sectors in the 16x32 geometry (at least one).</summary>
    public static long CylindersFor(long sectors) => Math.Max(1, sectors / (Heads * SectorsPerTrack));

    /// <summary>Why a cluster size cannot be used, or null when it can.</summary>
    public static string? ClusterSizeProblem(long clusterBytes) =>
        clusterBytes < MinClusterBytes || clusterBytes > MaxClusterBytes || (clusterBytes & (clusterBytes - 1)) != 0
            ? $"cluster size {clusterBytes} bytes is not a power of two from {MinClusterBytes} bytes to {MaxClusterBytes >> 20} MiB"
            : null;

    /// <summary>Why a disk size cannot be used with this cluster size, or null when it can.</summary>
    public static string? SizeProblem(long sizeBytes, long clusterBytes)
    {
        if (sizeBytes <= 0 || sizeBytes % 512 != 0)
        {
            return $"size {sizeBytes} bytes is not a positive whole number of 512-byte sectors";
        }

        long entries = (sizeBytes + clusterBytes - 1) / clusterBytes;
        long sectors = sizeBytes / 512;
        return entries > ParallelsHeader.MaxBatEntries || sectors / (Heads * SectorsPerTrack) > uint.MaxValue
            ? $"size {sizeBytes} bytes is too large for {clusterBytes}-byte clusters (at most {ParallelsHeader.MaxBatEntries} clusters)"
            : null;
    }

    /// <summary>The header of an empty expandable image of <paramref name="sizeBytes"/> with clusters of <paramref name="clusterBytes"/>.</summary>
    public static ParallelsHeader HeaderFor(long sizeBytes, long clusterBytes)
    {
        if (ClusterSizeProblem(clusterBytes) is { } clusterProblem)
        {
            throw new ArgumentOutOfRangeException(nameof(clusterBytes), clusterProblem);
        }

        if (SizeProblem(sizeBytes, clusterBytes) is { } sizeProblem)
        {
            throw new ArgumentOutOfRangeException(nameof(sizeBytes), sizeProblem);
        }

        long sectors = sizeBytes / 512;
        uint clusterSectors = (uint)(clusterBytes / 512);
        uint entries = (uint)((sizeBytes + clusterBytes - 1) / clusterBytes);
        var header = new ParallelsHeader(
            ParallelsMagic.WithouFreSpacExt,
            ParallelsHeader.SupportedVersion,
            Heads,
            (uint)CylindersFor(sectors),
            clusterSectors,
            entries,
            (ulong)sectors,
            InUse: 0,
            DataOffsetSectors: 0,
            Flags: 0,
            ExtensionOffsetSectors: 0);
        return header with { DataOffsetSectors = checked((uint)header.MinimumDataOffsetSectors) };
    }

    /// <summary>
    /// Creates <paramref name="path"/> (which must not exist) as an empty expandable image: header, zero BAT up to the
    /// cluster-aligned data offset, nothing allocated. fsync'd; the folder too when <paramref name="syncFolder"/>.
    /// </summary>
    public static ParallelsHeader CreateExpandable(string path, long sizeBytes, long clusterBytes, DurableFiles? files = null, bool syncFolder = true)
    {
        files ??= DurableFiles.Real;
        var header = HeaderFor(sizeBytes, clusterBytes);
        long dataOffsetBytes = (long)header.DataOffsetSectors * 512;
        using (var file = files.CreateNew(path))
        {
            // The BAT is all zeros: the length change leaves it as a hole that reads as zeros, which is what QEMU
            // and Parallels read for an entry of an unallocated cluster.
            file.SetLength(dataOffsetBytes);
            Span<byte> bytes = stackalloc byte[FieldLocations.HeaderSize];
            header.WriteTo(bytes);
            file.Write(bytes, 0);
            file.Flush(dataOnly: false);
        }

        if (syncFolder)
        {
            files.SyncFolder(FolderOf(path));
        }

        return header;
    }

    /// <summary>
    /// Creates <paramref name="path"/> (which must not exist) as a plain image of <paramref name="sizeBytes"/> zeros,
    /// its space reserved on the host (fallocate) where the filesystem can, as Parallels preallocates plain disks.
    /// </summary>
    public static void CreatePlain(string path, long sizeBytes, DurableFiles? files = null, bool syncFolder = true)
    {
        files ??= DurableFiles.Real;
        if (sizeBytes <= 0 || sizeBytes % 512 != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(sizeBytes), $"size {sizeBytes} bytes is not a positive whole number of 512-byte sectors");
        }

        using (var file = files.CreateNew(path))
        {
            file.Allocate(0, sizeBytes);
            file.Flush(dataOnly: false);
        }

        if (syncFolder)
        {
            files.SyncFolder(FolderOf(path));
        }
    }

    private static string FolderOf(string path) => Path.GetDirectoryName(Path.GetFullPath(path)) ?? "/";
}
