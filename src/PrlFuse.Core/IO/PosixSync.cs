using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace PrlFuse.Core.IO;

/// <summary>fsync and fdatasync: the BCL's Flush(true) is fsync only, and we want the cheaper fdatasync for data.</summary>
internal static partial class PosixSync
{
    [LibraryImport("libc", EntryPoint = "fsync", SetLastError = true)]
    private static partial int FsyncNative(SafeFileHandle fd);

    [LibraryImport("libc", EntryPoint = "fdatasync", SetLastError = true)]
    private static partial int FdatasyncNative(SafeFileHandle fd);

    /// <summary>Returns 0 or the errno.</summary>
    public static int FSync(SafeFileHandle fd) => FsyncNative(fd) == 0 ? 0 : Marshal.GetLastPInvokeError();

    /// <summary>Returns 0 or the errno.</summary>
    public static int FDataSync(SafeFileHandle fd) => FdatasyncNative(fd) == 0 ? 0 : Marshal.GetLastPInvokeError();
}
