using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace PrlFuse.Core.IO;

/// <summary>fsync, fdatasync, fallocate, fadvise and an O_DIRECT open: the BCL has fsync only (Flush(true)); we want the cheaper fdatasync for data.</summary>
internal static partial class PosixSync
{
    [LibraryImport("libc", EntryPoint = "fsync", SetLastError = true)]
    private static partial int FsyncNative(SafeFileHandle fd);

    [LibraryImport("libc", EntryPoint = "fdatasync", SetLastError = true)]
    private static partial int FdatasyncNative(SafeFileHandle fd);

    [LibraryImport("libc", EntryPoint = "fallocate", SetLastError = true)]
    private static partial int FallocateNative(SafeFileHandle fd, int mode, long offset, long length);

    /// <summary>fallocate(2) mode 0 (reserve, extend the size): 0 or the errno.</summary>
    public static int Fallocate(SafeFileHandle fd, long offset, long length) =>
        FallocateNative(fd, 0, offset, length) == 0 ? 0 : Marshal.GetLastPInvokeError();

    [LibraryImport("libc", EntryPoint = "posix_fadvise")]
    private static partial int FadviseNative(SafeFileHandle fd, long offset, long length, int advice);

    /// <summary>posix_fadvise(POSIX_FADV_WILLNEED): 0 or the error number (posix_fadvise returns it, errno is untouched).</summary>
    public static int FadviseWillNeed(SafeFileHandle fd, long offset, long length) => FadviseNative(fd, offset, length, 3);

    [LibraryImport("libc", EntryPoint = "open", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int OpenNative(string path, int flags);

    /// <summary>
    /// Opens <paramref name="path"/> read-write with O_DIRECT (and O_CLOEXEC): the handle, or null when the file or its
    /// filesystem refuses it (the caller then writes buffered; why does not change that).
    /// </summary>
    public static SafeFileHandle? OpenDirectForWrite(string path)
    {
        const int ReadWrite = 2;
        const int CloseOnExec = 0x80000;

        // O_DIRECT differs between architectures (asm-generic 0x4000; arm and arm64 0x10000).
        int direct = RuntimeInformation.ProcessArchitecture is Architecture.Arm64 or Architecture.Arm ? 0x10000 : 0x4000;
        int fd = OpenNative(path, ReadWrite | CloseOnExec | direct);
        return fd < 0 ? null : new SafeFileHandle(fd, ownsHandle: true);
    }

    [LibraryImport("libc", EntryPoint = "lseek", SetLastError = true)]
    private static partial long LseekNative(SafeFileHandle fd, long offset, int whence);

    [LibraryImport("libc", EntryPoint = "close")]
    private static partial int CloseNative(int fd);

    [LibraryImport("libc", EntryPoint = "fsync", SetLastError = true)]
    private static partial int FsyncFdNative(int fd);

    /// <summary>
    /// The size of a block device: fstat reports 0 for one (what .NET's Length uses), lseek to the end gives its
    /// capacity. -1 when the device cannot seek.
    /// </summary>
    public static long DeviceSize(SafeFileHandle fd)
    {
        const int SeekEnd = 2;
        long size = LseekNative(fd, 0, SeekEnd);
        LseekNative(fd, 0, 0);
        return size;
    }

    /// <summary>
    /// fsync of a folder, so a rename in it is durable (a file's own fsync does not cover its name). .NET cannot
    /// open a folder, hence open(O_RDONLY|O_DIRECTORY) here. Returns 0 or the errno.
    /// </summary>
    public static int FSyncFolder(string path)
    {
        const int CloseOnExec = 0x80000;

        // O_DIRECTORY differs between architectures like O_DIRECT (asm-generic 0x10000; arm and arm64 0x4000).
        int directory = RuntimeInformation.ProcessArchitecture is Architecture.Arm64 or Architecture.Arm ? 0x4000 : 0x10000;
        int fd = OpenNative(path, directory | CloseOnExec);
        if (fd < 0)
        {
            return Marshal.GetLastPInvokeError();
        }

        int rc = FsyncFdNative(fd) == 0 ? 0 : Marshal.GetLastPInvokeError();
        CloseNative(fd);
        return rc;
    }

    /// <summary>Returns 0 or the errno.</summary>
    public static int FSync(SafeFileHandle fd) => FsyncNative(fd) == 0 ? 0 : Marshal.GetLastPInvokeError();

    /// <summary>Returns 0 or the errno.</summary>
    public static int FDataSync(SafeFileHandle fd) => FdatasyncNative(fd) == 0 ? 0 : Marshal.GetLastPInvokeError();
}
