using System.Runtime.InteropServices;

namespace PrlFuse.Fuse.Native;

/// <summary>
/// One io_uring with 128-byte submission entries (IORING_SETUP_SQE128, which FUSE's ring commands need), set up with
/// the raw system calls and mapped into memory; only what FUSE over io_uring uses: queue a command, submit and wait,
/// take completions. Used by one thread only.
/// </summary>
internal sealed unsafe class IoUring : IDisposable
{
    private const long SetupSyscall = 425, EnterSyscall = 426;
    private const uint SetupSqe128 = 1u << 10, SetupCoopTaskrun = 1u << 8, SetupSingleIssuer = 1u << 12;
    private const uint FeatureSingleMmap = 1u << 0;
    private const uint EnterGetEvents = 1u << 0;
    private const long OffsetSqRing = 0, OffsetCqRing = 0x8000000, OffsetSqes = 0x10000000;
    public const byte OpUringCmd = 46;
    public const int SqeBytes = 128;
    private const int CqeBytes = 16;

    private readonly int _fd;
    private readonly byte* _sqRing;
    private readonly nuint _sqRingBytes;
    private readonly byte* _cqRing;
    private readonly nuint _cqRingBytes;
    private readonly byte* _sqes;
    private readonly nuint _sqesBytes;
    private readonly uint* _sqTail;
    private readonly uint _sqMask;
    private readonly uint* _sqArray;
    private readonly uint* _cqHead;
    private readonly uint* _cqTail;
    private readonly uint _cqMask;
    private readonly byte* _cqes;
    private int _unsubmitted;

    private IoUring(int fd, in Params p)
    {
        _fd = fd;
        _sqRingBytes = p.SqArray + (p.SqEntries * sizeof(uint));
        _cqRingBytes = p.CqCqes + (p.CqEntries * CqeBytes);
        bool single = (p.Features & FeatureSingleMmap) != 0;
        if (single)
        {
            _sqRingBytes = _cqRingBytes = Math.Max(_sqRingBytes, _cqRingBytes);
        }

        _sqRing = Map(_sqRingBytes, OffsetSqRing);
        _cqRing = single ? _sqRing : Map(_cqRingBytes, OffsetCqRing);
        _sqesBytes = p.SqEntries * SqeBytes;
        _sqes = Map(_sqesBytes, OffsetSqes);
        _sqTail = (uint*)(_sqRing + p.SqTail);
        _sqMask = *(uint*)(_sqRing + p.SqRingMask);
        _sqArray = (uint*)(_sqRing + p.SqArray);
        _cqHead = (uint*)(_cqRing + p.CqHead);
        _cqTail = (uint*)(_cqRing + p.CqTail);
        _cqMask = *(uint*)(_cqRing + p.CqRingMask);
        _cqes = _cqRing + p.CqCqes;
    }

    /// <summary>A ring of <paramref name="entries"/> submission slots; throws <see cref="IOException"/> with the errno.</summary>
    public static IoUring Create(uint entries)
    {
        Params p = default;
        p.Flags = SetupSqe128 | SetupCoopTaskrun | SetupSingleIssuer;
        long fd = Posix.Syscall(SetupSyscall, entries, (long)&p, 0, 0, 0, 0);
        if (fd < 0)
        {
            int errno = Posix.LastError;
            throw new IOException($"io_uring_setup failed (errno {errno})", errno);
        }

        try
        {
            return new IoUring((int)fd, p);
        }
        catch
        {
            Posix.Close((int)fd);
            throw;
        }
    }

    /// <summary>True if this kernel and its settings (kernel.io_uring_disabled, seccomp) let us make a ring.</summary>
    public static bool IsAvailable()
    {
        try
        {
            using var ring = Create(2);
            return true;
        }
        catch (IOException)
        {
            return false;
        }
    }

    private byte* Map(nuint bytes, long offset)
    {
        void* p = Posix.Mmap(null, bytes, Posix.ProtRead | Posix.ProtWrite, Posix.MapShared | Posix.MapPopulate, _fd, offset);
        if (p == (void*)-1)
        {
            int errno = Posix.LastError;
            throw new IOException($"mmap of an io_uring failed (errno {errno})", errno);
        }

        return (byte*)p;
    }

    /// <summary>The next submission slot, zeroed (the ring never holds more commands than it has slots).</summary>
    public byte* NextSqe()
    {
        uint tail = *_sqTail;
        uint index = tail & _sqMask;
        byte* sqe = _sqes + (index * SqeBytes);
        new Span<byte>(sqe, SqeBytes).Clear();
        _sqArray[index] = index;
        Volatile.Write(ref *_sqTail, tail + 1);
        _unsubmitted++;
        return sqe;
    }

    /// <summary>Submits what was queued and waits for at least one completion; false when the call failed otherwise than EINTR.</summary>
    public bool SubmitAndWait(out int errno)
    {
        long rc = Posix.Syscall(EnterSyscall, _fd, _unsubmitted, 1, EnterGetEvents, 0, 0);
        if (rc >= 0)
        {
            _unsubmitted -= (int)rc;
            errno = 0;
            return true;
        }

        errno = Posix.LastError;
        return errno is Errno.EINTR or Errno.EAGAIN or Errno.EBUSY;
    }

    /// <summary>Takes the oldest completion, if any.</summary>
    public bool TryTakeCompletion(out ulong userData, out int result)
    {
        uint head = *_cqHead;
        if (head == Volatile.Read(ref *_cqTail))
        {
            userData = 0;
            result = 0;
            return false;
        }

        byte* cqe = _cqes + ((head & _cqMask) * CqeBytes);
        userData = *(ulong*)cqe;
        result = *(int*)(cqe + 8);
        Volatile.Write(ref *_cqHead, head + 1);
        return true;
    }

    public void Dispose()
    {
        Posix.Munmap(_sqes, _sqesBytes);
        if (_cqRing != _sqRing)
        {
            Posix.Munmap(_cqRing, _cqRingBytes);
        }

        Posix.Munmap(_sqRing, _sqRingBytes);
        Posix.Close(_fd);
    }

    /// <summary>struct io_uring_params (120 bytes) with its two offset tables flattened.</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct Params
    {
        public uint SqEntries;
        public uint CqEntries;
        public uint Flags;
        public uint SqThreadCpu;
        public uint SqThreadIdle;
        public uint Features;
        public uint WqFd;
        public uint Reserved0, Reserved1, Reserved2;
        public uint SqHead, SqTail, SqRingMask, SqRingEntries, SqFlags, SqDropped, SqArray, SqReserved1;
        public ulong SqUserAddress;
        public uint CqHead, CqTail, CqRingMask, CqRingEntries, CqOverflow, CqCqes, CqFlags, CqReserved1;
        public ulong CqUserAddress;
    }
}
