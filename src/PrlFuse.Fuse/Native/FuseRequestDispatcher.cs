using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace PrlFuse.Fuse.Native;

/// <summary>
/// Answers the kernel's FUSE requests without libfuse, whatever carries them (/dev/fuse reads or io_uring entries): a
/// request is its header, its per-operation arguments and its payload (a name, write data); the answer is written into
/// a caller's buffer. Requests name files by node number, turned into paths by <see cref="FuseNodeTable"/> as in the
/// libfuse binding, and the filesystem sees the same calls in the same order as there. Safe to call from many threads;
/// nothing is allocated per request.
/// </summary>
internal sealed unsafe class FuseRequestDispatcher : IDisposable
{
    /// <summary>Returned by <see cref="Handle"/> for requests that take no answer (forget, interrupt).</summary>
    public const int NoReply = int.MinValue;

    /// <summary>st_ino of a directory entry whose file has no node number yet (what libfuse sends).</summary>
    private const ulong UnknownInode = 0xffffffff;

    // Room for a struct fuse_conn_info, which FuseInitContext reads and writes at libfuse's offsets.
    private const int ConnectionInfoBytes = 256;

    private readonly IFuseFileSystem _fs;
    private readonly Action<Exception>? _onException;
    private readonly FuseNodeTable _nodes = new();
    private readonly FuseReplySettings* _settings;
    private readonly bool _offerUring;
    private int _destroyed;

    [ThreadStatic]
    private static FuseRequestContext t_caller;

    public FuseRequestDispatcher(IFuseFileSystem fs, Action<Exception>? onException, bool offerUring)
    {
        _fs = fs;
        _onException = onException;
        _offerUring = offerUring;
        _settings = (FuseReplySettings*)NativeMemory.AllocZeroed((nuint)sizeof(FuseReplySettings));
        *_settings = FuseReplySettings.Defaults;
    }

    /// <summary>The filesystem answers reads with pieces (<see cref="IFuseFileSystem.ReadBuf"/>), which /dev/fuse can splice.</summary>
    public bool ProvidesReadPieces => _fs.ProvidesReadBuf;

    /// <summary>Set by the init request: the kernel agreed to serve requests over io_uring.</summary>
    public bool UringNegotiated { get; private set; }

    /// <summary>Who made the request being answered on this thread (see <see cref="FuseRequestContext.Current"/>).</summary>
    public static FuseRequestContext CurrentCaller => t_caller;

    /// <summary>Where a request's payload starts after its per-operation arguments, on /dev/fuse.</summary>
    public static int ArgumentBytes(uint opcode) => opcode switch
    {
        FuseProtocol.Lookup => 0,
        FuseProtocol.Write => sizeof(FuseReadIn),
        _ => 0,
    };

