using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace PrlFuse.Fuse.Native;

/// <summary>
/// The answer to one read request, built in libfuse's own format (struct fuse_bufvec): a list of pieces in file order,
/// each either memory that the filesystem fills (<see cref="AddMemory"/>) or a range of an open file
/// (<see cref="AddFile"/>) that libfuse splices from the page cache to /dev/fuse without copying it through user space.
/// Pieces must add up to at most <see cref="RequestedBytes"/>; fewer means end of file. The vector and the memory
/// belong to the FUSE worker thread and are reused by its next request: nothing is allocated per request.
/// </summary>
public readonly unsafe ref struct FuseReadReply
{
    /// <summary>Most pieces one reply holds (libfuse sizes its splice pipe by the piece count, so keep it small).</summary>
    public const int MaxPieces = 32;

    private readonly ReplyBuffers* _buffers;

    private FuseReadReply(ReplyBuffers* buffers, int requestedBytes)
    {
        _buffers = buffers;
        RequestedBytes = requestedBytes;
    }

    /// <summary>What the kernel asked for.</summary>
    public int RequestedBytes { get; }

    public int Count => (int)_buffers->Vector->Count;

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
        if (length > _buffers->MemoryBytes - _buffers->MemoryUsed)
        {
            throw new InvalidOperationException($"the pieces of a read reply exceed the {RequestedBytes} bytes asked for");
        }

        var buf = Next();
        byte* mem = _buffers->Memory + _buffers->MemoryUsed;
        _buffers->MemoryUsed += length;
        *buf = new FuseBuf { Size = (nuint)length, Flags = 0, Mem = mem, Fd = -1 };
        _buffers->Vector->Count++;
        var span = new Span<byte>(mem, length);
        if (zeroed)
        {
            span.Clear();
        }

        return span;
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
        _buffers->Vector->Count++;
    }

    /// <summary>
    /// Adds <paramref name="length"/> zero bytes: a range of a sealed, empty memfd (the kernel splices its holes as the
    /// shared zero page, nothing is copied in user space), or zeroed memory where there is no memfd.
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
        _buffers->Vector->Count++;
    }

    private FuseBuf* Piece(int i) => &_buffers->Vector->Buf + i;

    private FuseBuf* Next() => Count < MaxPieces
        ? Piece(Count)
        : throw new InvalidOperationException($"a read reply holds at most {MaxPieces} pieces");

    /// <summary>An empty reply for <paramref name="requestedBytes"/> over this thread's buffers (made or grown here).</summary>
    internal static FuseReadReply ForThisThread(int requestedBytes) => new(ReplyBuffers.ForThisThread(requestedBytes), requestedBytes);

    /// <summary>The vector to hand to fuse_reply_data (valid until this thread's next request).</summary>
    internal FuseBufVec* Vector
    {
        get
        {
            var vector = _buffers->Vector;
            vector->Idx = 0;
            vector->Off = 0;
            return vector;
        }
    }

    /// <summary>The memory of a reply made of one memory piece (or none: no bytes), else null.</summary>
    internal bool IsPlainMemory(out byte* memory, out int bytes)
    {
        var vector = _buffers->Vector;
        if (vector->Count == 0)
        {
            memory = _buffers->Memory;
            bytes = 0;
            return true;
        }

        if (vector->Count == 1 && (vector->Buf.Flags & FuseBuf.IsFd) == 0)
        {
            memory = (byte*)vector->Buf.Mem;
            bytes = (int)vector->Buf.Size;
            return true;
        }

        memory = null;
        bytes = 0;
        return false;
    }

    /// <summary>A FUSE worker thread's reply vector and memory, made on its first read and kept for the thread's life.</summary>
    internal struct ReplyBuffers
    {
        public FuseBufVec* Vector;
        public byte* Memory;
        public int MemoryBytes;
        public int MemoryUsed;

        [ThreadStatic]
        private static ReplyBuffers* t_buffers;

        /// <summary>This thread's buffers, emptied, with memory for at least <paramref name="bytes"/>.</summary>
        public static ReplyBuffers* ForThisThread(int bytes)
        {
            var buffers = t_buffers;
            if (buffers == null)
            {
                buffers = (ReplyBuffers*)NativeMemory.AllocZeroed((nuint)sizeof(ReplyBuffers));
                buffers->Vector = (FuseBufVec*)NativeMemory.AllocZeroed((nuint)(sizeof(FuseBufVec) + ((MaxPieces - 1) * sizeof(FuseBuf))));
                t_buffers = buffers;
            }

            if (buffers->MemoryBytes < bytes)
            {
                // Untouched pages of a large buffer cost no memory; a thread that only sees small reads keeps a small one.
                int size = Math.Max(bytes, 64 * 1024);
                buffers->Memory = (byte*)NativeMemory.Realloc(buffers->Memory, (nuint)size);
                buffers->MemoryBytes = size;
            }

            buffers->MemoryUsed = 0;
            buffers->Vector->Count = 0;
            return buffers;
        }
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
