using System.Runtime.InteropServices;

namespace PrlFuse.Fuse.Native;

// Layouts below are x86-64 Linux/glibc. LibFuse refuses to load on other architectures
// rather than corrupt memory; the layout test compares every offset with the C compiler's.

/// <summary>struct timespec (16 bytes). In utimens, <see cref="Nanoseconds"/> may be UTIME_NOW or UTIME_OMIT.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct TimeSpec
{
    public const long UtimeNow = (1L << 30) - 1;
    public const long UtimeOmit = (1L << 30) - 2;

    public long Seconds;
    public long Nanoseconds;

    public TimeSpec(long seconds, long nanoseconds)
    {
        Seconds = seconds;
        Nanoseconds = nanoseconds;
    }

    public static TimeSpec FromDateTimeOffset(DateTimeOffset time)
    {
        long ticks = time.UtcTicks - DateTimeOffset.UnixEpoch.UtcTicks;
        return new TimeSpec(Math.DivRem(ticks, TimeSpan.TicksPerSecond, out long rest) - (rest < 0 ? 1 : 0),
            (rest < 0 ? rest + TimeSpan.TicksPerSecond : rest) * 100);
    }
}

/// <summary>glibc x86-64 struct stat (144 bytes; st_nlink comes before st_mode on this ABI).</summary>
[StructLayout(LayoutKind.Explicit, Size = SizeInBytes)]
public struct Stat
{
    public const int SizeInBytes = 144;

    [FieldOffset(0)] public ulong Device;
    [FieldOffset(8)] public ulong Inode;
    [FieldOffset(16)] public ulong LinkCount;
    /// <summary>File type and permission bits, see <see cref="StatMode"/>.</summary>
    [FieldOffset(24)] public uint Mode;
    [FieldOffset(28)] public uint Uid;
    [FieldOffset(32)] public uint Gid;
    [FieldOffset(40)] public ulong RDevice;
    [FieldOffset(48)] public long Size;
    [FieldOffset(56)] public long BlockSize;
    /// <summary>Number of 512-byte blocks allocated.</summary>
    [FieldOffset(64)] public long Blocks;
    [FieldOffset(72)] public TimeSpec AccessTime;
    [FieldOffset(88)] public TimeSpec ModifyTime;
    [FieldOffset(104)] public TimeSpec ChangeTime;
}

/// <summary>File type bits of <see cref="Stat.Mode"/> (S_IF*); OR them with the permission bits.</summary>
public static class StatMode
{
    public const uint TypeMask = 0xF000;     // S_IFMT
    public const uint Directory = 0x4000;    // S_IFDIR
    public const uint RegularFile = 0x8000;  // S_IFREG
    public const uint SymbolicLink = 0xA000; // S_IFLNK
}

/// <summary>open(2) access modes as found in <see cref="FuseFileInfo.Flags"/> (Linux values).</summary>
public static class OpenFlags
{
    public const int AccessModeMask = 3; // O_ACCMODE
    public const int ReadOnly = 0;
    public const int WriteOnly = 1;
    public const int ReadWrite = 2;

    /// <summary>O_DIRECT: 040000 on x86 and most architectures, 0200000 on ARM.</summary>
    public static readonly int Direct =
        RuntimeInformation.ProcessArchitecture is Architecture.Arm64 or Architecture.Arm ? 0x10000 : 0x4000;
}

/// <summary>The lseek(2) whence values the kernel forwards to a FUSE filesystem (Linux values).</summary>
public static class SeekWhence
{
    /// <summary>SEEK_DATA: the next offset holding data.</summary>
    public const int Data = 3;

    /// <summary>SEEK_HOLE: the next offset in a hole (the end of the file counts as one).</summary>
    public const int Hole = 4;
}

/// <summary>fallocate(2) mode bits (FALLOC_FL_*, Linux values).</summary>
public static class FallocateMode
{
    public const int KeepSize = 0x01;
    public const int PunchHole = 0x02;
    public const int CollapseRange = 0x08;
    public const int ZeroRange = 0x10;
    public const int InsertRange = 0x20;
    public const int UnshareRange = 0x40;
}

/// <summary>The stable head of struct fuse_file_info. Never allocated by us, only reached through libfuse's pointer.</summary>
[StructLayout(LayoutKind.Explicit)]
internal struct FuseFileInfoNative
{
    public const int FhOffset = 16;
    // Bits 0..2 of the bitfield word are the same in every libfuse 3.x; later bits moved in 3.16/3.17.
    public const uint WritePageBit = 1u << 0;
    public const uint DirectIoBit = 1u << 1;
    public const uint KeepCacheBit = 1u << 2;

    [FieldOffset(0)] public int Flags;
    [FieldOffset(4)] public uint Bits;
    [FieldOffset(FhOffset)] public ulong Fh;
}

/// <summary>struct fuse_ctx of the low-level API (fuse_req_ctx); only read.</summary>
[StructLayout(LayoutKind.Explicit)]
internal struct FuseCtxNative
{
    [FieldOffset(0)] public uint Uid;
    [FieldOffset(4)] public uint Gid;
    [FieldOffset(8)] public int Pid;
    [FieldOffset(12)] public uint Umask;
}

