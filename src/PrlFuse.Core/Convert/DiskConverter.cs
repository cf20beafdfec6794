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

    /// <summary>A QED image.</summary>
    Qed,
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

    /// <summary>Why <paramref name="clusterBytes"/> cannot be a cluster size of <paramref name="format"/>, or null when it can (or the format has none).</summary>
    public static string? ClusterSizeProblem(ConvertFormat format, long clusterBytes) => format switch
    {
        ConvertFormat.Qcow2 => Qcow2Writer.ClusterSizeProblem(clusterBytes),
        ConvertFormat.Qed => QedWriter.ClusterSizeProblem(clusterBytes),
        _ => null,
    };

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
            ".qed" => ConvertFormat.Qed,
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
        string full = CheckDestination(destination);
        switch (format)
        {
            case ConvertFormat.Parallels:
                WriteBundle(view, full, clusterBytes ?? ParallelsImageCreator.DefaultClusterBytes, plain, progress);
                break;
            case ConvertFormat.Qcow2:
                WriteFileAndRename(full, handle => Qcow2Writer.Write(view, handle, clusterBytes ?? Qcow2Writer.DefaultClusterBytes, progress));
                break;
            case ConvertFormat.Qed:
                WriteFileAndRename(full, handle => QedWriter.Write(view, handle, clusterBytes ?? QedWriter.DefaultClusterBytes, progress));
                break;
            case ConvertFormat.Raw:
                DiskExporter.Export(view, ExportDestination.ForPath(full), progress);
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(format));
        }

        return full;
    }

    /// <summary>The full path of <paramref name="destination"/>, refused when it exists or its folder does not.</summary>
    internal static string CheckDestination(string destination)
    {
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

        return full;
    }

    /// <summary>The hidden name beside <paramref name="full"/> a file is written under until it is durable.</summary>
    internal static string TemporaryName(string full) =>
        Path.Combine(Path.GetDirectoryName(full)!, $".{Path.GetFileName(full)}.{Guid.NewGuid():N}.partial");

    /// <summary>
    /// Builds a bundle in a hidden folder beside <paramref name="full"/> (<paramref name="build"/> gets the path to create
    /// it at and returns the bundle's full path) and renames it into place; the folder is made durable.
    /// </summary>
    internal static string BuildBundle(string full, Func<string, string> build)
    {
        // The bundle's image files are named after the bundle, so it is built under its final name inside that folder.
        string parent = Path.GetDirectoryName(full)!;
        string work = Path.Combine(parent, $".prlfuse-convert-{Guid.NewGuid():N}");
        Directory.CreateDirectory(work);
        try
        {
            string bundle = build(Path.Combine(work, Path.GetFileName(full)));
            Directory.Move(bundle, full);
            Sync(full, PosixSync.FSyncFolder(parent), "fsync of the folder");
            return full;
        }
        finally
        {
            if (Directory.Exists(work))
            {
                Directory.Delete(work, recursive: true);
            }
        }
    }

    internal static void Sync(string full, int errno, string what)
    {
        if (errno != 0)
        {
            throw new PrlFuseException(full, $"{what} failed (errno {errno}); the converted image may not be durable");
        }
    }

    /// <summary>
    /// Hands each run of the view's clusters (of <paramref name="clusterBytes"/>) that holds data and is not all zeros
    /// to <paramref name="write"/> (its guest offset and bytes, whole clusters; the last one may be short at the end of
    /// the disk). Holes are never read.
    /// </summary>
    internal static void ForEachDataRun(SnapshotView view, long clusterBytes, Action<long> progress, Action<long, ReadOnlySpan<byte>> write) =>
        ForEachChangedRun(view, null, DataClusters(view, clusterBytes), clusterBytes, progress, write, static (_, _) => { });

    /// <summary>
    /// Reads <paramref name="ranges"/> (whole clusters of <paramref name="clusterBytes"/>, in order) of
    /// <paramref name="view"/> and hands on the runs of clusters that differ from <paramref name="parent"/> (from zeros
    /// when there is none): those that hold data to <paramref name="write"/>, those that read as zeros (only where the
    /// parent holds data) to <paramref name="zeros"/> (guest offset and length). Clusters equal to the parent's are
    /// skipped. <paramref name="progress"/> gets the guest offset reached.
    /// </summary>
    internal static void ForEachChangedRun(SnapshotView view, SnapshotView? parent, List<(long Start, long End)> ranges, long clusterBytes, Action<long> progress, Action<long, ReadOnlySpan<byte>> write, Action<long, long> zeros)
    {
        int chunk = (int)Math.Max(ChunkBytes, clusterBytes);
        var chunks = new List<(long At, int Length)>();
        foreach (var (start, end) in ranges)
        {
            for (long at = start; at < end; at += chunk)
            {
                chunks.Add((at, (int)Math.Min(chunk, end - at)));
            }
        }

        // Two sets of buffers: the next chunk is read (from the source's page cache or disk) on another thread while this
        // one is compared and written, so reading and writing overlap instead of taking turns.
        var sets = new (byte[] Data, byte[]? Parent)[2];
        for (int i = 0; i < sets.Length; i++)
        {
            sets[i] = (ArrayPool<byte>.Shared.Rent(chunk), parent is null ? null : ArrayPool<byte>.Shared.Rent(chunk));
        }

        Task? ahead = null;
        try
        {
            ahead = chunks.Count > 0 ? Task.Run(() => ReadChunk(chunks[0], sets[0])) : null;
            for (int k = 0; k < chunks.Count; k++)
            {
                ahead!.GetAwaiter().GetResult();
                var (at, n) = chunks[k];
                var (buffer, parentBuffer) = sets[k & 1];
                if (k + 1 < chunks.Count)
                {
                    var next = chunks[k + 1];
                    var nextSet = sets[(k + 1) & 1];
                    ahead = Task.Run(() => ReadChunk(next, nextSet));
                }
                else
                {
                    ahead = null;
                }

                HandOnChanges(buffer, parentBuffer, at, n);
                progress(at + n);
            }

            progress(view.Size);
        }
        finally
        {
            // A read still running owns its buffers until it ends (a failure of the write side must not return them early).
            try
            {
                ahead?.Wait();
            }
            catch (AggregateException)
            {
                // The write side's failure is the one to report.
            }

            foreach (var (data, parentData) in sets)
            {
                ArrayPool<byte>.Shared.Return(data);
                if (parentData is not null)
                {
                    ArrayPool<byte>.Shared.Return(parentData);
                }
            }
        }

        void ReadChunk((long At, int Length) c, (byte[] Data, byte[]? Parent) set)
        {
            view.Read(set.Data.AsSpan(0, c.Length), c.At);
            if (parent is not null)
            {
                // A parent smaller than the view reads as zeros past its end.
                var parentSpan = set.Parent.AsSpan(0, c.Length);
                int got = parent.Read(parentSpan, c.At);
                parentSpan[got..].Clear();
            }
        }

        void HandOnChanges(byte[] buffer, byte[]? parentBuffer, long at, int n)
        {
            var span = buffer.AsSpan(0, n);
            var parentSpan = parentBuffer is null ? default : parentBuffer.AsSpan(0, n);

            // The run being gathered: its start in the chunk, and whether it is a run of zero clusters.
            int run = -1;
            bool runZeros = false;
            for (int p = 0; p < n; p += (int)clusterBytes)
            {
                int length = (int)Math.Min(clusterBytes, n - p);
                var piece = span.Slice(p, length);
                bool changed = parent is null ? piece.ContainsAnyExcept((byte)0) : !piece.SequenceEqual(parentSpan.Slice(p, length));
                bool isZeros = changed && parent is not null && !piece.ContainsAnyExcept((byte)0);
                if (run >= 0 && (!changed || isZeros != runZeros))
                {
                    HandOn(buffer, at, run, p, runZeros);
                    run = -1;
                }

                if (changed && run < 0)
                {
                    run = p;
                    runZeros = isZeros;
                }
            }

            if (run >= 0)
            {
                HandOn(buffer, at, run, n, runZeros);
            }
        }

        void HandOn(byte[] buffer, long at, int from, int to, bool isZeros)
        {
            if (isZeros)
            {
                zeros(at + from, to - from);
            }
            else
            {
                write(at + from, buffer.AsSpan(from, to - from));
            }
        }
    }

    /// <summary>
    /// The ranges, widened to whole clusters and merged, where <paramref name="view"/>'s own layer (the first of each
    /// storage's chain) holds anything, data or zeros: where it may differ from the view of its parent snapshot (from the
    /// tables; nothing read).
    /// </summary>
    internal static List<(long Start, long End)> OwnClusters(SnapshotView view, long clusterBytes)
    {
        var ranges = new List<(long Start, long End)>();
        for (long offset = 0; offset < view.Size;)
        {
            var extent = view.GetExtent(offset, view.Size - offset);
            if (extent.Depth == 0)
            {
                AddWidened(ranges, offset, offset + extent.Length, clusterBytes, view.Size);
            }

            offset += extent.Length;
        }

        return ranges;
    }

    /// <summary>Both lists of ranges merged, in order.</summary>
    internal static List<(long Start, long End)> Union(List<(long Start, long End)> a, List<(long Start, long End)> b)
    {
        var merged = new List<(long Start, long End)>();
        foreach (var (start, end) in a.Concat(b).OrderBy(r => r.Start))
        {
            if (merged.Count > 0 && merged[^1].End >= start)
            {
                merged[^1] = (merged[^1].Start, Math.Max(merged[^1].End, end));
            }
            else
            {
                merged.Add((start, end));
            }
        }

        return merged;
    }

    private static void AddWidened(List<(long Start, long End)> ranges, long data, long hole, long clusterBytes, long size)
    {
        long start = data / clusterBytes * clusterBytes;
        long end = Math.Min(size, (hole + clusterBytes - 1) / clusterBytes * clusterBytes);
        if (ranges.Count > 0 && ranges[^1].End >= start)
        {
            ranges[^1] = (ranges[^1].Start, Math.Max(ranges[^1].End, end));
        }
        else
        {
            ranges.Add((start, end));
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
            AddWidened(ranges, data, hole, clusterBytes, view.Size);
            offset = Math.Max(hole, ranges[^1].End);
        }

        return ranges;
    }

    private static void WriteBundle(SnapshotView view, string full, long clusterBytes, bool plain, Action<long> progress) =>
        BuildBundle(full, path =>
        {
            string bundle = BundleCreator.Create(path, view.Size, plain, clusterBytes);
            using (var disk = VirtualDisk.Open(bundle, new DiskOpenOptions { ReadOnly = false, CacheBytes = 0 }))
            {
                var top = disk.Top;
                ForEachDataRun(view, plain ? ParallelsImageCreator.DefaultClusterBytes : clusterBytes, progress, (offset, data) => top.Write(data, offset));
                top.Flush();
            }

            return bundle;
        });

    private static void WriteFileAndRename(string full, Action<SafeFileHandle> write)
    {
        string folder = Path.GetDirectoryName(full)!;
        string temp = TemporaryName(full);
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
}
