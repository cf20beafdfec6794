using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;

namespace PrlFuse.Fuse.Native;

/// <summary>
/// A FUSE mount served without libfuse: /dev/fuse opened and mounted with mount(2) (root only), requests answered by
/// <see cref="FuseRequestDispatcher"/>. Two transports: <see cref="FuseTransport.Device"/> (threads reading /dev/fuse,
/// each on its own cloned descriptor, answering with writev) and <see cref="FuseTransport.Uring"/> (after init, every
/// request goes through io_uring rings, one set per CPU queue: the answer and the wait for the next request are one
/// system call). With io_uring, one /dev/fuse thread stays for what the kernel still sends there (forgets, interrupts).
/// </summary>
internal sealed unsafe class FuseKernelSession : IDisposable
{
    private const int DeviceBufferBytes = FuseProtocol.MaxPayload + FuseProtocol.PageSize;

    private readonly string _mountpoint;
    private readonly FuseRequestDispatcher _dispatcher;
    private readonly FuseMountOptions _options;
    private readonly int _deviceFd;
    private readonly Lock _lock = new();
    private readonly List<Thread> _threads = [];
    private readonly List<int> _clonedFds = [];
    private int _closed;

    private FuseKernelSession(string mountpoint, IFuseFileSystem fs, FuseMountOptions options, int deviceFd, bool uring)
    {
        _mountpoint = mountpoint;
        _options = options;
        _deviceFd = deviceFd;
        _dispatcher = new FuseRequestDispatcher(fs, options.OnCallbackException, uring);
    }

    /// <summary>The transport serving now: io_uring once the kernel agreed to it at init, else /dev/fuse.</summary>
    public FuseTransport Transport => _dispatcher.UringNegotiated ? FuseTransport.Uring : FuseTransport.Device;

    /// <summary>Why <paramref name="transport"/> cannot serve this mount here, or null if it can.</summary>
    public static string? Unavailable(FuseTransport transport, FuseMountOptions options)
    {
        if (Posix.GetEffectiveUid() != 0)
        {
            return "mounting without libfuse needs root (fusermount3 is libfuse's)";
        }

        if (options.Debug)
        {
            return "-d (request logging) is libfuse's";
        }

        if (options.ExtraOptions.Count > 0)
        {
            return $"-o {string.Join(',', options.ExtraOptions)} is left to libfuse";
        }

        if (!File.Exists("/dev/fuse"))
        {
            return "/dev/fuse is missing";
        }

        return transport == FuseTransport.Uring ? UringUnavailable() : null;
    }

