using System.Buffers;
using System.Buffers.Binary;
using System.Net.Sockets;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Images;
using PrlFuse.Core.IO;
using PrlFuse.Nbd.Protocol;

namespace PrlFuse.Nbd;

/// <summary>Transmission: requests read and checked, served inline or by the workers, replies sent whole.</summary>
internal sealed partial class NbdConnection
{
    private void Transmit(NbdExport export)
    {
        _budget = new ByteBudget(Options.MaxConnectionBufferedBytes);
        var queue = new RequestQueue(QueueCapacity);
        var workers = new Thread[Math.Max(1, Options.WorkersPerConnection)];
        for (int i = 0; i < workers.Length; i++)
        {
            workers[i] = new Thread(() => Work(queue, export)) { IsBackground = true, Name = $"nbd-{Id}-worker" };
            workers[i].Start();
        }

        try
        {
            ReadRequests(queue, export);
        }
        finally
        {
            // Requests already read are served and answered before the connection closes.
            queue.Complete();
            foreach (var worker in workers)
            {
                worker.Join();
            }

            if (Volatile.Read(ref _written) != 0)
            {
                FlushAtEnd(export);
            }
        }
    }

    private void FlushAtEnd(NbdExport export)
    {
        try
        {
            export.View.Flush();
        }
        catch (IOException e)
        {
            Options.Log?.Invoke($"export {export.Name}: flushing after client {Id} failed: {e.Message}");
        }
    }

    private void ReadRequests(RequestQueue queue, NbdExport export)
    {
        var scratch = new ReplyScratch();
        while (!_broken)
        {
            if (!TryReadRequestHeader())
            {
                Debug("the client closed the connection");
                return;
            }

            if (!NbdRequestHeader.TryRead(_requestHeader, out var request))
            {
                Debug("dropped: a request without the request magic");
                return;
            }

            if (request.Type == NbdCommand.Disconnect)
            {
                Debug("disconnects");
                return;
            }

            uint error = Check(request, export, out var message);
            if (error != NbdError.None)
            {
                if (request.Type == NbdCommand.Write)
                {
                    if (request.Length > NbdLimits.MaxPayloadBytes)
                    {
                        // Its data cannot be skipped at an acceptable cost: answered, then the connection ends.
                        SendError(request, error, message, scratch);
                        Debug($"dropped: a WRITE of {request.Length} bytes");
                        return;
                    }

                    Skip(request.Length, scratch.Header);
                }

                SendError(request, error, message, scratch);
                continue;
            }

            if (request.Type == NbdCommand.Read && TryServeCachedRead(request, export.View, scratch))
            {
                continue;
            }

            long charge = request.Type is NbdCommand.Read or NbdCommand.Write ? request.Length : 0;
            if (!AcquireBudget(charge))
            {
                SendError(request, NbdError.Shutdown, "the server is stopping"u8, scratch);
                return;
            }

            // A READ's buffer is taken by its worker, and only when the data is copied (see ServeRead).
            byte[]? buffer = null;
            if (request.Type == NbdCommand.Write)
            {
                buffer = ArrayPool<byte>.Shared.Rent((int)charge);
                try
                {
                    _stream.ReadExactly(buffer.AsSpan(0, (int)request.Length));
                }
                catch
                {
                    ArrayPool<byte>.Shared.Return(buffer!);
                    ReleaseBudget(charge);
                    throw;
                }
            }

            queue.Add(new PendingRequest(request, buffer, charge));
        }
    }

    /// <summary>False at the end of the stream before a header begins (the client closed, or the server stops).</summary>
    private bool TryReadRequestHeader()
    {
        int n = _stream.Read(_requestHeader);
        if (n == 0)
        {
            return false;
        }

        _stream.ReadExactly(_requestHeader.AsSpan(n));
        return true;
    }

    private void Skip(uint length, byte[] scratch)
    {
        while (length > 0)
        {
            int n = (int)Math.Min(length, (uint)scratch.Length);
            _stream.ReadExactly(scratch.AsSpan(0, n));
            length -= (uint)n;
        }
    }

