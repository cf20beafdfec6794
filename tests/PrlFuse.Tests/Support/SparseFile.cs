using System.Globalization;
using Microsoft.Win32.SafeHandles;
using PrlFuse.Core.IO;

namespace PrlFuse.Tests.Support;

/// <summary>A file's holes as the tools that skip them see them: lseek SEEK_DATA/SEEK_HOLE, and the host's allocation.</summary>
public static class SparseFile
{
    public const int SeekData = 3;
    public const int SeekHole = 4;

    /// <summary>lseek's answer, or the negated errno (-<see cref="Errno.ENXIO"/>: no data, or past the end).</summary>
    public static long Seek(SafeFileHandle handle, long offset, int whence)
    {
        long result = Posix.LSeek(handle, offset, whence);
        return result >= 0 ? result : -Posix.LastError;
    }

    /// <summary>The data ranges (start, end) the file reports, walking SEEK_DATA and SEEK_HOLE from 0 as cp --sparse does.</summary>
    public static List<(long Start, long End)> DataRanges(string path)
    {
        using var handle = File.OpenHandle(path);
        long size = RandomAccess.GetLength(handle);
        var ranges = new List<(long Start, long End)>();
        long offset = 0;
        while (offset < size)
        {
            long data = Seek(handle, offset, SeekData);
            if (data == -Errno.ENXIO)
            {
                break;
            }

            Assert.True(data >= offset, $"{path}: SEEK_DATA at {offset} answered {data}");
            long hole = Seek(handle, data, SeekHole);
            Assert.True(hole > data && hole <= size, $"{path}: SEEK_HOLE at {data} answered {hole} (size {size})");
            ranges.Add((data, hole));
            offset = hole;
        }

        return ranges;
    }

    /// <summary>Bytes the host filesystem holds for the file (st_blocks), what `du` counts.</summary>
    public static long AllocatedBytes(string path) =>
        long.Parse(ProcessRunner.Run("stat", "-c", "%b", path).Stdout.Trim(), CultureInfo.InvariantCulture) * 512;
}