    /// <summary>Why FUSE over io_uring cannot be used, or null.</summary>
    public static string? UringUnavailable()
    {
        const string parameter = "/sys/module/fuse/parameters/enable_uring";
        try
        {
            if (!File.Exists(parameter))
            {
                return "the kernel has no FUSE over io_uring (6.14 or later)";
            }

            if (!File.ReadAllText(parameter).Trim().Equals("Y", StringComparison.Ordinal))
            {
                return $"FUSE over io_uring is off ({parameter} is N)";
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return $"{parameter}: {e.Message}";
        }

        return IoUring.IsAvailable() ? null : "io_uring is not allowed here (kernel.io_uring_disabled or a seccomp filter)";
    }

    /// <summary>Opens /dev/fuse and mounts it on <paramref name="mountpoint"/>; throws <see cref="IOException"/> (errno in HResult).</summary>
    public static FuseKernelSession Mount(string mountpoint, IFuseFileSystem fs, FuseMountOptions options, bool uring)
    {
        int fd = Posix.Open("/dev/fuse", Posix.OReadWrite | Posix.OCloexec, 0);
        if (fd < 0)
        {
            int errno = Posix.LastError;
            throw new IOException($"cannot open /dev/fuse (errno {errno}): is the fuse module loaded?", errno);
        }

        var data = new StringBuilder();
        data.Append(CultureInfo.InvariantCulture, $"fd={fd},rootmode=40000,user_id={Posix.GetUid()},group_id={Posix.GetGid()}");
        if (options.AllowOther)
        {
            data.Append(",allow_other");
        }

        if (options.DefaultPermissions)
        {
            data.Append(",default_permissions");
        }

        if (options.MaxRead is { } maxRead)
        {
            data.Append(CultureInfo.InvariantCulture, $",max_read={maxRead}");
        }

        ulong flags = Posix.MsNoSuid | Posix.MsNoDev | (options.ReadOnly ? Posix.MsReadOnly : 0);
        string type = options.Subtype is { Length: > 0 } subtype ? "fuse." + subtype : "fuse";
        if (Posix.Mount(options.FsName ?? "prlfuse", mountpoint, type, flags, data.ToString()) != 0)
        {
            int errno = Posix.LastError;
            Posix.Close(fd);
            throw new IOException($"mount of {mountpoint} failed (errno {errno})", errno);
        }

        return new FuseKernelSession(mountpoint, fs, options, fd, uring);
    }

    /// <summary>Serves until the filesystem is unmounted, then calls the filesystem's Destroy. Returns 0.</summary>
    public int Run()
    {
        StartThread(() => DeviceLoop(_deviceFd, firstThread: true), "prlfuse-fuse");
        while (true)
        {
            Thread? next;
            lock (_lock)
            {
                next = _threads.FirstOrDefault(t => t.IsAlive);
            }

            if (next is null)
            {
                break;
            }

            next.Join();
        }

        _dispatcher.Destroy();
        Close();
        return 0;
    }

    private void StartThread(ThreadStart body, string name)
    {
        var thread = new Thread(body) { IsBackground = true, Name = name };
        lock (_lock)
        {
            _threads.Add(thread);
        }

        thread.Start();
    }

    /// <summary>After init: io_uring queues if the kernel agreed, else more /dev/fuse threads, each on a clone.</summary>
    private void StartServing()
    {
        if (_dispatcher.UringNegotiated)
        {
            int queues = PossibleCpus();
            int perQueue = Math.Max(2, _options.MaxThreads / queues);
            for (int q = 0; q < queues; q++)
            {
                for (int t = 0; t < perQueue; t++)
                {
                    ushort queue = (ushort)q;
                    StartThread(() => RingLoop(queue), $"prlfuse-ring{q}");
                }
            }

            return;
        }

        for (int i = 1; i < Math.Max(1, _options.MaxThreads); i++)
        {
            int clone = Clone();
            if (clone < 0)
            {
                break;
            }

            StartThread(() => DeviceLoop(clone, firstThread: false), "prlfuse-fuse");
        }
    }

    private int Clone()
    {
        int fd = Posix.Open("/dev/fuse", Posix.OReadWrite | Posix.OCloexec, 0);
        if (fd < 0)
        {
            return -1;
        }

        uint master = (uint)_deviceFd;
        if (Posix.Ioctl(fd, FuseProtocol.DevIocClone, &master) != 0)
        {
            Posix.Close(fd);
            return -1;
        }

        lock (_lock)
        {
            _clonedFds.Add(fd);
        }

        return fd;
    }

    /// <summary>num_possible_cpus(): the kernel makes one queue per possible CPU and needs all of them registered.</summary>
    private static int PossibleCpus()
    {
        try
        {
            int count = 0;
            foreach (string range in File.ReadAllText("/sys/devices/system/cpu/possible").Trim().Split(','))
            {
                string[] ends = range.Split('-');
                int first = int.Parse(ends[0], CultureInfo.InvariantCulture);
                int last = ends.Length > 1 ? int.Parse(ends[1], CultureInfo.InvariantCulture) : first;
                count += last - first + 1;
            }

            return Math.Max(1, count);
        }
        catch (Exception e) when (e is IOException or FormatException or UnauthorizedAccessException)
        {
            return Environment.ProcessorCount;
        }
    }

    private void DeviceLoop(int fd, bool firstThread)
    {
        byte* input = (byte*)NativeMemory.AlignedAlloc(DeviceBufferBytes, FuseProtocol.PageSize);
        byte* output = (byte*)NativeMemory.AlignedAlloc(FuseProtocol.MaxPayload, FuseProtocol.PageSize);
        nint* vectors = stackalloc nint[4];
        FuseOutHeader reply;
        var splice = _dispatcher.ProvidesReadPieces ? SplicePipe.Create() : default;
        try
        {
            while (true)
            {
                nint n = Posix.Read(fd, input, DeviceBufferBytes);
                if (n < 0)
                {
                    int errno = Posix.LastError;
                    if (errno is Errno.EINTR or Errno.EAGAIN or Errno.ENOENT)
                    {
                        continue; // ENOENT: the request was interrupted before we read it
                    }

                    if (errno != Errno.ENODEV)
                    {
                        Report(new IOException($"reading /dev/fuse failed (errno {errno})", errno));
                    }

                    return; // ENODEV: unmounted
                }

                if (n < FuseProtocol.InHeaderBytes)
                {
                    continue;
                }

                var header = (FuseInHeader*)input;
                if (header->Opcode == FuseProtocol.Read && splice.Usable)
                {
                    ReplyToRead(fd, header, (FuseReadIn*)(input + FuseProtocol.InHeaderBytes), ref splice, output, vectors);
                    continue;
                }

                int argumentBytes = FuseRequestDispatcher.ArgumentBytes(header->Opcode);
                int payloadBytes = (int)Math.Max(0, n - FuseProtocol.InHeaderBytes - argumentBytes);
                byte* arguments = input + FuseProtocol.InHeaderBytes;
                int rc = _dispatcher.Handle(header, arguments, arguments + argumentBytes, payloadBytes, output, FuseProtocol.MaxPayload);
                if (rc == FuseRequestDispatcher.NoReply)
                {
                    continue;
                }

                int length = rc > 0 ? rc : 0;
                reply = new FuseOutHeader { Length = (uint)(FuseProtocol.OutHeaderBytes + length), Error = rc < 0 ? rc : 0, Unique = header->Unique };
                vectors[0] = (nint)(&reply);
                vectors[1] = FuseProtocol.OutHeaderBytes;
                vectors[2] = (nint)output;
                vectors[3] = length;
                // ENOENT: the request was interrupted meanwhile; nothing to do.
                Posix.WriteV(fd, vectors, length > 0 ? 2 : 1);
                if (firstThread && header->Opcode == FuseProtocol.Init)
                {
                    StartServing();
                }
            }
        }
        finally
        {
            splice.Dispose();
            NativeMemory.AlignedFree(input);
            NativeMemory.AlignedFree(output);
        }
    }

    /// <summary>
    /// A read answered from the filesystem's pieces: one memory piece goes out with writev; file pieces are spliced
    /// from the page cache through this thread's pipe to /dev/fuse (one copy instead of two), and copied with pread
    /// when splicing fails.
    /// </summary>
    private void ReplyToRead(int fd, FuseInHeader* header, FuseReadIn* request, ref SplicePipe splice, byte* output, nint* vectors)
    {
        int rc = _dispatcher.ReadPieces(header, request, out var pieces);
        var reply = new FuseOutHeader { Length = FuseProtocol.OutHeaderBytes, Error = rc < 0 ? rc : 0, Unique = header->Unique };
        vectors[0] = (nint)(&reply);
        vectors[1] = FuseProtocol.OutHeaderBytes;
        if (rc < 0)
        {
            Posix.WriteV(fd, vectors, 1);
            return;
        }

        if (!pieces.IsPlainMemory(out byte* memory, out int bytes))
        {
            bytes = (int)pieces.Bytes;
            reply.Length += (uint)bytes;
            if (splice.Send(fd, &reply, pieces.Vector, bytes))
            {
                return;
            }

            if (!CopyPieces(pieces.Vector, output))
            {
                reply.Length = FuseProtocol.OutHeaderBytes;
                reply.Error = -Errno.EIO;
                Posix.WriteV(fd, vectors, 1);
                return;
            }

            memory = output;
        }
        else
        {
            reply.Length += (uint)bytes;
        }

        vectors[2] = (nint)memory;
        vectors[3] = bytes;
        Posix.WriteV(fd, vectors, bytes > 0 ? 2 : 1);
    }

    private static bool CopyPieces(FuseBufVec* vector, byte* output)
    {
        byte* at = output;
        for (nuint i = 0; i < vector->Count; i++)
        {
            var piece = &vector->Buf + i;
            int size = (int)piece->Size;
            if ((piece->Flags & FuseBuf.IsFd) == 0)
            {
                Buffer.MemoryCopy(piece->Mem, at, size, size);
            }
            else
            {
                for (int done = 0; done < size;)
                {
                    nint n = Posix.PRead(piece->Fd, at + done, size - done, piece->Pos + done);
                    if (n <= 0)
                    {
                        return false;
                    }

                    done += (int)n;
                }
            }

            at += size;
        }

        return true;
    }

    /// <summary>A /dev/fuse thread's pipe for spliced read replies, large enough for a whole reply of the largest read.</summary>
    private struct SplicePipe : IDisposable
    {
        private const int PipeBytes = 2 * FuseProtocol.MaxPayload;
        private const int FSetFl = 4, ONonBlock = 0x800; // F_SETFL, O_NONBLOCK
        private int _read;
        private int _write;

        public readonly bool Usable => _write > 0;

        public static SplicePipe Create()
        {
            int* fds = stackalloc int[2];
            if (Posix.Pipe2(fds, Posix.OCloexec) != 0)
            {
                return default;
            }

            // The read end does not block: a failed reply may have left bytes in the pipe, or none (a refused splice to
            // /dev/fuse takes them all), and Drain must not wait for more.
            if (Posix.Fcntl(fds[0], Posix.FSetPipeSize, PipeBytes) < PipeBytes || Posix.Fcntl(fds[0], FSetFl, ONonBlock) != 0)
            {
                Posix.Close(fds[0]);
                Posix.Close(fds[1]);
                return default;
            }

            return new SplicePipe { _read = fds[0], _write = fds[1] };
        }

        /// <summary>Header and pieces into the pipe, then the whole message to /dev/fuse; false (pipe emptied) on failure.</summary>
        public readonly bool Send(int device, FuseOutHeader* header, FuseBufVec* vector, int bytes)
        {
            bool ok = Posix.Write(_write, (byte*)header, FuseProtocol.OutHeaderBytes) == FuseProtocol.OutHeaderBytes;
            for (nuint i = 0; ok && i < vector->Count; i++)
            {
                var piece = &vector->Buf + i;
                long size = (long)piece->Size;
                if ((piece->Flags & FuseBuf.IsFd) == 0)
                {
                    nint n = Posix.Write(_write, (byte*)piece->Mem, (nint)size);
                    ok = n == size;
                    continue;
                }

                long position = piece->Pos;
                for (long done = 0; ok && done < size;)
                {
                    nint n = Posix.Splice(piece->Fd, &position, _write, null, (nuint)(size - done), 0);
                    ok = n > 0;
                    done += Math.Max(0, n);
                }
            }

            if (ok && Posix.Splice(_read, null, device, null, (nuint)(FuseProtocol.OutHeaderBytes + bytes), 0) == FuseProtocol.OutHeaderBytes + bytes)
            {
                return true;
            }

            Drain();
            return false;
        }

        // What a failed reply left in the pipe goes, so the next reply starts clean.
        private readonly void Drain()
        {
            byte* scratch = stackalloc byte[4096];
            while (Posix.Read(_read, scratch, 4096) > 0)
            {
            }
        }

        public readonly void Dispose()
        {
            if (_write > 0)
            {
                Posix.Close(_read);
                Posix.Close(_write);
            }
        }
    }

    /// <summary>
    /// One io_uring with one registered entry (a header block and a payload buffer) for CPU queue
    /// <paramref name="queue"/>. The kernel hands a queue's requests to whichever of its entries is free; an entry per
    /// thread means a request that blocks (an fsync, a filesystem waiting for another request) never holds back a
    /// request given to an entry that nobody serves.
    /// </summary>
    private void RingLoop(ushort queue)
    {
        IoUring ring;
        try
        {
            ring = IoUring.Create(2);
        }
        catch (IOException e)
        {
            Report(e);
            return;
        }

        byte* headers = (byte*)NativeMemory.AlignedAlloc(FuseProtocol.UringHeaderBytes, 64);
        byte* payload = (byte*)NativeMemory.AlignedAlloc(FuseProtocol.MaxPayload, FuseProtocol.PageSize);
        nint* vectors = stackalloc nint[4];
        vectors[0] = (nint)headers;
        vectors[1] = FuseProtocol.UringHeaderBytes;
        vectors[2] = (nint)payload;
        vectors[3] = FuseProtocol.MaxPayload;
        try
        {
            QueueCommand(ring, FuseProtocol.UringCmdRegister, queue, 0, vectors);
            while (true)
            {
                if (!ring.SubmitAndWait(out int enterErrno))
                {
                    Report(new IOException($"io_uring_enter failed (errno {enterErrno})", enterErrno));
                    return;
                }

                if (!ring.TryTakeCompletion(out _, out int result))
                {
                    continue;
                }

                if (result == -Errno.EAGAIN || result == -Errno.ENOENT)
                {
                    // EAGAIN: registered before the kernel finished init. ENOENT: the answered request was gone
                    // (interrupted); the entry is no longer the kernel's, so it is registered again.
                    if (result == -Errno.EAGAIN)
                    {
                        Thread.Sleep(1);
                    }

                    QueueCommand(ring, FuseProtocol.UringCmdRegister, queue, 0, vectors);
                    continue;
                }

                if (result < 0)
                {
                    if (-result is not (Errno.ENOTCONN or Errno.ECONNABORTED or Errno.ECANCELED))
                    {
                        Report(new IOException($"FUSE over io_uring on queue {queue} ended (errno {-result})", -result));
                    }

                    return;
                }

                var inOut = (FuseUringEntInOut*)(headers + FuseProtocol.UringEntInOutOffset);
                var header = (FuseInHeader*)headers;
                ulong unique = header->Unique;
                ulong commitId = inOut->CommitId;
                byte* arguments = headers + FuseProtocol.UringInOutHeaderBytes;
                int rc = header->Opcode == FuseProtocol.Read && _dispatcher.ProvidesReadPieces
                    ? ReadIntoPayload(header, (FuseReadIn*)arguments, payload)
                    : _dispatcher.Handle(header, arguments, payload, (int)inOut->PayloadBytes, payload, FuseProtocol.MaxPayload);
                if (rc == FuseRequestDispatcher.NoReply)
                {
                    rc = 0;
                }

                int length = rc > 0 ? rc : 0;
                *(FuseOutHeader*)headers = new FuseOutHeader { Length = (uint)(FuseProtocol.OutHeaderBytes + length), Error = rc < 0 ? rc : 0, Unique = unique };
                inOut->PayloadBytes = (uint)length;
                QueueCommand(ring, FuseProtocol.UringCmdCommitAndFetch, queue, commitId, vectors);
            }
        }
        finally
        {
            ring.Dispose();
            NativeMemory.AlignedFree(headers);
            NativeMemory.AlignedFree(payload);
        }
    }

    /// <summary>
    /// A read answered from the filesystem's pieces, copied into the ring entry's payload: the same reads as with
    /// libfuse reach the filesystem's cache (large ones go straight to the image files), only nothing can be spliced.
    /// </summary>
    private int ReadIntoPayload(FuseInHeader* header, FuseReadIn* request, byte* payload)
    {
        int rc = _dispatcher.ReadPieces(header, request, out var pieces);
        if (rc < 0)
        {
            return rc;
        }

        if (pieces.IsPlainMemory(out byte* memory, out int bytes))
        {
            Buffer.MemoryCopy(memory, payload, FuseProtocol.MaxPayload, bytes);
            return bytes;
        }

        return CopyPieces(pieces.Vector, payload) ? (int)pieces.Bytes : -Errno.EIO;
    }

    /// <summary>An IORING_OP_URING_CMD on /dev/fuse carrying struct fuse_uring_cmd_req (flags, commit_id, qid).</summary>
    private void QueueCommand(IoUring ring, uint command, ushort queue, ulong commitId, nint* vectors)
    {
        byte* sqe = ring.NextSqe();
        sqe[0] = IoUring.OpUringCmd;
        *(int*)(sqe + 4) = _deviceFd;
        *(uint*)(sqe + 8) = command;
        *(ulong*)(sqe + 16) = (ulong)vectors;
        *(uint*)(sqe + 24) = 2;
        *(ulong*)(sqe + 56) = commitId;
        *(ushort*)(sqe + 64) = queue;
    }

    private void Report(Exception e)
    {
        try
        {
            if (_options.OnCallbackException is { } report)
            {
                report(e);
            }
            else
            {
                Console.Error.WriteLine($"prlfuse: {e.Message}");
            }
        }
        catch (Exception)
        {
            // Reporting must not take the serving thread down.
        }
    }

    /// <summary>Non-lazy unmount (the threads then see the connection end).</summary>
    public int TryUnmount() => Posix.Umount2(_mountpoint, 0) == 0 ? 0 : Marshal.GetLastPInvokeError();

    private void Close()
    {
        if (Interlocked.Exchange(ref _closed, 1) != 0)
        {
            return;
        }

        lock (_lock)
        {
            foreach (int fd in _clonedFds)
            {
                Posix.Close(fd);
            }

            _clonedFds.Clear();
        }

        Posix.Close(_deviceFd);
        _dispatcher.Dispose();
    }

    /// <summary>Before <see cref="Run"/> (or after it): detaches the mount and closes the device.</summary>
    public void Dispose()
    {
        if (Volatile.Read(ref _closed) == 0)
        {
            Posix.Umount2(_mountpoint, Posix.MntDetach);
            Close();
        }
    }
}