    /// <summary>The error a request gets without being served (NbdError.None: serve it), and the words for it.</summary>
    private uint Check(in NbdRequestHeader request, NbdExport export, out ReadOnlySpan<byte> message)
    {
        ulong size = (ulong)export.Size;
        bool beyondEnd = request.Offset > size || request.Length > size - request.Offset;
        ushort allowed = NbdCommandFlags.Fua;
        switch (request.Type)
        {
            case NbdCommand.Read:
                allowed |= _structured ? NbdCommandFlags.DontFragment : (ushort)0;
                return (request.Flags & ~allowed) != 0 ? FlagsError(out message)
                    : request.Length > NbdLimits.MaxPayloadBytes ? TooLarge(out message)
                    : beyondEnd ? BeyondEnd(NbdError.Invalid, out message)
                    : Fine(out message);
            case NbdCommand.Write:
                return (request.Flags & ~allowed) != 0 ? FlagsError(out message)
                    : export.ReadOnly ? ReadOnly(out message)
                    : request.Length > NbdLimits.MaxPayloadBytes ? TooLarge(out message)
                    : beyondEnd ? BeyondEnd(NbdError.NoSpace, out message)
                    : Fine(out message);
            case NbdCommand.Flush:
                return (request.Flags & ~allowed) != 0 ? FlagsError(out message) : Fine(out message);
            case NbdCommand.Trim:
                return (request.Flags & ~allowed) != 0 ? FlagsError(out message)
                    : export.ReadOnly ? ReadOnly(out message)
                    : beyondEnd ? BeyondEnd(NbdError.Invalid, out message)
                    : Fine(out message);
            case NbdCommand.WriteZeroes:
                allowed |= NbdCommandFlags.NoHole;
                return (request.Flags & ~allowed) != 0 ? FlagsError(out message)
                    : export.ReadOnly ? ReadOnly(out message)
                    : beyondEnd ? BeyondEnd(NbdError.NoSpace, out message)
                    : Fine(out message);
            case NbdCommand.BlockStatus:
                allowed |= NbdCommandFlags.RequestOne;
                if (_contexts.Length == 0)
                {
                    message = "no metadata context was selected (NBD_OPT_SET_META_CONTEXT)"u8;
                    return NbdError.Invalid;
                }

                if (request.Length == 0)
                {
                    message = "BLOCK_STATUS of no bytes"u8;
                    return NbdError.Invalid;
                }

                return (request.Flags & ~allowed) != 0 ? FlagsError(out message)
                    : beyondEnd ? BeyondEnd(NbdError.Invalid, out message)
                    : Fine(out message);
            default:
                message = "unknown command"u8;
                return NbdError.Invalid;
        }

        static uint Fine(out ReadOnlySpan<byte> message)
        {
            message = default;
            return NbdError.None;
        }

        static uint FlagsError(out ReadOnlySpan<byte> message)
        {
            message = "command flags not valid for this command"u8;
            return NbdError.Invalid;
        }

        static uint TooLarge(out ReadOnlySpan<byte> message)
        {
            message = "request larger than the maximum block size (32 MiB)"u8;
            return NbdError.Invalid;
        }

        static uint ReadOnly(out ReadOnlySpan<byte> message)
        {
            message = "the export is read-only"u8;
            return NbdError.Permission;
        }

        static uint BeyondEnd(uint error, out ReadOnlySpan<byte> message)
        {
            message = "request beyond the end of the export"u8;
            return error;
        }
    }

    private bool AcquireBudget(long bytes)
    {
        if (bytes == 0)
        {
            return !_server.Budget.IsClosed;
        }

        if (!_budget!.Acquire(bytes))
        {
            return false;
        }

        if (!_server.Budget.Acquire(bytes))
        {
            _budget.Release(bytes);
            return false;
        }

        return true;
    }

    private void ReleaseBudget(long bytes)
    {
        if (bytes > 0)
        {
            _budget!.Release(bytes);
            _server.Budget.Release(bytes);
        }
    }

    private void Work(RequestQueue queue, NbdExport export)
    {
        var scratch = new ReplyScratch();
        while (queue.TryTake(out var pending))
        {
            try
            {
                Serve(pending, export, scratch);
            }
#pragma warning disable CA1031 // one request's bug must not end the others': it is answered EIO and said
            catch (Exception e)
#pragma warning restore CA1031
            {
                Options.Log?.Invoke($"internal error serving a request of client {Id} on export {export.Name}: {e}");
                SendError(pending.Header, NbdError.Io, "internal server error"u8, scratch);
            }
            finally
            {
                if (pending.Buffer is { } buffer)
                {
                    ArrayPool<byte>.Shared.Return(buffer);
                }

                ReleaseBudget(pending.Charged);
            }
        }
    }

