using System.Runtime.InteropServices;

namespace PrlFuse.Fuse.Native;

/// <summary>The few libc calls the binding needs. "libc.so.6" is named exactly: "libc.so" is a linker script on dev machines.</summary>
internal static partial class Libc
{
    private const string LibraryName = "libc.so.6";

    public const int MntDetach = 2; // MNT_DETACH for umount2

    [LibraryImport(LibraryName, EntryPoint = "umount2", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int Umount2(string target, int flags);

    public const int FSetPipeSize = 1031; // F_SETPIPE_SZ
    public const int OCloexec = 0x80000;

    [LibraryImport(LibraryName, EntryPoint = "pipe2", SetLastError = true)]
    internal static unsafe partial int Pipe2(int* fds, int flags);

    [LibraryImport(LibraryName, EntryPoint = "fcntl", SetLastError = true)]
    internal static partial int Fcntl(int fd, int command, int argument);

    public const uint MfdCloexec = 1;
    public const uint MfdAllowSealing = 2;
    public const int FAddSeals = 1033; // F_ADD_SEALS
    public const int FSealShrink = 2, FSealGrow = 4, FSealWrite = 8, FSealSeal = 1;

    [LibraryImport(LibraryName, EntryPoint = "memfd_create", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int MemfdCreate(string name, uint flags);

    [LibraryImport(LibraryName, EntryPoint = "ftruncate", SetLastError = true)]
    internal static partial int Ftruncate(int fd, long length);

    [LibraryImport(LibraryName, EntryPoint = "close", SetLastError = true)]
    internal static partial int Close(int fd);

    [LibraryImport(LibraryName, EntryPoint = "statvfs", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int StatVfs(string path, out StatVfs buffer);

    /// <summary>
    /// dlvsym picks one version of a symbol. Plain dlsym only finds the default version, and from
    /// libfuse 3.17 fuse_new has none. dlvsym lives in libc since glibc 2.34, in libdl before.
    /// </summary>
    internal static unsafe IntPtr DlVSym(IntPtr handle, string symbol, string version)
    {
        var dlvsym = s_dlvsym;
        if (dlvsym == null)
        {
            return IntPtr.Zero;
        }
        byte* s = stackalloc byte[256];
        byte* v = stackalloc byte[64];
        WriteCString(symbol, new Span<byte>(s, 256));
        WriteCString(version, new Span<byte>(v, 64));
        return dlvsym(handle, s, v);
    }

    private static unsafe readonly delegate* unmanaged<IntPtr, byte*, byte*, IntPtr> s_dlvsym = LoadDlVSym();

    private static unsafe delegate* unmanaged<IntPtr, byte*, byte*, IntPtr> LoadDlVSym()
    {
        foreach (string lib in new[] { LibraryName, "libdl.so.2" })
        {
            if (NativeLibrary.TryLoad(lib, out IntPtr h) && NativeLibrary.TryGetExport(h, "dlvsym", out IntPtr f))
            {
                return (delegate* unmanaged<IntPtr, byte*, byte*, IntPtr>)f;
            }
        }
        return null;
    }

    private static void WriteCString(string value, Span<byte> destination)
    {
        int n = System.Text.Encoding.UTF8.GetBytes(value, destination[..^1]);
        destination[n] = 0;
    }
}