    /// <summary>
    /// Answers one request: the answer's length in <paramref name="output"/> (up to <paramref name="outputCapacity"/>),
    /// a negated errno, or <see cref="NoReply"/>. <paramref name="payload"/> and <paramref name="output"/> may be the
    /// same memory: the payload is used up before the answer is written.
    /// </summary>
    public int Handle(FuseInHeader* header, byte* arguments, byte* payload, int payloadBytes, byte* output, int outputCapacity)
    {
        t_caller = new FuseRequestContext(header->Uid, header->Gid, (int)header->Pid, 0);
        try
        {
            return header->Opcode switch
            {
                FuseProtocol.Init => Init((FuseInitIn*)arguments, (FuseInitOut*)output),
                FuseProtocol.Lookup => Lookup(header->NodeId, new ReadOnlySpan<byte>(payload, payloadBytes), (FuseEntryOut*)output),
                FuseProtocol.GetAttr => GetAttr(header->NodeId, (FuseGetAttrIn*)arguments, (FuseAttrOut*)output),
                FuseProtocol.SetAttr => SetAttr(header->NodeId, (FuseSetAttrIn*)arguments, (FuseAttrOut*)output),
                FuseProtocol.Open => Open(header->NodeId, (FuseOpenIn*)arguments, (FuseOpenOut*)output),
                FuseProtocol.Read => Read(header->NodeId, (FuseReadIn*)arguments, output, outputCapacity),
                FuseProtocol.Write => Write(header->NodeId, (FuseReadIn*)arguments, payload, payloadBytes, output),
                FuseProtocol.Flush => Flush(header->NodeId, (FuseHandleIn*)arguments),
                FuseProtocol.Release => Release(header->NodeId, (FuseHandleIn*)arguments),
                FuseProtocol.Fsync => Fsync(header->NodeId, (FuseHandleIn*)arguments),
                FuseProtocol.OpenDir => OpenDir(header->NodeId, (FuseOpenOut*)output),
                FuseProtocol.ReadDir => ReadDir((FuseReadIn*)arguments, output, outputCapacity),
                FuseProtocol.ReleaseDir => ReleaseDir((FuseHandleIn*)arguments),
                FuseProtocol.FsyncDir => 0,
                FuseProtocol.StatFs => StatFs(header->NodeId, (FuseStatFsOut*)output),
                FuseProtocol.Fallocate => Fallocate(header->NodeId, (FuseFallocateIn*)arguments),
                FuseProtocol.Lseek => Lseek(header->NodeId, (FuseLseekIn*)arguments, (long*)output),
                FuseProtocol.Destroy => Destroy(),
                FuseProtocol.Forget or FuseProtocol.BatchForget or FuseProtocol.Interrupt => NoReply,
                _ => -Errno.ENOSYS,
            };
        }
        catch (Exception e)
        {
            return Fail(e);
        }
    }

