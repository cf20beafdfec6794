using System.Buffers;
using System.Globalization;
using Microsoft.Win32.SafeHandles;
using PrlFuse.Core.Engine;
using PrlFuse.Core.IO;

namespace PrlFuse.Core.Export;

/// <summary>
/// Writes one snapshot as a raw disk to an <see cref="ExportDestination"/>, as its kind dictates: a file is created
/// sparse under a temporary name beside the final one, made durable and renamed (an interrupted export leaves the old
/// file or none, never a torn one); a device, a FIFO or a stream is written through in place, every byte.
/// </summary>
public static class DiskExporter
{
    private const int ChunkBytes = 4 << 20;

    /// <summary>All-zero pieces of this size inside allocated ranges become holes in a file too.</summary>
    private const int HoleGranule = 64 << 10;

    /// <summary>Exports <paramref name="view"/>; <paramref name="progress"/> gets the bytes done so far.</summary>
    public static void Export(SnapshotView view, ExportDestination destination, Action<long>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(view);
        ArgumentNullException.ThrowIfNull(destination);
        progress ??= static _ => { };
        switch (destination.Kind)
        {
            case ExportTargetKind.NewFile:
            case ExportTargetKind.RegularFile:
                WriteFileAndRename(view, destination, progress);
                break;
            case ExportTargetKind.BlockDevice:
                WriteBlockDevice(view, destination, progress);
                break;
            case ExportTargetKind.CharacterDevice:
            case ExportTargetKind.Fifo:
                // Opening a FIFO waits for its reader, as 'cat > fifo' does. No O_TRUNC, no seek: written in order.
                using (var stream = Open(destination, () => new FileStream(destination.Target, FileMode.Open, FileAccess.Write, FileShare.ReadWrite, 0)))
                {
                    WriteInOrder(view, destination, stream, progress);
                }

                break;
            case ExportTargetKind.Stream:
                WriteInOrder(view, destination, destination.Stream!, progress);
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(destination));
        }
    }

    private static void WriteFileAndRename(SnapshotView view, ExportDestination destination, Action<long> progress)
    {
        string target = destination.Target;
        string folder = Path.GetDirectoryName(target)!;
        string temp = Path.Combine(folder, $".{Path.GetFileName(target)}.{Guid.NewGuid():N}.partial");
        try
        {
            using (var handle = Open(destination, () => File.OpenHandle(temp, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None), folder))
            {
                if (destination.ExistingMode is { } mode)
                {
                    File.SetUnixFileMode(handle, mode);
                }

                Write(destination, () =>
                {
                    RandomAccess.SetLength(handle, view.Size);
                    Copy(view, progress, (data, offset) => WriteSparse(handle, data, offset), zeros: null);
                    Check(destination, PosixSync.FSync(handle), "fsync");
                });
            }

            File.Move(temp, target, overwrite: true);
        }
        catch
        {
            File.Delete(temp);
            throw;
        }

        // The rename is durable only once the folder is: until then a crash may bring back the old file.
        Check(destination, PosixSync.FSyncFolder(folder), "fsync of the folder");
    }

    private static void WriteBlockDevice(SnapshotView view, ExportDestination destination, Action<long> progress)
    {
        using var handle = Open(destination, () => File.OpenHandle(destination.Target, FileMode.Open, FileAccess.Write, FileShare.ReadWrite));
        long size = PosixSync.DeviceSize(handle);
        if (size < view.Size)
        {
            throw new PrlFuseException(destination.Named, string.Create(CultureInfo.InvariantCulture,
                $"block device holds {size} bytes, less than the disk's {view.Size} bytes; choose a device at least that large"));
        }

        byte[] zeros = new byte[ChunkBytes];
        Write(destination, () =>
        {
            Copy(view, progress, (data, offset) => RandomAccess.Write(handle, data, offset), zeros);
            Check(destination, PosixSync.FSync(handle), "fsync");
        });
    }

    private static void WriteInOrder(SnapshotView view, ExportDestination destination, Stream stream, Action<long> progress)
    {
        byte[] zeros = new byte[ChunkBytes];
        Write(destination, () =>
        {
            Copy(view, progress, (data, _) => stream.Write(data), zeros);
            stream.Flush();
        });
    }

    /// <summary>
    /// Walks the view's data and holes in order (SeekData/SeekHole, from the allocation tables) and hands each piece to
    /// <paramref name="write"/>: data as read, holes as <paramref name="zeros"/>, or not at all when
    /// <paramref name="zeros"/> is null (they stay holes). A hole is never read.
    /// </summary>
    private static void Copy(SnapshotView view, Action<long> progress, Action<ReadOnlySpan<byte>, long> write, byte[]? zeros)
    {
        // The pieces in order, from the allocation tables (nothing read): holes, and data in chunks.
        var pieces = new List<(long At, int Length, bool Data)>();
        for (long offset = 0; offset < view.Size;)
        {
            long data = view.SeekData(offset);
            long holeEnd = data < 0 ? view.Size : data;
            for (long at = offset; at < holeEnd; at += ChunkBytes)
            {
                pieces.Add((at, (int)Math.Min(ChunkBytes, holeEnd - at), false));
            }

            if (data < 0)
            {
                break;
            }

            long dataEnd = view.SeekHole(data);
            for (long at = data; at < dataEnd; at += ChunkBytes)
            {
                pieces.Add((at, (int)Math.Min(ChunkBytes, dataEnd - at), true));
            }

            offset = dataEnd;
        }

        // Two buffers: the next data chunk is read on another thread while this one is written, so reading and writing
        // overlap instead of taking turns.
        byte[][] buffers = [ArrayPool<byte>.Shared.Rent(ChunkBytes), ArrayPool<byte>.Shared.Rent(ChunkBytes)];
        int turn = 0;
        Task? ahead = null;
        int aheadIndex = -1;
        try
        {
            for (int k = 0; k < pieces.Count; k++)
            {
                var (at, length, isData) = pieces[k];
                if (!isData)
                {
                    if (zeros is not null)
                    {
                        write(zeros.AsSpan(0, length), at);
                    }

                    progress(at + length);
                    continue;
                }

                byte[] buffer = buffers[turn];
                if (aheadIndex == k)
                {
                    ahead!.GetAwaiter().GetResult();
                }
                else
                {
                    view.Read(buffer.AsSpan(0, length), at);
                }

                ahead = null;
                aheadIndex = pieces.FindIndex(k + 1, p => p.Data);
                if (aheadIndex >= 0)
                {
                    var (nextAt, nextLength, _) = pieces[aheadIndex];
                    byte[] nextBuffer = buffers[turn ^ 1];
                    ahead = Task.Run(() => view.Read(nextBuffer.AsSpan(0, nextLength), nextAt));
                }

                write(buffer.AsSpan(0, length), at);
                progress(at + length);
                turn ^= 1;
            }
        }
        finally
        {
            // A read still running owns its buffer until it ends; the write side's failure is the one to report.
            try
            {
                ahead?.Wait();
            }
            catch (AggregateException)
            {
            }

            ArrayPool<byte>.Shared.Return(buffers[0]);
            ArrayPool<byte>.Shared.Return(buffers[1]);
        }
    }

    /// <summary>Writes only the pieces that are not all zeros: the file was sized first, so the rest reads as zeros.</summary>
    private static void WriteSparse(SafeFileHandle handle, ReadOnlySpan<byte> data, long offset)
    {
        int start = -1;
        for (int p = 0; p < data.Length; p += HoleGranule)
        {
            var piece = data.Slice(p, Math.Min(HoleGranule, data.Length - p));
            if (piece.ContainsAnyExcept((byte)0))
            {
                start = start < 0 ? p : start;
            }
            else if (start >= 0)
            {
                RandomAccess.Write(handle, data[start..p], offset + start);
                start = -1;
            }
        }

        if (start >= 0)
        {
            RandomAccess.Write(handle, data[start..], offset + start);
        }
    }

    private static T Open<T>(ExportDestination destination, Func<T> open, string? creatingIn = null)
    {
        try
        {
            return open();
        }
        catch (UnauthorizedAccessException e)
        {
            string what = creatingIn is null ? "permission denied opening it for writing" : $"permission denied creating a file in {creatingIn}";
            throw new PrlFuseException(destination.Named, what, e);
        }
        catch (IOException e)
        {
            string what = creatingIn is null ? "cannot open it for writing" : $"cannot create a file in {creatingIn}";
            throw new PrlFuseException(destination.Named, $"{what}: {Reason(e)}", e);
        }
    }

    private static void Write(ExportDestination destination, Action write)
    {
        try
        {
            write();
        }
        catch (IOException e)
        {
            throw new PrlFuseException(destination.Named, $"writing failed: {Reason(e)}", e);
        }
    }

    private static void Check(ExportDestination destination, int errno, string what)
    {
        // A FIFO or character device cannot be synced (EINVAL): nothing of it is kept anyway.
        if (errno != 0 && errno != 22)
        {
            throw new PrlFuseException(destination.Named, $"{what} failed (errno {errno}); the export may not be durable");
        }
    }

    /// <summary>.NET's messages end with " : 'path'"; the path is already said once.</summary>
    private static string Reason(IOException e)
    {
        string m = e.Message;
        int quote = m.IndexOf(" : '", StringComparison.Ordinal);
        return quote > 0 ? m[..quote] : m;
    }
}
