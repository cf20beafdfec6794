using System.Globalization;

namespace PrlFuse.Fuse.Native;

/// <summary>
/// What libfuse needs to splice read_buf replies. libfuse 3.14 splices a reply through a per-thread pipe that it
/// grows to about 4 KiB * (pieces + 2) + 16 + data bytes; when the pipe cannot grow that far (pipe-max-size, 1 MiB
/// by default, and no CAP_SYS_RESOURCE) it copies the reply instead, allocating a buffer per request, which is slower
/// than not splicing. A 1 MiB read needs a 2 MiB pipe (sizes are powers of two pages), so without privilege the
/// reads must be a little smaller than 1 MiB to be spliced.
/// </summary>
public static class FuseSplice
{
    private const int PageSize = 4096;
    private const int OutHeaderBytes = 16;

    /// <summary>The kernel's largest request with libfuse 3.14 (max_pages 256).</summary>
    public const int KernelMaxRead = 1024 * 1024;

    /// <summary>libfuse's pipe size for a reply of <paramref name="bytes"/> in <paramref name="pieces"/> pieces.</summary>
    public static int PipeBytesFor(int bytes, int pieces) => (PageSize * (pieces + 2)) + OutHeaderBytes + bytes;

    /// <summary>
    /// The max_read to mount with so that a read of up to <paramref name="pieces"/> pieces can be spliced: null when the
    /// pipe can grow enough for <see cref="KernelMaxRead"/> (no limit needed), else the largest page multiple that fits.
    /// Null too when pipes cannot be resized at all (splicing is then never used, nothing to gain from smaller reads).
    /// </summary>
    public static unsafe uint? LargestSplicedRead(int pieces = 2)
    {
        int* fds = stackalloc int[2];
        if (Posix.Pipe2(fds, Posix.OCloexec) != 0)
        {
            return null;
        }

        try
        {
            if (Posix.Fcntl(fds[0], Posix.FSetPipeSize, PipeBytesFor(KernelMaxRead, pieces)) >= 0)
            {
                return null;
            }

            int max = ReadPipeMaxSize();
            int size = max > 0 ? Posix.Fcntl(fds[0], Posix.FSetPipeSize, max) : -1;
            if (size <= 0)
            {
                return null;
            }

            int bytes = (size - PipeBytesFor(0, pieces)) / PageSize * PageSize;
            return bytes >= 128 * 1024 ? (uint)Math.Min(bytes, KernelMaxRead) : null;
        }
        finally
        {
            Posix.Close(fds[0]);
            Posix.Close(fds[1]);
        }
    }

    private static int ReadPipeMaxSize()
    {
        try
        {
            return int.Parse(File.ReadAllText("/proc/sys/fs/pipe-max-size").Trim(), CultureInfo.InvariantCulture);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or OverflowException)
        {
            return 0;
        }
    }
}