    /// <summary>The filesystem's Destroy, once (a DESTROY request or the end of the session, whichever comes first).</summary>
    public int Destroy()
    {
        if (Interlocked.Exchange(ref _destroyed, 1) == 0)
        {
            _fs.Destroy();
        }

        return 0;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private int Fail(Exception e)
    {
        try
        {
            if (_onException is { } report)
            {
                report(e);
            }
            else
            {
                Console.Error.WriteLine($"prlfuse: filesystem callback failed: {e}");
            }
        }
        catch (Exception)
        {
            // Reporting must not take the serving thread down either.
        }

        return -Errno.EIO;
    }

    private int Init(FuseInitIn* request, FuseInitOut* reply)
    {
        ulong offered = request->Flags;
        if ((offered & FuseProtocol.InitExt) != 0)
        {
            offered |= (ulong)request->Flags2 << 32;
        }

        byte* connection = stackalloc byte[ConnectionInfoBytes];
        new Span<byte>(connection, ConnectionInfoBytes).Clear();
        ref var c = ref *(FuseConnectionHead*)connection;
        c.ProtoMajor = request->Major;
        c.ProtoMinor = Math.Min(request->Minor, FuseProtocol.KernelMinor);
        c.MaxWrite = FuseProtocol.MaxPayload;
        c.MaxReadahead = request->MaxReadahead;
        c.Capable = (uint)(offered & FuseProtocol.Supported);
        c.Want = (uint)(offered & FuseProtocol.DefaultWant);
        _fs.Init(new FuseInitContext(connection, _settings));

        ulong flags = (c.Want & offered & FuseProtocol.Supported) | FuseProtocol.MaxPagesFlag;
        if ((offered & FuseProtocol.InitExt) != 0)
        {
            flags |= FuseProtocol.InitExt;
            if (_offerUring && (offered & FuseProtocol.OverIoUring) != 0)
            {
                flags |= FuseProtocol.OverIoUring;
                UringNegotiated = true;
            }
        }

        *reply = new FuseInitOut
        {
            Major = FuseProtocol.KernelMajor,
            Minor = FuseProtocol.KernelMinor,
            MaxReadahead = Math.Min(c.MaxReadahead, request->MaxReadahead),
            Flags = (uint)flags,
            Flags2 = (uint)(flags >> 32),
            MaxBackground = (ushort)Math.Min(c.MaxBackground, ushort.MaxValue),
            CongestionThreshold = (ushort)Math.Min(c.CongestionThreshold, ushort.MaxValue),
            MaxWrite = Math.Clamp(c.MaxWrite, 4096, FuseProtocol.MaxPayload),
            TimeGranularity = 1,
            MaxPages = FuseProtocol.MaxPages,
        };
        return sizeof(FuseInitOut);
    }

    /// <summary>The head of struct fuse_conn_info (the offsets of <see cref="FuseConnInfoOffsets"/>).</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct FuseConnectionHead
    {
        public uint ProtoMajor;
        public uint ProtoMinor;
        public uint MaxWrite;
        public uint MaxRead;
        public uint MaxReadahead;
        public uint Capable;
        public uint Want;
        public uint MaxBackground;
        public uint CongestionThreshold;
    }

    private static void SetTimeout(double seconds, out ulong whole, out uint nanoseconds)
    {
        if (seconds <= 0)
        {
            whole = 0;
            nanoseconds = 0;
            return;
        }

        whole = (ulong)seconds;
        nanoseconds = (uint)((seconds - whole) * 1e9);
    }

    private void SetInode(ref Stat stat, ulong node)
    {
        if (!_settings->UseIno)
        {
            stat.Inode = node;
        }
    }

    private int Lookup(ulong parent, ReadOnlySpan<byte> payload, FuseEntryOut* reply)
    {
        int end = payload.IndexOf((byte)0);
        var name = end < 0 ? payload : payload[..end];
        Span<byte> path = stackalloc byte[4096 + DirectoryFiller.MaxNameLength + 1];
        int length = FuseNodeTable.Join(_nodes.PathOf(parent), name, path);
        if (length < 0)
        {
            return -Errno.ENAMETOOLONG;
        }

        Stat stat = default;
        int rc = _fs.GetAttr(path[..length], ref stat, default);
        if (rc == 0)
        {
            ulong node = _nodes.NodeOf(path[..length]);
            SetInode(ref stat, node);
            *reply = default;
            reply->NodeId = node;
            SetTimeout(_settings->EntryTimeout, out reply->EntryValid, out reply->EntryValidNanoseconds);
            SetTimeout(_settings->AttrTimeout, out reply->AttrValid, out reply->AttrValidNanoseconds);
            reply->Attr = FuseAttr.From(stat);
            return sizeof(FuseEntryOut);
        }

        if (rc == -Errno.ENOENT && _settings->NegativeTimeout > 0)
        {
            // Node 0 with a timeout: the kernel remembers that the name does not exist.
            *reply = default;
            SetTimeout(_settings->NegativeTimeout, out reply->EntryValid, out reply->EntryValidNanoseconds);
            return sizeof(FuseEntryOut);
        }

        return rc;
    }

    private int ReplyAttributes(int rc, ulong node, ref Stat stat, FuseAttrOut* reply)
    {
        if (rc != 0)
        {
            return rc;
        }

        SetInode(ref stat, node);
        *reply = default;
        SetTimeout(_settings->AttrTimeout, out reply->AttrValid, out reply->AttrValidNanoseconds);
        reply->Attr = FuseAttr.From(stat);
        return sizeof(FuseAttrOut);
    }

    private int GetAttr(ulong node, FuseGetAttrIn* request, FuseAttrOut* reply)
    {
        var native = new FuseFileInfoNative { Fh = request->Fh };
        var fileInfo = (request->Flags & FuseProtocol.GetAttrFh) != 0 ? new FuseFileInfo(&native) : default;
        Stat stat = default;
        int rc = _fs.GetAttr(_nodes.PathOf(node), ref stat, fileInfo);
        return ReplyAttributes(rc, node, ref stat, reply);
    }

    /// <summary>chmod, chown, truncate and utimens in one request, in that order (as the libfuse binding runs them).</summary>
    private int SetAttr(ulong node, FuseSetAttrIn* request, FuseAttrOut* reply)
    {
        var native = new FuseFileInfoNative { Fh = request->Fh };
        var fileInfo = (request->Valid & FuseProtocol.SetAttrFh) != 0 ? new FuseFileInfo(&native) : default;
        var path = _nodes.PathOf(node);
        int toSet = (int)request->Valid;
        int rc = 0;
        if ((toSet & FuseSetAttr.Mode) != 0)
        {
            rc = _fs.Chmod(path, request->Mode, fileInfo);
        }

        if (rc == 0 && (toSet & (FuseSetAttr.Uid | FuseSetAttr.Gid)) != 0)
        {
            uint uid = (toSet & FuseSetAttr.Uid) != 0 ? request->Uid : uint.MaxValue;
            uint gid = (toSet & FuseSetAttr.Gid) != 0 ? request->Gid : uint.MaxValue;
            rc = _fs.Chown(path, uid, gid, fileInfo);
        }

        if (rc == 0 && (toSet & FuseSetAttr.Size) != 0)
        {
            rc = _fs.Truncate(path, (long)request->Size, fileInfo);
        }

        if (rc == 0 && (toSet & (FuseSetAttr.AccessTime | FuseSetAttr.ModifyTime)) != 0)
        {
            var access = TimeOf(toSet, FuseSetAttr.AccessTimeNow, FuseSetAttr.AccessTime, request->AccessTime, request->AccessTimeNanoseconds);
            var modify = TimeOf(toSet, FuseSetAttr.ModifyTimeNow, FuseSetAttr.ModifyTime, request->ModifyTime, request->ModifyTimeNanoseconds);
            rc = _fs.SetTimes(path, in access, in modify, fileInfo);
        }

        Stat stat = default;
        if (rc == 0)
        {
            rc = _fs.GetAttr(path, ref stat, fileInfo);
        }

        return ReplyAttributes(rc, node, ref stat, reply);
    }

    private static TimeSpec TimeOf(int toSet, int nowBit, int setBit, ulong seconds, uint nanoseconds) =>
        (toSet & nowBit) != 0 ? new TimeSpec(0, TimeSpec.UtimeNow)
        : (toSet & setBit) != 0 ? new TimeSpec((long)seconds, nanoseconds)
        : new TimeSpec(0, TimeSpec.UtimeOmit);

    private int Open(ulong node, FuseOpenIn* request, FuseOpenOut* reply)
    {
        var native = new FuseFileInfoNative { Flags = request->Flags };
        var fileInfo = new FuseFileInfo(&native);
        fileInfo.DirectIo = _settings->DirectIo;
        fileInfo.KeepCache = _settings->KernelCache;
        int rc = _fs.Open(_nodes.PathOf(node), fileInfo);
        if (rc != 0)
        {
            return rc;
        }

        *reply = new FuseOpenOut
        {
            Fh = native.Fh,
            OpenFlags = (fileInfo.DirectIo ? FuseProtocol.OpenDirectIo : 0) | (fileInfo.KeepCache ? FuseProtocol.OpenKeepCache : 0),
        };
        return sizeof(FuseOpenOut);
    }

    private int Read(ulong node, FuseReadIn* request, byte* output, int outputCapacity)
    {
        var native = new FuseFileInfoNative { Flags = request->Flags, Fh = request->Fh };
        int size = (int)Math.Min(request->Size, (uint)outputCapacity);
        int rc = _fs.Read(_nodes.PathOf(node), new Span<byte>(output, size), (long)request->Offset, new FuseFileInfo(&native));
        return rc > size ? Fail(new InvalidOperationException($"read answered {rc} bytes for a read of {size}")) : rc;
    }

    /// <summary>
    /// A read answered as pieces in this thread's <see cref="FuseReadReply"/> (memory, or ranges of files to splice):
    /// 0 or a negated errno. Only when <see cref="ProvidesReadPieces"/>.
    /// </summary>
    public int ReadPieces(FuseInHeader* header, FuseReadIn* request, out FuseReadReply reply)
    {
        t_caller = new FuseRequestContext(header->Uid, header->Gid, (int)header->Pid, 0);
        int requested = (int)Math.Min(request->Size, (uint)FuseProtocol.MaxPayload);
        reply = FuseReadReply.ForThisThread(requested);
        try
        {
            var native = new FuseFileInfoNative { Flags = request->Flags, Fh = request->Fh };
            int rc = _fs.ReadBuf(_nodes.PathOf(header->NodeId), reply, (long)request->Offset, new FuseFileInfo(&native));
            return rc == 0 && reply.Bytes > requested
                ? Fail(new InvalidOperationException($"read_buf answered {reply.Bytes} bytes for a read of {requested}"))
                : rc;
        }
        catch (Exception e)
        {
            return Fail(e);
        }
    }

    private int Write(ulong node, FuseReadIn* request, byte* payload, int payloadBytes, byte* output)
    {
        if (request->Size > (uint)payloadBytes)
        {
            return -Errno.EINVAL;
        }

        var native = new FuseFileInfoNative { Flags = request->Flags, Fh = request->Fh };
        int rc = _fs.Write(_nodes.PathOf(node), new ReadOnlySpan<byte>(payload, (int)request->Size), (long)request->Offset, new FuseFileInfo(&native));
        if (rc < 0)
        {
            return rc;
        }

        *(ulong*)output = (uint)rc; // struct fuse_write_out: size, padding
        return sizeof(ulong);
    }

    private int Flush(ulong node, FuseHandleIn* request)
    {
        var native = new FuseFileInfoNative { Fh = request->Fh };
        return Status(_fs.Flush(_nodes.PathOf(node), new FuseFileInfo(&native)));
    }

    private int Release(ulong node, FuseHandleIn* request)
    {
        var native = new FuseFileInfoNative { Flags = (int)request->Flags, Fh = request->Fh };
        return Status(_fs.Release(_nodes.PathOf(node), new FuseFileInfo(&native)));
    }

    private int Fsync(ulong node, FuseHandleIn* request)
    {
        var native = new FuseFileInfoNative { Fh = request->Fh };
        return Status(_fs.Fsync(_nodes.PathOf(node), (request->Flags & 1) != 0, new FuseFileInfo(&native)));
    }

    /// <summary>A success carries no bytes: positive answers count as 0.</summary>
    private static int Status(int rc) => rc < 0 ? rc : 0;

    private int StatFs(ulong node, FuseStatFsOut* reply)
    {
        StatVfs st = default;
        int rc = _fs.StatFs(_nodes.PathOf(node == 0 ? FuseNodeTable.RootNode : node), ref st);
        if (rc != 0)
        {
            return rc;
        }

        *reply = new FuseStatFsOut
        {
            Blocks = st.Blocks,
            FreeBlocks = st.BlocksFree,
            AvailableBlocks = st.BlocksAvailable,
            Files = st.Files,
            FreeFiles = st.FilesFree,
            BlockSize = (uint)st.BlockSize,
            NameLength = (uint)st.NameMax,
            FragmentSize = (uint)st.FragmentSize,
        };
        return sizeof(FuseStatFsOut);
    }

    private int Fallocate(ulong node, FuseFallocateIn* request)
    {
        var native = new FuseFileInfoNative { Fh = request->Fh };
        return Status(_fs.Fallocate(_nodes.PathOf(node), request->Mode, (long)request->Offset, (long)request->Length, new FuseFileInfo(&native)));
    }

    private int Lseek(ulong node, FuseLseekIn* request, long* reply)
    {
        var native = new FuseFileInfoNative { Fh = request->Fh };
        long rc = _fs.Lseek(_nodes.PathOf(node), request->Offset, request->Whence, new FuseFileInfo(&native));
        if (rc < 0)
        {
            return (int)rc;
        }

        *reply = rc;
        return sizeof(long);
    }

    /// <summary>
    /// A directory is listed once, when it is opened, into the kernel's dirent format; readdir then answers slices of
    /// that listing (the offset of an entry is where the next one starts) and releasedir frees it.
    /// </summary>
    private int OpenDir(ulong node, FuseOpenOut* reply)
    {
        var listing = (DirectoryListing*)NativeMemory.AllocZeroed((nuint)sizeof(DirectoryListing));
        listing->UseIno = _settings->UseIno;
        int rc;
        try
        {
            var filler = new DirectoryFiller(listing, (delegate* unmanaged<void*, byte*, Stat*, long, int, int>)(delegate* unmanaged[Cdecl]<void*, byte*, Stat*, long, int, int>)&AddDirectoryEntry);
            rc = _fs.ReadDir(_nodes.PathOf(node), filler);
            if (rc == 0 && listing->Failed)
            {
                rc = -Errno.ENOMEM;
            }
        }
        catch
        {
            DirectoryListing.Free(listing);
            throw;
        }

        if (rc != 0)
        {
            DirectoryListing.Free(listing);
            return rc;
        }

        *reply = new FuseOpenOut { Fh = (ulong)listing };
        return sizeof(FuseOpenOut);
    }

    private static int ReadDir(FuseReadIn* request, byte* output, int outputCapacity)
    {
        var listing = (DirectoryListing*)request->Fh;
        if (listing == null)
        {
            return -Errno.EBADF;
        }

        // A slice may end inside an entry: the kernel drops the partial entry and asks again from the last whole one.
        ulong start = request->Offset;
        ulong length = start >= listing->Used ? 0 : Math.Min(Math.Min(request->Size, (uint)outputCapacity), listing->Used - start);
        Buffer.MemoryCopy(listing->Data + start, output, outputCapacity, (long)length);
        return (int)length;
    }

    private static int ReleaseDir(FuseHandleIn* request)
    {
        DirectoryListing.Free((DirectoryListing*)request->Fh);
        return 0;
    }

    // The filler that DirectoryFiller calls: appends one struct fuse_dirent (8-byte aligned) to the listing.
    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static int AddDirectoryEntry(void* buffer, byte* name, Stat* stat, long offset, int flags)
    {
        var listing = (DirectoryListing*)buffer;
        var nameBytes = MemoryMarshal.CreateReadOnlySpanFromNullTerminated(name);
        const int NameOffset = 24;
        ulong needed = (ulong)(NameOffset + nameBytes.Length + 7) & ~7UL;
        if (listing->Used + needed > listing->Capacity)
        {
            ulong capacity = Math.Max(listing->Capacity * 2, Math.Max(listing->Used + needed, 4096));
            byte* grown = (byte*)NativeMemory.Realloc(listing->Data, (nuint)capacity);
            if (grown == null)
            {
                listing->Failed = true;
                return 1;
            }

            listing->Data = grown;
            listing->Capacity = capacity;
        }

        byte* entry = listing->Data + listing->Used;
        new Span<byte>(entry, (int)needed).Clear();
        ulong next = listing->Used + needed;
        *(ulong*)entry = stat != null && listing->UseIno ? stat->Inode : UnknownInode;
        *(ulong*)(entry + 8) = next;
        *(uint*)(entry + 16) = (uint)nameBytes.Length;
        *(uint*)(entry + 20) = stat == null ? 0 : (stat->Mode & StatMode.TypeMask) >> 12;
        nameBytes.CopyTo(new Span<byte>(entry + NameOffset, nameBytes.Length));
        listing->Used = next;
        return 0;
    }

    /// <summary>One open directory's entries in the kernel's dirent format.</summary>
    private struct DirectoryListing
    {
        public byte* Data;
        public ulong Used;
        public ulong Capacity;
        public bool Failed;
        public bool UseIno;

        public static void Free(DirectoryListing* listing)
        {
            if (listing != null)
            {
                NativeMemory.Free(listing->Data);
                NativeMemory.Free(listing);
            }
        }
    }

    public void Dispose() => NativeMemory.Free(_settings);
}
