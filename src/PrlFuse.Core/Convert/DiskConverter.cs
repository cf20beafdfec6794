using System.Buffers;
using Microsoft.Win32.SafeHandles;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Export;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.IO;
using PrlFuse.Core.Management;

namespace PrlFuse.Core.Convert;

/// <summary>The image formats <see cref="DiskConverter"/> writes.</summary>
public enum ConvertFormat
{
    /// <summary>A Parallels bundle (NAME.hdd folder) as 'prlfuse create' makes it.</summary>
    Parallels,

    /// <summary>A qcow2 version 3 image.</summary>
    Qcow2,

    /// <summary>A raw disk file, sparse.</summary>
    Raw,
}

/// <summary>
/// Writes one view of a disk, flattened, as a new image of another format. Only the ranges the view's allocation
/// tables hold are read, and only the clusters of them that are not all zeros are written: unallocated stays
/// unallocated. The image is written under a temporary name beside the destination, made durable and renamed, so a
/// crash leaves no destination or the whole one; an existing destination is refused.
/// </summary>
public static class DiskConverter
{
    /// <summary>How much is read from the view at once: large sequential I/O.</summary>
    internal const int ChunkBytes = 4 << 20;

    /// <summary>The format a destination's name asks for, or null when its name does not say.</summary>
    public static ConvertFormat? FormatFromName(string destination)
    {
        ArgumentNullException.ThrowIfNull(destination);
        string extension = Path.GetExtension(destination.TrimEnd('/')).ToLowerInvariant();
        return extension switch
        {
            ".hdd" => ConvertFormat.Parallels,
            ".qcow2" => ConvertFormat.Qcow2,
            ".raw" or ".img" => ConvertFormat.Raw,
            _ => null,
        };
    }

    /// <summary>
    /// Converts <paramref name="view"/> to <paramref name="destination"/> in <paramref name="format"/>.
    /// <paramref name="clusterBytes"/>: the output's cluster size (null: the format's default); <paramref name="plain"/>:
    /// a preallocated Parallels image instead of an expandable one. <paramref name="progress"/> gets the guest bytes done.
    /// </summary>
    public static string Convert(SnapshotView view, string destination, ConvertFormat format, long? clusterBytes = null, bool plain = false, Action<long>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(view);
        ArgumentNullException.ThrowIfNull(destination);
        progress ??= static _ => { };
        string full = Path.GetFullPath(destination.TrimEnd('/'));
        if (Path.Exists(full) || new FileInfo(full).LinkTarget is not null)
        {
            throw new PrlFuseException(full, "already exists; convert never overwrites: give a new name or remove it first");
        }

        string folder = Path.GetDirectoryName(full) ?? "/";
        if (!Directory.Exists(folder))
        {
            throw new PrlFuseException(full, $"folder {folder} does not exist");
        }

        switch (format)
        {
            case ConvertFormat.Parallels:
                WriteBundle(view, full, clusterBytes ?? ParallelsImageCreator.DefaultClusterBytes, plain, progress);
                break;
            case ConvertFormat.Qcow2:
                WriteFileAndRename(full, handle => Qcow2Writer.Write(view, handle, clusterBytes ?? Qcow2Writer.DefaultClusterBytes, progress));
                break;
            case ConvertFormat.Raw:
                DiskExporter.Export(view, ExportDestination.ForPath(full), progress);
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(format));
        }