/// <summary>struct fuse_entry_param: the answer to a lookup (176 bytes).</summary>
[StructLayout(LayoutKind.Explicit, Size = 176)]
internal struct FuseEntryParam
{
    [FieldOffset(0)] public ulong Inode;
    [FieldOffset(8)] public ulong Generation;
    [FieldOffset(16)] public Stat Attributes;
    [FieldOffset(160)] public double AttributeTimeout;
    [FieldOffset(168)] public double EntryTimeout;
}

/// <summary>
/// What the low-level API leaves to the filesystem and the high-level API kept in struct fuse_config: how long the
/// kernel may keep names and attributes, and the per-open defaults. Ours, filled in Init (<see cref="FuseInitContext"/>).
/// </summary>
internal struct FuseReplySettings
{
    public double EntryTimeout;
    public double NegativeTimeout;
    public double AttrTimeout;
    public bool UseIno;
    public bool DirectIo;
    public bool KernelCache;

    /// <summary>libfuse's high-level defaults: one second for names and attributes, no negative caching.</summary>
    public static FuseReplySettings Defaults => new() { EntryTimeout = 1, AttrTimeout = 1 };
}

/// <summary>struct fuse_args (argv is NULL terminated).</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct FuseArgs
{
    public int Argc;
    public byte** Argv;
    public int Allocated;
}

/// <summary>The two-field loop config taken by fuse_loop_mt@FUSE_3.2 (libfuse 3.2 .. 3.11).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseLoopConfigV1
{
    public int CloneFd;
    public uint MaxIdleThreads;
}

/// <summary>Offsets into struct fuse_conn_info that we read or write (stable since 3.0; 3.17 only appended).</summary>
internal static class FuseConnInfoOffsets
{
    public const int ProtoMajor = 0;
    public const int ProtoMinor = 4;
    public const int MaxWrite = 8;
    public const int MaxRead = 12;
    public const int MaxReadahead = 16;
    public const int Capable = 20;
    public const int Want = 24;
    public const int MaxBackground = 28;
    public const int CongestionThreshold = 32;
}

/// <summary>fuse_setattr's to_set bits (FUSE_SET_ATTR_*).</summary>
internal static class FuseSetAttr
{
    public const int Mode = 1 << 0;
    public const int Uid = 1 << 1;
    public const int Gid = 1 << 2;
    public const int Size = 1 << 3;
    public const int AccessTime = 1 << 4;
    public const int ModifyTime = 1 << 5;
    public const int AccessTimeNow = 1 << 7;
    public const int ModifyTimeNow = 1 << 8;
}

/// <summary>
/// struct fuse_lowlevel_ops of libfuse 3.14 (44 pointers; later versions only append). Field order is the C order;
/// fields we do not implement stay NULL so libfuse answers ENOSYS (or its default) for them.
/// </summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseLowLevelOperations
{
    public const int PointerCount = 44;

    public IntPtr Init, Destroy, Lookup, Forget, GetAttr, SetAttr, ReadLink, MkNod, MkDir, Unlink, RmDir, Symlink,
        Rename, Link, Open, Read, Write, Flush, Release, Fsync, OpenDir, ReadDir, ReleaseDir, FsyncDir, StatFs,
        SetXattr, GetXattr, ListXattr, RemoveXattr, Access, Create, GetLk, SetLk, Bmap, Ioctl, Poll, WriteBuf,
        RetrieveReply, ForgetMulti, Flock, Fallocate, ReadDirPlus, CopyFileRange, Lseek;
}

/// <summary>struct fuse_buf (40 bytes): memory (<see cref="Mem"/>) or a descriptor (<see cref="Fd"/>, read at <see cref="Pos"/>).</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct FuseBuf
{
    /// <summary>enum fuse_buf_flags.</summary>
    public const int IsFd = 1 << 1;
    public const int FdSeek = 1 << 2;
    public const int FdRetry = 1 << 3;

    public nuint Size;
    public int Flags;
    public void* Mem;
    public int Fd;
    public long Pos;
}

/// <summary>struct fuse_bufvec: a header and a C flexible-style array of buffers starting at <see cref="Buf"/>.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseBufVec
{
    public nuint Count;
    public nuint Idx;
    public nuint Off;
    public FuseBuf Buf;
}

/// <summary>FUSE_CAP_* bits of struct fuse_conn_info (capable / want) that we use.</summary>
public static class FuseCapabilities
{
    /// <summary>Replies may be spliced to /dev/fuse (needed for read_buf's descriptor buffers to go without a copy).</summary>
    public const uint SpliceWrite = 1u << 7;

    /// <summary>Pages may be moved instead of copied when splicing to /dev/fuse.</summary>
    public const uint SpliceMove = 1u << 8;

    /// <summary>Requests (write data) may be spliced from /dev/fuse into a pipe.</summary>
    public const uint SpliceRead = 1u << 9;

    /// <summary>The kernel may send the pieces of one O_DIRECT request as several requests at once.</summary>
    public const uint AsyncDio = 1u << 15;
}
