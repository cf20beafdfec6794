using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace PrlFuse.Core.IO;

/// <summary>
/// The program's one binding of libc: every POSIX call that the BCL lacks is declared here and nowhere else, so the
/// single-file binary needs no native helper of its own. "libc.so.6" is named exactly: "libc.so" is a linker script
/// on machines with development packages.
/// </summary>
public static unsafe partial class Posix
{
    public const string LibraryName = "libc.so.6";

    public const int OReadOnly = 0, OWriteOnly = 1, OReadWrite = 2;
    public const int OCreate = 0x40, OAppend = 0x400, OCloexec = 0x80000;

    /// <summary>O_DIRECT differs between architectures (asm-generic 0x4000; arm and arm64 0x10000).</summary>
    public static int ODirect => RuntimeInformation.ProcessArchitecture is Architecture.Arm64 or Architecture.Arm ? 0x10000 : 0x4000;

    /// <summary>O_DIRECTORY differs the same way (asm-generic 0x10000; arm and arm64 0x4000).</summary>
    public static int ODirectory => RuntimeInformation.ProcessArchitecture is Architecture.Arm64 or Architecture.Arm ? 0x4000 : 0x10000;

    public const int MntDetach = 2; // MNT_DETACH for umount2
    public const int FSetPipeSize = 1031; // F_SETPIPE_SZ
    public const uint MfdCloexec = 1;
    public const uint MfdAllowSealing = 2;
    public const int FAddSeals = 1033; // F_ADD_SEALS
    public const int FSealShrink = 2, FSealGrow = 4, FSealWrite = 8, FSealSeal = 1;
    public const int FOfdGetLock = 36, FOfdSetLock = 37; // F_OFD_GETLK, F_OFD_SETLK
    public const short LockRead = 0, LockWrite = 1, Unlocked = 2; // F_RDLCK, F_WRLCK, F_UNLCK
    public const ulong StatVfsReadOnly = 1; // ST_RDONLY

    /// <summary>struct flock (x86-64 and arm64 layout).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct FileLock
    {
        public short Type;
        public short Whence;
        public long Start;
        public long Length;
        public int Pid;
    }