    private void Serve(in PendingRequest pending, NbdExport export, ReplyScratch scratch)
    {
        var request = pending.Header;
        var view = export.View;
        long offset = (long)request.Offset;
        bool fua = (request.Flags & NbdCommandFlags.Fua) != 0;
        try
        {
            switch (request.Type)
            {
                case NbdCommand.Read:
                    ServeRead(request, view, scratch);
                    return;
                case NbdCommand.BlockStatus:
                    ServeBlockStatus(request, view, scratch);
                    return;
                case NbdCommand.Write:
                    Volatile.Write(ref _written, 1);
                    view.Write(pending.Buffer.AsSpan(0, (int)request.Length), offset);
                    break;
                case NbdCommand.Flush:
                    view.Flush();
                    break;
                case NbdCommand.Trim:
                    Volatile.Write(ref _written, 1);
                    Discard(view, offset, request.Length, export);
                    break;
                case NbdCommand.WriteZeroes:
                    Volatile.Write(ref _written, 1);
                    if ((request.Flags & NbdCommandFlags.NoHole) != 0)
                    {
                        WriteZeros(view, offset, request.Length);
                    }
                    else
                    {
                        Discard(view, offset, request.Length, export);
                    }

                    break;
            }

            if (fua && request.Type is NbdCommand.Write or NbdCommand.Trim or NbdCommand.WriteZeroes)
            {
                view.Flush();
            }
        }
        catch (IOException e)
        {
            SendError(request, DiskError(e, export), "I/O error on the server"u8, scratch);
            return;
        }

        SendSimple(request.Handle, NbdError.None, scratch);
    }

    private void Discard(SnapshotView view, long offset, uint length, NbdExport export)
    {
        if (length > 0 && view.Discard(offset, length) && _server.FirstPunchFallback())
        {
            Options.Log?.Invoke($"export {export.Name}: the host filesystem of {view.Storages[0].TopLayer.Path} cannot punch holes; trimmed ranges are written with zeros");
        }
    }

    private static void WriteZeros(SnapshotView view, long offset, uint length)
    {
        long done = 0;
        while (done < length)
        {
            int n = (int)Math.Min(length - done, s_zeros.Length);
            view.Write(s_zeros.AsSpan(0, n), offset + done);
            done += n;
        }
    }

    /// <summary>The protocol's error for a failure of the disk, said on the server's log (damaged clusters once each).</summary>
    private uint DiskError(IOException e, NbdExport export)
    {
        if (e is not DamagedClusterException damaged || _server.FirstDamageReport(damaged.ImagePath, damaged.Cluster))
        {
            Options.Log?.Invoke($"export {export.Name}: {e.Message}");
        }

        return e is DamagedClusterException ? NbdError.Io : e.HResult switch
        {
            Errno.ENOSPC or Errno.EFBIG or 122 /* EDQUOT */ => NbdError.NoSpace,
            Errno.EROFS or Errno.EPERM or Errno.EACCES => NbdError.Permission,
            _ => NbdError.Io,
        };
    }

