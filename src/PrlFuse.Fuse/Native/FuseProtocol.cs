using System.Runtime.InteropServices;

namespace PrlFuse.Fuse.Native;

/// <summary>
/// The kernel's FUSE protocol (include/uapi/linux/fuse.h, 7.x), as spoken on /dev/fuse and over io_uring without
/// libfuse: opcodes, flags and the messages we read or write. Layouts are the C ones (little-endian, natural alignment).
/// </summary>
internal static class FuseProtocol
{
    public const uint KernelMajor = 7;

    /// <summary>The minor version we speak: every message below has its full size from 7.36 on.</summary>
    public const uint KernelMinor = 42;

    public const int InHeaderBytes = 40;
    public const int OutHeaderBytes = 16;

    /// <summary>The read buffer the kernel requires at least (FUSE_MIN_READ_BUFFER).</summary>
    public const int MinReadBuffer = 8192;

    /// <summary>Pages of the largest request we accept (FUSE_MAX_PAGES in init): 1 MiB.</summary>
    public const int MaxPages = 256;

    public const int PageSize = 4096;

    public const int MaxPayload = MaxPages * PageSize;

    // Opcodes.
    public const uint Lookup = 1, Forget = 2, GetAttr = 3, SetAttr = 4, Open = 14, Read = 15, Write = 16, StatFs = 17;
    public const uint Release = 18, Fsync = 20, Flush = 25, Init = 26, OpenDir = 27, ReadDir = 28, ReleaseDir = 29;
    public const uint FsyncDir = 30, Interrupt = 36, Destroy = 38, BatchForget = 42, Fallocate = 43, Lseek = 46;

    // Init flags (flags; bits 32.. of the 64-bit set go in flags2).
    public const ulong AsyncRead = 1UL << 0, BigWrites = 1UL << 5, AutoInvalData = 1UL << 12, AsyncDio = 1UL << 15;
    public const ulong ParallelDirOps = 1UL << 18, MaxPagesFlag = 1UL << 22, InitExt = 1UL << 30;
    public const ulong OverIoUring = 1UL << 41;

    /// <summary>The connection flags the binding itself can honour (no splice, no locks, no writeback cache).</summary>
    public const ulong Supported = AsyncRead | BigWrites | AutoInvalData | AsyncDio | ParallelDirOps;

    /// <summary>What libfuse asks for by default among <see cref="Supported"/>, so both transports behave alike.</summary>
    public const ulong DefaultWant = AsyncRead | BigWrites | AutoInvalData | ParallelDirOps;

    public const uint OpenDirectIo = 1u << 0, OpenKeepCache = 1u << 1; // FOPEN_*

    public const uint GetAttrFh = 1u << 0; // FUSE_GETATTR_FH
    public const uint SetAttrFh = 1u << 6; // FATTR_FH

    /// <summary>FUSE_DEV_IOC_CLONE: _IOR(229, 0, uint32_t).</summary>
    public const nuint DevIocClone = 0x8004E500;

    // io_uring commands (FUSE_IO_URING_CMD_*) and the sizes of a ring entry's header block.
    public const uint UringCmdRegister = 1, UringCmdCommitAndFetch = 2;
    public const int UringInOutHeaderBytes = 128, UringOpInBytes = 128;
    public const int UringEntInOutOffset = UringInOutHeaderBytes + UringOpInBytes;
    public const int UringHeaderBytes = UringEntInOutOffset + 32;
}

/// <summary>struct fuse_in_header (40 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseInHeader
{
    public uint Length;
    public uint Opcode;
    public ulong Unique;
    public ulong NodeId;
    public uint Uid;
    public uint Gid;
    public uint Pid;
    public ushort TotalExtLength;
    public ushort Padding;
}

/// <summary>struct fuse_out_header (16 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseOutHeader
{
    public uint Length;
    public int Error;
    public ulong Unique;
}

/// <summary>struct fuse_attr (88 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseAttr
{
    public ulong Inode;
    public ulong Size;
    public ulong Blocks;
    public ulong AccessTime;
    public ulong ModifyTime;
    public ulong ChangeTime;
    public uint AccessTimeNanoseconds;
    public uint ModifyTimeNanoseconds;
    public uint ChangeTimeNanoseconds;
    public uint Mode;
    public uint LinkCount;
    public uint Uid;
    public uint Gid;
    public uint RDevice;
    public uint BlockSize;
    public uint Flags;

    public static FuseAttr From(in Stat stat) => new()
    {
        Inode = stat.Inode,
        Size = (ulong)stat.Size,
        Blocks = (ulong)stat.Blocks,
        AccessTime = (ulong)stat.AccessTime.Seconds,
        ModifyTime = (ulong)stat.ModifyTime.Seconds,
        ChangeTime = (ulong)stat.ChangeTime.Seconds,
        AccessTimeNanoseconds = (uint)stat.AccessTime.Nanoseconds,
        ModifyTimeNanoseconds = (uint)stat.ModifyTime.Nanoseconds,
        ChangeTimeNanoseconds = (uint)stat.ChangeTime.Nanoseconds,
        Mode = stat.Mode,
        LinkCount = (uint)stat.LinkCount,
        Uid = stat.Uid,
        Gid = stat.Gid,
        RDevice = (uint)stat.RDevice,
        BlockSize = (uint)stat.BlockSize,
    };
}

