using Microsoft.Win32.SafeHandles;

namespace PrlFuse.Core.IO;

/// <summary>fsync, fdatasync, fallocate, fadvise and an O_DIRECT open: the BCL has fsync only (Flush(true)); we want the cheaper fdatasync for data.</summary>
internal static class PosixSync
{
    private const int FadviseWillNeed_ = 3; // POSIX_FADV_WILLNEED

    /// <summary>fallocate(2) mode 0 (reserve, extend the size): 0 or the errno.</summary>
    public static int Fallocate(SafeFileHandle fd, long offset, long length) =>
        Posix.Fallocate(fd, 0, offset, length) == 0 ? 0 : Posix.LastError;

    /// <summary>
    /// fallocate(2) FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE: the range reads as zeros and its blocks are released.
    /// 0 or the errno.
    /// </summary>
    public static int PunchHole(SafeFileHandle fd, long offset, long length) =>
        Posix.Fallocate(fd, PunchHoleMode, offset, length) == 0 ? 0 : Posix.LastError;

    private const int PunchHoleMode = 0x02 | 0x01; // FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE

    /// <summary>posix_fadvise(POSIX_FADV_WILLNEED): 0 or the error number.</summary>
    public static int FadviseWillNeed(SafeFileHandle fd, long offset, long length) => Posix.Fadvise(fd, offset, length, FadviseWillNeed_);

    /// <summary>
    /// Opens <paramref name="path"/> read-write with O_DIRECT (and O_CLOEXEC): the handle, or null when the file or its
    /// filesystem refuses it (the caller then writes buffered; why does not change that).
    /// </summary>
    public static SafeFileHandle? OpenDirectForWrite(string path)
    {
        int fd = Posix.Open(path, Posix.OReadWrite | Posix.OCloexec | Posix.ODirect, 0);
        return fd < 0 ? null : new SafeFileHandle(fd, ownsHandle: true);
    }

    /// <summary>
    /// The size of a block device: fstat reports 0 for one (what .NET's Length uses), lseek to the end gives its
    /// capacity. -1 when the device cannot seek.
    /// </summary>
    public static long DeviceSize(SafeFileHandle fd)
    {
        const int SeekEnd = 2;
        long size = Posix.LSeek(fd, 0, SeekEnd);
        Posix.LSeek(fd, 0, 0);
        return size;
    }

    /// <summary>
    /// fsync of a folder, so a rename in it is durable (a file's own fsync does not cover its name). .NET cannot
    /// open a folder, hence open(O_RDONLY|O_DIRECTORY) here. Returns 0 or the errno.
    /// </summary>
    public static int FSyncFolder(string path)
    {
        int fd = Posix.Open(path, Posix.OReadOnly | Posix.ODirectory | Posix.OCloexec, 0);
        if (fd < 0)
        {
            return Posix.LastError;
        }

        int rc = Posix.FSyncFd(fd) == 0 ? 0 : Posix.LastError;
        Posix.Close(fd);
        return rc;
    }

    /// <summary>Returns 0 or the errno.</summary>
    public static int FSync(SafeFileHandle fd) => Posix.FSync(fd) == 0 ? 0 : Posix.LastError;

    /// <summary>Returns 0 or the errno.</summary>
    public static int FDataSync(SafeFileHandle fd) => Posix.FDataSync(fd) == 0 ? 0 : Posix.LastError;
}
