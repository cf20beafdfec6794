using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace PrlFuse.Fuse.Native;

/// <summary>
/// The answer to one read_buf request, built in libfuse's own format (a malloc'd struct fuse_bufvec): a list of
/// pieces in file order, each either memory that the filesystem fills (<see cref="AddMemory"/>) or a range of an open
/// file (<see cref="AddFile"/>) that libfuse splices from the page cache to /dev/fuse without copying it through
/// user space. libfuse frees the vector and every memory piece after replying. Pieces must add up to at most
/// <see cref="RequestedBytes"/>; fewer means end of file. Nothing is managed-allocated.
/// </summary>
public readonly unsafe ref struct FuseReadReply
{
    /// <summary>Most pieces one reply holds (libfuse sizes its splice pipe by the piece count, so keep it small).</summary>
    public const int MaxPieces = 32;

    private readonly FuseBufVec* _vector;

    private FuseReadReply(FuseBufVec* vector, int requestedBytes)
    {
        _vector = vector;
        RequestedBytes = requestedBytes;
    }

    /// <summary>What the kernel asked for.</summary>
    public int RequestedBytes { get; }

    public int Count => (int)_vector->Count;

    /// <summary>How many more pieces fit.</summary>
    public int Remaining => MaxPieces - Count;

    /// <summary>Bytes in the pieces added so far.</summary>
    public long Bytes
    {
        get
        {
            long total = 0;
            for (int i = 0; i < Count; i++)
            {
                total += (long)Piece(i)->Size;
            }

            return total;
        }
    }

    /// <summary>Adds <paramref name="length"/> bytes of memory to fill (zeroed when <paramref name="zeroed"/>).</summary>
    public Span<byte> AddMemory(int length, bool zeroed = false)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        var buf = Next();
        // NativeMemory.Alloc is malloc on Linux: libfuse releases it with free().
        void* mem = zeroed ? NativeMemory.AllocZeroed((nuint)Math.Max(length, 1)) : NativeMemory.Alloc((nuint)Math.Max(length, 1));
        *buf = new FuseBuf { Size = (nuint)length, Flags = 0, Mem = mem, Fd = -1 };
        _vector->Count++;
        return new Span<byte>(mem, length);
    }

    /// <summary>
    /// Adds <paramref name="length"/> bytes of <paramref name="file"/> from <paramref name="position"/> (read positionally:
    /// the descriptor's offset is neither used nor moved). The file must stay open until the reply is sent, i.e. until
    /// the mount ends, and the range must lie within the file (a short read would end the reply early).
    /// </summary>
    public void AddFile(SafeFileHandle file, long position, int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        ArgumentOutOfRangeException.ThrowIfNegative(position);
        var buf = Next();
        *buf = new FuseBuf
        {
            Size = (nuint)length,
            Flags = FuseBuf.IsFd | FuseBuf.FdSeek,
            Mem = null,
            Fd = checked((int)file.DangerousGetHandle()),
            Pos = position,
        };
        _vector->Count++;
    }

    /// <summary>
    /// Adds <paramref name="length"/> zero bytes: a range of a sealed, empty memfd (the kernel splices its holes as the
    /// shared zero page, nothing is allocated or copied in user space), or zeroed memory where there is no memfd.
    /// </summary>
    public void AddZeros(int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        int fd = ZeroSource.Fd;
        if (fd < 0 || length > ZeroSource.Bytes)
        {
            AddMemory(length, zeroed: true);
            return;
        }

        var buf = Next();
        *buf = new FuseBuf { Size = (nuint)length, Flags = FuseBuf.IsFd | FuseBuf.FdSeek, Mem = null, Fd = fd, Pos = 0 };
        _vector->Count++;
    }

    private FuseBuf* Piece(int i) => &_vector->Buf + i;

    private FuseBuf* Next() => Count < MaxPieces
        ? Piece(Count)
        : throw new InvalidOperationException($"a read reply holds at most {MaxPieces} pieces");

    internal static FuseReadReply Create(int requestedBytes)
    {
        nuint bytes = (nuint)(sizeof(FuseBufVec) + ((MaxPieces - 1) * sizeof(FuseBuf)));
        var vector = (FuseBufVec*)NativeMemory.AllocZeroed(bytes);
        return new FuseReadReply(vector, requestedBytes);
    }

    /// <summary>Hands the vector to libfuse (which frees it); an empty reply gets one empty memory piece.</summary>
    internal FuseBufVec* Complete()
    {
        if (Count == 0)
        {
            _vector->Buf = new FuseBuf { Size = 0, Mem = null, Fd = -1 };
            _vector->Count = 1;
        }

        _vector->Idx = 0;
        _vector->Off = 0;
        return _vector;
    }

    /// <summary>Frees the vector and its memory pieces (the request failed, libfuse never sees it).</summary>
    internal void Free()
    {
        FreePieces(_vector);
        NativeMemory.Free(_vector);
    }

    private static void FreePieces(FuseBufVec* vector)
    {
        for (nuint i = 0; i < vector->Count; i++)
        {
            var buf = &vector->Buf + i;
            if ((buf->Flags & FuseBuf.IsFd) == 0)
            {
                NativeMemory.Free(buf->Mem);
            }
        }

        vector->Count = 0;
    }
}

/// <summary>A process-wide memfd of <see cref="Bytes"/> zeros (a hole), sealed so nothing can write or resize it.</summary>
internal static class ZeroSource
{
    public const int Bytes = FuseSplice.KernelMaxRead;

    private static readonly int s_fd = Create();

    /// <summary>The descriptor, or -1 when memfds are not available. Never closed (lives as long as the process).</summary>
    public static int Fd => s_fd;

    private static int Create()
    {
        try
        {
            int fd = Posix.MemfdCreate("prlfuse-zeros", Posix.MfdCloexec | Posix.MfdAllowSealing);
            if (fd < 0)
            {
                return -1;
            }

            if (Posix.Ftruncate(fd, Bytes) != 0
                || Posix.Fcntl(fd, Posix.FAddSeals, Posix.FSealShrink | Posix.FSealGrow | Posix.FSealWrite | Posix.FSealSeal) != 0)
            {
                Posix.Close(fd);
                return -1;
            }

            return fd;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return -1;
        }
    }
}