/// <summary>struct fuse_entry_out (128 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseEntryOut
{
    public ulong NodeId;
    public ulong Generation;
    public ulong EntryValid;
    public ulong AttrValid;
    public uint EntryValidNanoseconds;
    public uint AttrValidNanoseconds;
    public FuseAttr Attr;
}

/// <summary>struct fuse_attr_out (104 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseAttrOut
{
    public ulong AttrValid;
    public uint AttrValidNanoseconds;
    public uint Dummy;
    public FuseAttr Attr;
}

/// <summary>struct fuse_init_in (64 bytes; flags2 only with FUSE_INIT_EXT).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseInitIn
{
    public uint Major;
    public uint Minor;
    public uint MaxReadahead;
    public uint Flags;
    public uint Flags2;
}

/// <summary>struct fuse_init_out (64 bytes).</summary>
[StructLayout(LayoutKind.Sequential, Size = 64)]
internal struct FuseInitOut
{
    public uint Major;
    public uint Minor;
    public uint MaxReadahead;
    public uint Flags;
    public ushort MaxBackground;
    public ushort CongestionThreshold;
    public uint MaxWrite;
    public uint TimeGranularity;
    public ushort MaxPages;
    public ushort MapAlignment;
    public uint Flags2;
}

/// <summary>struct fuse_getattr_in.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseGetAttrIn
{
    public uint Flags;
    public uint Dummy;
    public ulong Fh;
}

/// <summary>struct fuse_setattr_in (88 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseSetAttrIn
{
    public uint Valid;
    public uint Padding;
    public ulong Fh;
    public ulong Size;
    public ulong LockOwner;
    public ulong AccessTime;
    public ulong ModifyTime;
    public ulong ChangeTime;
    public uint AccessTimeNanoseconds;
    public uint ModifyTimeNanoseconds;
    public uint ChangeTimeNanoseconds;
    public uint Mode;
    public uint Unused4;
    public uint Uid;
    public uint Gid;
    public uint Unused5;
}

/// <summary>struct fuse_open_in.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseOpenIn
{
    public int Flags;
    public uint OpenFlags;
}

/// <summary>struct fuse_open_out.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseOpenOut
{
    public ulong Fh;
    public uint OpenFlags;
    public uint Padding;
}

/// <summary>struct fuse_read_in, also the head of fuse_write_in (both 40 bytes; size is the data's for a write).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseReadIn
{
    public ulong Fh;
    public ulong Offset;
    public uint Size;
    public uint ReadFlags;
    public ulong LockOwner;
    public int Flags;
    public uint Padding;
}

/// <summary>struct fuse_release_in, fuse_flush_in and fuse_fsync_in start with the handle.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseHandleIn
{
    public ulong Fh;
    public uint Flags;
    public uint Extra;
}

/// <summary>struct fuse_fallocate_in.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseFallocateIn
{
    public ulong Fh;
    public ulong Offset;
    public ulong Length;
    public int Mode;
    public uint Padding;
}

/// <summary>struct fuse_lseek_in.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseLseekIn
{
    public ulong Fh;
    public long Offset;
    public int Whence;
    public uint Padding;
}

/// <summary>struct fuse_kstatfs inside fuse_statfs_out (80 bytes).</summary>
[StructLayout(LayoutKind.Sequential, Size = 80)]
internal struct FuseStatFsOut
{
    public ulong Blocks;
    public ulong FreeBlocks;
    public ulong AvailableBlocks;
    public ulong Files;
    public ulong FreeFiles;
    public uint BlockSize;
    public uint NameLength;
    public uint FragmentSize;
}

/// <summary>struct fuse_uring_ent_in_out, at <see cref="FuseProtocol.UringEntInOutOffset"/> of a ring entry's headers.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseUringEntInOut
{
    public ulong Flags;
    public ulong CommitId;
    public uint PayloadBytes;
    public uint Padding;
    public ulong Reserved;
}