        return full;
    }

    /// <summary>
    /// Hands each run of the view's clusters (of <paramref name="clusterBytes"/>) that holds data and is not all zeros
    /// to <paramref name="write"/> (its guest offset and bytes, whole clusters; the last one may be short at the end of
    /// the disk). Holes are never read.
    /// </summary>
    internal static void ForEachDataRun(SnapshotView view, long clusterBytes, Action<long> progress, Action<long, ReadOnlySpan<byte>> write)
    {
        int chunk = (int)Math.Max(ChunkBytes, clusterBytes);
        byte[] buffer = ArrayPool<byte>.Shared.Rent(chunk);
        try
        {
            foreach (var (start, end) in DataClusters(view, clusterBytes))
            {
                for (long at = start; at < end; at += chunk)
                {
                    int n = (int)Math.Min(chunk, end - at);
                    var span = buffer.AsSpan(0, n);
                    view.Read(span, at);
                    int run = -1;
                    for (int p = 0; p < n; p += (int)clusterBytes)
                    {
                        var piece = span.Slice(p, (int)Math.Min(clusterBytes, n - p));
                        if (piece.ContainsAnyExcept((byte)0))
                        {
                            run = run < 0 ? p : run;
                        }
                        else if (run >= 0)
                        {
                            write(at + run, span[run..p]);
                            run = -1;
                        }
                    }

                    if (run >= 0)
                    {
                        write(at + run, span[run..]);
                    }

                    progress(at + n);
                }
            }

            progress(view.Size);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>The view's allocated ranges widened to whole clusters and merged, in order (from the tables; nothing read).</summary>
    internal static List<(long Start, long End)> DataClusters(SnapshotView view, long clusterBytes)
    {
        var ranges = new List<(long Start, long End)>();
        long offset = 0;
        while (offset < view.Size)
        {
            long data = view.SeekData(offset);
            if (data < 0)
            {
                break;
            }

            long hole = view.SeekHole(data);
            long start = data / clusterBytes * clusterBytes;
            long end = Math.Min(view.Size, (hole + clusterBytes - 1) / clusterBytes * clusterBytes);
            if (ranges.Count > 0 && ranges[^1].End >= start)
            {
                ranges[^1] = (ranges[^1].Start, Math.Max(ranges[^1].End, end));
            }
            else
            {
                ranges.Add((start, end));
            }

            offset = Math.Max(hole, end);
        }

        return ranges;
    }

    private static void WriteBundle(SnapshotView view, string full, long clusterBytes, bool plain, Action<long> progress)
    {
        // The bundle is built whole in a hidden folder beside the destination and renamed into place: its image files
        // are named after the bundle, so it is built under its final name inside that folder.
        string parent = Path.GetDirectoryName(full)!;
        string work = Path.Combine(parent, $".prlfuse-convert-{Guid.NewGuid():N}");
        Directory.CreateDirectory(work);
        try
        {
            string bundle = BundleCreator.Create(Path.Combine(work, Path.GetFileName(full)), view.Size, plain, clusterBytes);
            using (var disk = VirtualDisk.Open(bundle, new DiskOpenOptions { ReadOnly = false, CacheBytes = 0 }))
            {
                var top = disk.Top;
                ForEachDataRun(view, plain ? ParallelsImageCreator.DefaultClusterBytes : clusterBytes, progress, (offset, data) => top.Write(data, offset));
                top.Flush();
            }

            Directory.Move(bundle, full);
            Sync(full, PosixSync.FSyncFolder(parent), "fsync of the folder");
        }
        finally
        {
            if (Directory.Exists(work))
            {
                Directory.Delete(work, recursive: true);
            }
        }
    }

    private static void WriteFileAndRename(string full, Action<SafeFileHandle> write)
    {
        string folder = Path.GetDirectoryName(full)!;
        string temp = Path.Combine(folder, $".{Path.GetFileName(full)}.{Guid.NewGuid():N}.partial");
        try
        {
            using (var handle = File.OpenHandle(temp, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None))
            {
                write(handle);
                Sync(full, PosixSync.FSync(handle), "fsync");
            }

            File.Move(temp, full, overwrite: false);
        }
        catch (IOException e)
        {
            File.Delete(temp);
            throw new PrlFuseException(full, $"writing failed: {e.Message}", e);
        }
        catch
        {
            File.Delete(temp);
            throw;
        }

        // The rename is durable only once the folder is.
        Sync(full, PosixSync.FSyncFolder(folder), "fsync of the folder");
    }

    private static void Sync(string full, int errno, string what)
    {
        if (errno != 0)
        {
            throw new PrlFuseException(full, $"{what} failed (errno {errno}); the converted image may not be durable");
        }
    }
}