    [LibraryImport(LibraryName, EntryPoint = "umount2", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Umount2(string target, int flags);

    [LibraryImport(LibraryName, EntryPoint = "pipe2", SetLastError = true)]
    public static partial int Pipe2(int* fds, int flags);

    [LibraryImport(LibraryName, EntryPoint = "fcntl", SetLastError = true)]
    public static partial int Fcntl(int fd, int command, int argument);

    [LibraryImport(LibraryName, EntryPoint = "fcntl", SetLastError = true)]
    public static partial int FcntlLock(SafeFileHandle fd, int command, ref FileLock fileLock);

    [LibraryImport(LibraryName, EntryPoint = "memfd_create", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int MemfdCreate(string name, uint flags);

    [LibraryImport(LibraryName, EntryPoint = "ftruncate", SetLastError = true)]
    public static partial int Ftruncate(int fd, long length);

    [LibraryImport(LibraryName, EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    [LibraryImport(LibraryName, EntryPoint = "write", SetLastError = true)]
    public static partial nint Write(int fd, byte* buffer, nint count);

    [LibraryImport(LibraryName, EntryPoint = "dup2", SetLastError = true)]
    public static partial int Dup2(int from, int to);

    [LibraryImport(LibraryName, EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Open(string path, int flags, int mode);

    [LibraryImport(LibraryName, EntryPoint = "setsid", SetLastError = true)]
    public static partial int SetSid();

    [LibraryImport(LibraryName, EntryPoint = "getuid")]
    public static partial uint GetUid();

    [LibraryImport(LibraryName, EntryPoint = "getgid")]
    public static partial uint GetGid();

    [LibraryImport(LibraryName, EntryPoint = "geteuid")]
    public static partial uint GetEffectiveUid();

    [LibraryImport(LibraryName, EntryPoint = "statvfs", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int StatVfs(string path, out StatVfs buffer);

    [LibraryImport(LibraryName, EntryPoint = "access", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Access(string path, int mode);

    public const int WriteOk = 2; // W_OK

    [LibraryImport(LibraryName, EntryPoint = "stat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Stat(string path, byte* buffer);

    [LibraryImport(LibraryName, EntryPoint = "lstat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int LStat(string path, byte* buffer);

    [LibraryImport(LibraryName, EntryPoint = "realpath", StringMarshalling = StringMarshalling.Utf8)]
    public static partial IntPtr RealPath(string path, IntPtr resolved);

    [LibraryImport(LibraryName, EntryPoint = "fsync", SetLastError = true)]
    public static partial int FSync(SafeFileHandle fd);

    [LibraryImport(LibraryName, EntryPoint = "fsync", SetLastError = true)]
    public static partial int FSyncFd(int fd);

    [LibraryImport(LibraryName, EntryPoint = "lseek", SetLastError = true)]
    public static partial long LSeek(SafeFileHandle fd, long offset, int whence);

    [LibraryImport(LibraryName, EntryPoint = "fdatasync", SetLastError = true)]
    public static partial int FDataSync(SafeFileHandle fd);

    [LibraryImport(LibraryName, EntryPoint = "fallocate", SetLastError = true)]
    public static partial int Fallocate(SafeFileHandle fd, int mode, long offset, long length);

    /// <summary>
    /// sendfile(2): up to <paramref name="count"/> bytes of <paramref name="inFd"/> from <paramref name="offset"/> (which
    /// it advances) to the socket <paramref name="outFd"/>, page references instead of copies; the bytes sent, or -1.
    /// </summary>
    [LibraryImport(LibraryName, EntryPoint = "sendfile", SetLastError = true)]
    public static partial nint SendFile(nint outFd, SafeFileHandle inFd, ref long offset, nint count);

    /// <summary>preadv2(2) flag RWF_NOWAIT: fail with EAGAIN rather than wait for the disk.</summary>
    public const int RwfNoWait = 0x8;

    /// <summary>preadv2(2) of one buffer (struct iovec is a pointer and a length).</summary>
    public static nint PReadNoWait(SafeFileHandle fd, Span<byte> buffer, long offset)
    {
        fixed (byte* b = buffer)
        {
            nint* vector = stackalloc nint[2];
            vector[0] = (nint)b;
            vector[1] = buffer.Length;
            return PReadV2(fd, vector, 1, offset, RwfNoWait);
        }
    }

    [LibraryImport(LibraryName, EntryPoint = "preadv2", SetLastError = true)]
    private static partial nint PReadV2(SafeFileHandle fd, nint* vectors, int count, long offset, int flags);

    [LibraryImport(LibraryName, EntryPoint = "read", SetLastError = true)]
    public static partial nint Read(int fd, byte* buffer, nint count);

    /// <summary>writev(2); <paramref name="vectors"/> holds pointer and length pairs (struct iovec).</summary>
    [LibraryImport(LibraryName, EntryPoint = "writev", SetLastError = true)]
    public static partial nint WriteV(int fd, nint* vectors, int count);

    [LibraryImport(LibraryName, EntryPoint = "pread", SetLastError = true)]
    public static partial nint PRead(int fd, byte* buffer, nint count, long offset);

    /// <summary>splice(2); a null offset means the descriptor's own (pipes have none).</summary>
    [LibraryImport(LibraryName, EntryPoint = "splice", SetLastError = true)]
    public static partial nint Splice(int fdIn, long* offsetIn, int fdOut, long* offsetOut, nuint length, uint flags);

    [LibraryImport(LibraryName, EntryPoint = "ioctl", SetLastError = true)]
    public static partial int Ioctl(int fd, nuint request, void* argument);

    public const ulong MsReadOnly = 1, MsNoSuid = 2, MsNoDev = 4; // MS_RDONLY, MS_NOSUID, MS_NODEV

    [LibraryImport(LibraryName, EntryPoint = "mount", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Mount(string source, string target, string fileSystemType, ulong flags, string data);

    public const int ProtRead = 1, ProtWrite = 2, MapShared = 1, MapPopulate = 0x8000;

    [LibraryImport(LibraryName, EntryPoint = "mmap", SetLastError = true)]
    public static partial void* Mmap(void* address, nuint length, int protection, int flags, int fd, long offset);

    [LibraryImport(LibraryName, EntryPoint = "munmap", SetLastError = true)]
    public static partial int Munmap(void* address, nuint length);

    /// <summary>syscall(2) with up to six integer arguments (for calls glibc has no wrapper for, such as io_uring's).</summary>
    [LibraryImport(LibraryName, EntryPoint = "syscall", SetLastError = true)]
    public static partial long Syscall(long number, long a1, long a2, long a3, long a4, long a5, long a6);

    /// <summary>posix_fadvise returns the error number; errno is untouched.</summary>
    [LibraryImport(LibraryName, EntryPoint = "posix_fadvise")]
    public static partial int Fadvise(SafeFileHandle fd, long offset, long length, int advice);

    /// <summary>
    /// dlvsym picks one version of a symbol. Plain dlsym only finds the default version, and from
    /// libfuse 3.17 fuse_new has none. dlvsym lives in libc since glibc 2.34, in libdl before.
    /// </summary>
    public static IntPtr DlVSym(IntPtr handle, string symbol, string version)
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

    /// <summary>The errno of the last call made through this binding.</summary>
    public static int LastError => Marshal.GetLastPInvokeError();

    private static readonly delegate* unmanaged<IntPtr, byte*, byte*, IntPtr> s_dlvsym = LoadDlVSym();

    private static delegate* unmanaged<IntPtr, byte*, byte*, IntPtr> LoadDlVSym()
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

/// <summary>struct statvfs (x86-64 glibc, 112 bytes).</summary>
[StructLayout(LayoutKind.Explicit, Size = SizeInBytes)]
public struct StatVfs
{
    public const int SizeInBytes = 112;

    [FieldOffset(0)] public ulong BlockSize;
    [FieldOffset(8)] public ulong FragmentSize;
    /// <summary>Size of the filesystem in <see cref="FragmentSize"/> units.</summary>
    [FieldOffset(16)] public ulong Blocks;
    [FieldOffset(24)] public ulong BlocksFree;
    [FieldOffset(32)] public ulong BlocksAvailable;
    [FieldOffset(40)] public ulong Files;
    [FieldOffset(48)] public ulong FilesFree;
    [FieldOffset(56)] public ulong FilesAvailable;
    [FieldOffset(64)] public ulong FsId;
    [FieldOffset(72)] public ulong Flags;
    [FieldOffset(80)] public ulong NameMax;
}