    /// <summary>
    /// READ: without structured replies, the data after a simple reply. With them, the range in chunks as the
    /// allocation tables cut it: data as OFFSET_DATA, unallocated ranges as OFFSET_HOLE (nothing read, nothing sent
    /// but their place); the last chunk is flagged DONE. On a plain socket the data goes straight from the images'
    /// page cache to the socket (<see cref="TrySendByReference"/>); otherwise, or when that cannot be done, it is read
    /// into a pooled buffer first, every piece before a byte is sent, so an error is answered as such.
    /// </summary>
    private void ServeRead(in NbdRequestHeader request, SnapshotView view, ReplyScratch scratch)
    {
        long offset = (long)request.Offset;
        int length = (int)request.Length;
        if (_structured && length == 0)
        {
            SendChunk(request.Handle, NbdReplyType.None, scratch);
            return;
        }

        var plan = scratch.Plan;
        int count = !_structured || (request.Flags & NbdCommandFlags.DontFragment) != 0
            ? Single(plan, offset, length)
            : PlanRead(view, offset, length, plan);
        if (_tls is null && length >= SendFileMinBytes && TrySendByReference(request, view, count, scratch))
        {
            return;
        }

        byte[] buffer = ArrayPool<byte>.Shared.Rent(length);
        try
        {
            ReadAndSend(request, view, count, buffer, scratch);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private void ReadAndSend(in NbdRequestHeader request, SnapshotView view, int count, byte[] buffer, ReplyScratch scratch)
    {
        long offset = (long)request.Offset;
        var plan = scratch.Plan;
        try
        {
            for (int i = 0; i < count; i++)
            {
                if (plan[i].Data)
                {
                    view.Read(buffer.AsSpan((int)(plan[i].Start - offset), plan[i].Length), plan[i].Start);
                }
            }
        }
        catch (IOException e)
        {
            SendError(request, DiskError(e, _export!), "I/O error on the server"u8, scratch);
            return;
        }

        scratch.Clear();
        int at = 0;
        for (int i = 0; i < count; i++)
        {
            int start = at;
            at += WriteReadHeader(request, plan, count, i, scratch.Header.AsSpan(at));
            scratch.Add(scratch.Header, start, at - start);
            if (plan[i].Data)
            {
                scratch.Add(buffer, (int)(plan[i].Start - offset), plan[i].Length);
            }
        }

        Send(scratch);
    }

    /// <summary>
    /// What goes before piece <paramref name="i"/> of a READ's reply: the simple reply (before the only piece), or its
    /// chunk's header (OFFSET_DATA with its offset, whose data follows; OFFSET_HOLE whole). Returns its length.
    /// </summary>
    private int WriteReadHeader(in NbdRequestHeader request, ReadPiece[] plan, int count, int i, Span<byte> header)
    {
        if (!_structured)
        {
            new NbdSimpleReplyHeader(NbdError.None, request.Handle).Write(header);
            return NbdSimpleReplyHeader.Size;
        }

        var piece = plan[i];
        ushort flags = i == count - 1 ? NbdReplyFlags.Done : (ushort)0;
        if (piece.Data)
        {
            new NbdStructuredReplyHeader(flags, NbdReplyType.OffsetData, request.Handle, (uint)(8 + piece.Length)).Write(header);
            BinaryPrimitives.WriteUInt64BigEndian(header[NbdStructuredReplyHeader.Size..], (ulong)piece.Start);
            return NbdStructuredReplyHeader.Size + 8;
        }

        new NbdStructuredReplyHeader(flags, NbdReplyType.OffsetHole, request.Handle, 12).Write(header);
        BinaryPrimitives.WriteUInt64BigEndian(header[NbdStructuredReplyHeader.Size..], (ulong)piece.Start);
        BinaryPrimitives.WriteUInt32BigEndian(header[(NbdStructuredReplyHeader.Size + 8)..], (uint)piece.Length);
        return NbdStructuredReplyHeader.Size + 12;
    }

    /// <summary>
    /// Sends a READ's data as ranges of the image files (sendfile: the socket takes the page cache's pages, nothing is
    /// copied here). False, with nothing sent, when a range cannot be mapped so (too many pieces, a file without a
    /// handle, a damaged mapping): the caller copies instead. A failure once the reply has begun can only drop the
    /// connection, as the protocol says for an error after a successful reply's header.
    /// </summary>
    private bool TrySendByReference(in NbdRequestHeader request, SnapshotView view, int count, ReplyScratch scratch, bool cachedOnly = false)
    {
        var plan = scratch.Plan;
        var pieces = scratch.HostPieces;
        int used = 0;
        try
        {
            for (int i = 0; i < count; i++)
            {
                scratch.PieceCounts[i] = 0;
                if (!plan[i].Data)
                {
                    continue;
                }

                int n = view.MapRange(plan[i].Start, plan[i].Length, pieces.AsSpan(used));
                if (n < 0)
                {
                    Array.Clear(pieces, 0, used);
                    return false;
                }

                for (int j = used; j < used + n; j++)
                {
                    if (pieces[j].File is { Handle: null } || (cachedOnly && !IsCached(pieces[j])))
                    {
                        Array.Clear(pieces, 0, used + n);
                        return false;
                    }
                }

                scratch.PieceCounts[i] = n;
                used += n;
            }
        }
        catch (IOException)
        {
            Array.Clear(pieces, 0, used);
            return false;
        }

        lock (_sendLock)
        {
            if (_broken)
            {
                return true;
            }

            bool added = false;
            try
            {
                _socket.SafeHandle.DangerousAddRef(ref added);
                int at = 0;
                int next = 0;
                for (int i = 0; i < count; i++)
                {
                    at += WriteReadHeader(request, plan, count, i, scratch.Header.AsSpan(at));
                    if (!plan[i].Data)
                    {
                        continue;
                    }

                    SendAll(scratch.Header.AsSpan(0, at));
                    at = 0;
                    for (int j = next; j < next + scratch.PieceCounts[i]; j++)
                    {
                        SendPiece(pieces[j]);
                    }

                    next += scratch.PieceCounts[i];
                }

                SendAll(scratch.Header.AsSpan(0, at));
            }
            catch (Exception e) when (e is SocketException or IOException or ObjectDisposedException)
            {
                Broken(e);
            }
            finally
            {
                if (added)
                {
                    _socket.SafeHandle.DangerousRelease();
                }

                Array.Clear(pieces, 0, used);
            }
        }

        return true;
    }

    private void SendAll(ReadOnlySpan<byte> bytes)
    {
        if (!bytes.IsEmpty && _socket.Send(bytes) != bytes.Length)
        {
            throw new IOException("the socket took part of a reply");
        }
    }

    /// <summary>One piece of an image file by sendfile, or zeros; exactly its length either way, so the reply stays whole.</summary>
    private void SendPiece(in HostPiece piece)
    {
        int remaining = piece.Length;
        if (piece.File?.Handle is { } file)
        {
            long position = piece.HostOffset;
            while (remaining > 0)
            {
                nint n = Posix.SendFile(_socket.Handle, file, ref position, remaining);
                if (n > 0)
                {
                    remaining -= (int)n;
                }
                else if (n == 0)
                {
                    break; // the file ends before the piece (cut short meanwhile): the rest reads as zeros
                }
                else if (Posix.LastError is Errno.EAGAIN)
                {
                    if (!_socket.Poll(Options.SendTimeout, SelectMode.SelectWrite))
                    {
                        throw new IOException("the client took no reply bytes in time");
                    }
                }
                else if (Posix.LastError != 4 /* EINTR */)
                {
                    throw new IOException($"sendfile failed (errno {Posix.LastError})");
                }
            }
        }

        while (remaining > 0)
        {
            int n = Math.Min(remaining, s_zeros.Length);
            SendAll(s_zeros.AsSpan(0, n));
            remaining -= n;
        }
    }

    /// <summary>
    /// A READ whose data the page cache holds is sent by reference by the reader itself: no hand-over to a worker,
    /// which costs more than the send (a sequential copy is nearly all such reads). One that would wait for the disk
    /// goes to the workers, so reads of a random pattern still wait for the disk in parallel.
    /// </summary>
    private bool TryServeCachedRead(in NbdRequestHeader request, SnapshotView view, ReplyScratch scratch)
    {
        long offset = (long)request.Offset;
        int length = (int)request.Length;
        if (_tls is not null || length < SendFileMinBytes || (_structured && length == 0))
        {
            return false;
        }

        var plan = scratch.Plan;
        int count = !_structured || (request.Flags & NbdCommandFlags.DontFragment) != 0
            ? Single(plan, offset, length)
            : PlanRead(view, offset, length, plan);
        return TrySendByReference(request, view, count, scratch, cachedOnly: true);
    }

    /// <summary>
    /// Whether the page cache holds a piece's last byte (preadv2 with RWF_NOWAIT): read ahead in order, the rest of it
    /// is held too. A file system that cannot tell says no.
    /// </summary>
    private static bool IsCached(in HostPiece piece)
    {
        if (piece.File?.Handle is not { } file)
        {
            return true;
        }

        Span<byte> probe = stackalloc byte[1];
        return Posix.PReadNoWait(file, probe, piece.HostOffset + piece.Length - 1) >= 0;
    }

    private static int Single(ReadPiece[] plan, long offset, int length)
    {
        plan[0] = new ReadPiece(offset, length, Data: true);
        return 1;
    }

    /// <summary>Cuts [offset, offset + length) into data and holes from the allocation tables; at most plan.Length pieces.</summary>
    internal static int PlanRead(SnapshotView view, long offset, int length, ReadPiece[] plan)
    {
        long end = offset + length;
        long position = offset;
        int count = 0;
        while (position < end)
        {
            if (count == plan.Length - 1)
            {
                plan[count++] = new ReadPiece(position, (int)(end - position), Data: true);
                break;
            }

            long data = view.SeekData(position);
            if (data < 0 || data >= end)
            {
                plan[count++] = new ReadPiece(position, (int)(end - position), Data: false);
                break;
            }

            if (data > position)
            {
                plan[count++] = new ReadPiece(position, (int)(data - position), Data: false);
                position = data;
                continue;
            }

            long hole = view.SeekHole(position);
            long stop = hole <= position ? end : Math.Min(hole, end);
            plan[count++] = new ReadPiece(position, (int)(stop - position), Data: true);
            position = stop;
        }

        return count;
    }

    /// <summary>
    /// BLOCK_STATUS: one chunk per selected context, in the order of their IDs, the last flagged DONE. base:allocation
    /// says HOLE|ZERO where no layer holds data and 0 where one does; qemu:allocation-depth the depth in the chain of
    /// the layer that holds it (1: the snapshot's own image) and 0 where none does. Consecutive extents of the same
    /// status are merged; at most one extent with REQ_ONE.
    /// </summary>
    private void ServeBlockStatus(in NbdRequestHeader request, SnapshotView view, ReplyScratch scratch)
    {
        long offset = (long)request.Offset;
        long end = offset + request.Length;
        int max = (request.Flags & NbdCommandFlags.RequestOne) != 0 ? 1 : MaxDescriptors;
        var header = scratch.Header.AsSpan();
        int at = 0;
        try
        {
            for (int i = 0; i < _contexts.Length; i++)
            {
                int chunk = at;
                at += NbdStructuredReplyHeader.Size;
                BinaryPrimitives.WriteUInt32BigEndian(header[at..], _contexts[i]);
                at += 4;
                int count = _contexts[i] == NbdMetaContext.BaseAllocationId
                    ? DescribeAllocation(view, offset, end, max, header[at..])
                    : DescribeDepth(view, offset, end, max, header[at..]);
                at += count * 8;
                ushort flags = i == _contexts.Length - 1 ? NbdReplyFlags.Done : (ushort)0;
                new NbdStructuredReplyHeader(flags, NbdReplyType.BlockStatus, request.Handle, (uint)(4 + (count * 8))).Write(header[chunk..]);
            }
        }
        catch (IOException e)
        {
            SendError(request, DiskError(e, _export!), "I/O error on the server"u8, scratch);
            return;
        }

        scratch.Clear();
        scratch.Add(scratch.Header, 0, at);
        Send(scratch);
    }

    internal static int DescribeAllocation(SnapshotView view, long offset, long end, int max, Span<byte> descriptors)
    {
        int count = 0;
        long position = offset;
        while (position < end)
        {
            long data = view.SeekData(position);
            uint flags;
            long stop;
            if (data == position)
            {
                flags = 0;
                stop = view.SeekHole(position);
            }
            else
            {
                flags = NbdMetaContext.StateHole | NbdMetaContext.StateZero;
                stop = data < 0 ? end : data;
            }

            stop = stop <= position ? end : Math.Min(stop, end);
            if (!AddDescriptor(descriptors, ref count, max, (uint)(stop - position), flags))
            {
                break;
            }

            position = stop;
        }

        return count;
    }

    internal static int DescribeDepth(SnapshotView view, long offset, long end, int max, Span<byte> descriptors)
    {
        int count = 0;
        long position = offset;
        while (position < end)
        {
            var extent = view.GetExtent(position, end - position);
            uint depth = extent.Depth < 0 ? 0 : (uint)extent.Depth + 1;
            long stop = extent.Length <= 0 ? end : Math.Min(position + extent.Length, end);
            if (!AddDescriptor(descriptors, ref count, max, (uint)(stop - position), depth))
            {
                break;
            }

            position = stop;
        }

        return count;
    }

    /// <summary>Appends an extent, merged into the last one when their status is the same; false when there is no room.</summary>
    private static bool AddDescriptor(Span<byte> descriptors, ref int count, int max, uint length, uint flags)
    {
        if (count > 0 && BinaryPrimitives.ReadUInt32BigEndian(descriptors[(((count - 1) * 8) + 4)..]) == flags)
        {
            var last = descriptors[((count - 1) * 8)..];
            BinaryPrimitives.WriteUInt32BigEndian(last, BinaryPrimitives.ReadUInt32BigEndian(last) + length);
            return true;
        }

        if (count == max)
        {
            return false;
        }

        BinaryPrimitives.WriteUInt32BigEndian(descriptors[(count * 8)..], length);
        BinaryPrimitives.WriteUInt32BigEndian(descriptors[((count * 8) + 4)..], flags);
        count++;
        return true;
    }

    private void SendSimple(ulong handle, uint error, ReplyScratch scratch)
    {
        scratch.Clear();
        new NbdSimpleReplyHeader(error, handle).Write(scratch.Header);
        scratch.Add(scratch.Header, 0, NbdSimpleReplyHeader.Size);
        Send(scratch);
    }

    private void SendChunk(ulong handle, ushort type, ReplyScratch scratch)
    {
        scratch.Clear();
        new NbdStructuredReplyHeader(NbdReplyFlags.Done, type, handle, 0).Write(scratch.Header);
        scratch.Add(scratch.Header, 0, NbdStructuredReplyHeader.Size);
        Send(scratch);
    }

    /// <summary>An error: with structured replies an ERROR chunk with words for a person; otherwise the simple reply's code.</summary>
    private void SendError(in NbdRequestHeader request, uint error, ReadOnlySpan<byte> message, ReplyScratch scratch)
    {
        if (!_structured)
        {
            SendSimple(request.Handle, error, scratch);
            return;
        }

        scratch.Clear();
        var header = scratch.Header.AsSpan();
        new NbdStructuredReplyHeader(NbdReplyFlags.Done, NbdReplyType.Error, request.Handle, (uint)(6 + message.Length)).Write(header);
        BinaryPrimitives.WriteUInt32BigEndian(header[NbdStructuredReplyHeader.Size..], error);
        BinaryPrimitives.WriteUInt16BigEndian(header[(NbdStructuredReplyHeader.Size + 4)..], (ushort)message.Length);
        message.CopyTo(header[(NbdStructuredReplyHeader.Size + 6)..]);
        scratch.Add(scratch.Header, 0, NbdStructuredReplyHeader.Size + 6 + message.Length);
        Send(scratch);
    }

    /// <summary>
    /// Writes one reply whole (one gathered send on a plain socket). A failure to send ends the connection (the reader
    /// is woken by the shutdown); it is never thrown at the request being served.
    /// </summary>
    private void Send(ReplyScratch scratch)
    {
        lock (_sendLock)
        {
            if (_broken)
            {
                return;
            }

            try
            {
                if (_tls is null)
                {
                    int sent = _socket.Send(scratch.Segments);
                    if (sent != scratch.Bytes)
                    {
                        throw new IOException($"sent {sent} of {scratch.Bytes} bytes of a reply");
                    }
                }
                else
                {
                    foreach (var segment in scratch.Segments)
                    {
                        _tls.Write(segment.AsSpan());
                    }
                }
            }
            catch (Exception e) when (e is SocketException or IOException or ObjectDisposedException)
            {
                Broken(e);
            }
        }
    }

    /// <summary>A reply could not be sent whole: the connection ends (the reader is woken by the shutdown).</summary>
    private void Broken(Exception e)
    {
        _broken = true;
        Debug($"dropped: a reply could not be sent: {e.Message}");
        try
        {
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (Exception e2) when (e2 is SocketException or ObjectDisposedException)
        {
        }
    }

    /// <summary>One piece of a READ's reply: data to read and send, or a hole to name.</summary>
    internal readonly record struct ReadPiece(long Start, int Length, bool Data);

    /// <summary>A thread's own room for reply headers, the pieces of one reply, and a READ's plan: made once, reused.</summary>
    private sealed class ReplyScratch
    {
        public byte[] Header { get; } = new byte[ScratchBytes];

        public ReadPiece[] Plan { get; } = new ReadPiece[MaxReadChunks];

        /// <summary>Where a READ's data pieces lie in the image files, and how many belong to each piece of the plan.</summary>
        public HostPiece[] HostPieces { get; } = new HostPiece[MaxHostPieces];

        public int[] PieceCounts { get; } = new int[MaxReadChunks];

        public List<ArraySegment<byte>> Segments { get; } = new(2 * MaxReadChunks);

        public int Bytes { get; private set; }

        public void Clear()
        {
            Segments.Clear();
            Bytes = 0;
        }

        /// <summary>Appends a piece; one that continues the last piece of the same array joins it (one iovec fewer).</summary>
        public void Add(byte[] array, int offset, int count)
        {
            if (Segments.Count > 0 && Segments[^1] is var last && last.Array == array && last.Offset + last.Count == offset)
            {
                Segments[^1] = new ArraySegment<byte>(array, last.Offset, last.Count + count);
            }
            else
            {
                Segments.Add(new ArraySegment<byte>(array, offset, count));
            }

            Bytes += count;
        }
    }
}
