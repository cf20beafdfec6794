using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace PrlFuse.Fuse.Native;

/// <summary>
/// The C entry points of libfuse's low-level API. Requests name files by node number; the node table turns a number
/// into the path the filesystem is called with (an array index: no path is built or looked up per request, unlike the
/// high-level API). One mount per process: they dispatch to the filesystem in a static field. Each one catches
/// everything (an exception escaping an UnmanagedCallersOnly method terminates the process) and sends exactly one
/// reply.
/// </summary>
internal static unsafe class FuseCallbacks
{
    /// <summary>st_ino of a directory entry whose file has no node number yet (what libfuse's high-level API sends).</summary>
    private const ulong UnknownInode = 0xffffffff;

    private static volatile IFuseFileSystem? s_fs;
    private static volatile Action<Exception>? s_onException;
    private static FuseNodeTable s_nodes = new();
    private static FuseReplySettings* s_settings;
    private static bool s_readBuf;
    private static uint s_maxRead;

    // The request being served on this thread, for FuseRequestContext.Current.
    [ThreadStatic]
    private static IntPtr t_request;

    internal static void Attach(IFuseFileSystem fs, Action<Exception>? onException, uint? maxRead = null)
    {
        s_onException = onException;
        s_maxRead = maxRead ?? 0;
        s_nodes = new FuseNodeTable();
        if (s_settings == null)
        {
            s_settings = (FuseReplySettings*)NativeMemory.AllocZeroed((nuint)sizeof(FuseReplySettings));
        }

        *s_settings = FuseReplySettings.Defaults;
        s_readBuf = fs.ProvidesReadBuf;
        s_fs = fs;
    }

    internal static void Detach()
    {
        s_fs = null;
        s_onException = null;
    }

    /// <summary>The request served on the calling thread, or zero outside a callback.</summary>
    internal static IntPtr CurrentRequest => t_request;

    internal static FuseLowLevelOperations Table() => new()
    {
        Init = (IntPtr)(delegate* unmanaged[Cdecl]<void*, void*, void>)&Init,
        Destroy = (IntPtr)(delegate* unmanaged[Cdecl]<void*, void>)&Destroy,
        Lookup = (IntPtr)(delegate* unmanaged[Cdecl]<IntPtr, ulong, byte*, void>)&Lookup,
        GetAttr = (IntPtr)(delegate* unmanaged[Cdecl]<IntPtr, ulong, FuseFileInfoNative*, void>)&GetAttr,
        SetAttr = (IntPtr)(delegate* unmanaged[Cdecl]<IntPtr, ulong, Stat*, int, FuseFileInfoNative*, void>)&SetAttr,
        Open = (IntPtr)(delegate* unmanaged[Cdecl]<IntPtr, ulong, FuseFileInfoNative*, void>)&Open,
        Read = (IntPtr)(delegate* unmanaged[Cdecl]<IntPtr, ulong, nuint, long, FuseFileInfoNative*, void>)&Read,
        Write = (IntPtr)(delegate* unmanaged[Cdecl]<IntPtr, ulong, byte*, nuint, long, FuseFileInfoNative*, void>)&Write,
        Flush = (IntPtr)(delegate* unmanaged[Cdecl]<IntPtr, ulong, FuseFileInfoNative*, void>)&Flush,
        Release = (IntPtr)(delegate* unmanaged[Cdecl]<IntPtr, ulong, FuseFileInfoNative*, void>)&Release,
        Fsync = (IntPtr)(delegate* unmanaged[Cdecl]<IntPtr, ulong, int, FuseFileInfoNative*, void>)&Fsync,
        OpenDir = (IntPtr)(delegate* unmanaged[Cdecl]<IntPtr, ulong, FuseFileInfoNative*, void>)&OpenDir,
        ReadDir = (IntPtr)(delegate* unmanaged[Cdecl]<IntPtr, ulong, nuint, long, FuseFileInfoNative*, void>)&ReadDir,
        ReleaseDir = (IntPtr)(delegate* unmanaged[Cdecl]<IntPtr, ulong, FuseFileInfoNative*, void>)&ReleaseDir,
        StatFs = (IntPtr)(delegate* unmanaged[Cdecl]<IntPtr, ulong, void>)&StatFs,
        Fallocate = (IntPtr)(delegate* unmanaged[Cdecl]<IntPtr, ulong, int, long, long, FuseFileInfoNative*, void>)&Fallocate,
        Lseek = (IntPtr)(delegate* unmanaged[Cdecl]<IntPtr, ulong, long, int, FuseFileInfoNative*, void>)&Lseek,
    };

    private static IFuseFileSystem Fs => s_fs ?? throw new InvalidOperationException("No filesystem attached.");

    private static LibFuse.Api Api => LibFuse.Functions;

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static int Fail(Exception e)
    {
        try
        {
            var report = s_onException;
            if (report is not null)
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
            // Reporting must not take the process down either.
        }
        return -Errno.EIO;
    }

    /// <summary>Answers 0 (success without data) or a negated errno.</summary>
    private static void ReplyStatus(IntPtr request, int status) => Api.ReplyErr(request, status < 0 ? -status : 0);

    private static void ReplyStatus(IntPtr request, long status) => ReplyStatus(request, status < 0 ? (int)status : 0);

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static void Init(void* userData, void* conn)
    {
        try
        {
            var context = new FuseInitContext(conn, s_settings);
            if (s_maxRead != 0)
            {
                // libfuse refuses the connection unless init asks for the same max_read as the mount option.
                context.MaxRead = s_maxRead;
            }

            Fs.Init(context);
        }
        catch (Exception e)
        {
            Fail(e);
        }
    }

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static void Destroy(void* userData)
    {
        try
        {
            Fs.Destroy();
        }
        catch (Exception e)
        {
            Fail(e);
        }
    }

    /// <summary>st_ino is the node number unless the filesystem numbers its files itself (use_ino).</summary>
    private static void SetInode(ref Stat stat, ulong node)
    {
        if (!s_settings->UseIno)
        {
            stat.Inode = node;
        }
    }

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static void Lookup(IntPtr request, ulong parent, byte* name)
    {
        t_request = request;
        FuseEntryParam entry = default;
        int rc;
        try
        {
            Span<byte> path = stackalloc byte[4096 + DirectoryFiller.MaxNameLength + 1];
            int length = FuseNodeTable.Join(s_nodes.PathOf(parent), MemoryMarshal.CreateReadOnlySpanFromNullTerminated(name), path);
            if (length < 0)
            {
                rc = -Errno.ENAMETOOLONG;
            }
            else
            {
                rc = Fs.GetAttr(path[..length], ref entry.Attributes, default);
                if (rc == 0)
                {
                    entry.Inode = s_nodes.NodeOf(path[..length]);
                    SetInode(ref entry.Attributes, entry.Inode);
                    entry.AttributeTimeout = s_settings->AttrTimeout;
                    entry.EntryTimeout = s_settings->EntryTimeout;
                }
                else if (rc == -Errno.ENOENT && s_settings->NegativeTimeout > 0)
                {
                    // Node 0 with a timeout: the kernel remembers that the name does not exist.
                    entry = default;
                    entry.EntryTimeout = s_settings->NegativeTimeout;
                    rc = 0;
                }
            }
        }
        catch (Exception e)
        {
            rc = Fail(e);
        }

        if (rc == 0)
        {
            Api.ReplyEntry(request, &entry);
        }
        else
        {
            ReplyStatus(request, rc);
        }
    }

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static void GetAttr(IntPtr request, ulong node, FuseFileInfoNative* fi)
    {
        t_request = request;
        Stat stat = default;
        int rc;
        try
        {
            rc = Fs.GetAttr(s_nodes.PathOf(node), ref stat, new FuseFileInfo(fi));
            SetInode(ref stat, node);
        }
        catch (Exception e)
        {
            rc = Fail(e);
        }

        ReplyAttributes(request, node, rc, ref stat);
    }

    private static void ReplyAttributes(IntPtr request, ulong node, int rc, ref Stat stat)
    {
        if (rc == 0)
        {
            fixed (Stat* s = &stat)
            {
                Api.ReplyAttr(request, s, s_settings->AttrTimeout);
            }
        }
        else
        {
            ReplyStatus(request, rc);
        }
    }

    /// <summary>chmod, chown, truncate and utimens in one request, in that order (as libfuse's high-level API runs them).</summary>
    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static void SetAttr(IntPtr request, ulong node, Stat* attributes, int toSet, FuseFileInfoNative* fi)
    {
        t_request = request;
        Stat stat = default;
        int rc;
        try
        {
            var fs = Fs;
            var path = s_nodes.PathOf(node);
            var fileInfo = new FuseFileInfo(fi);
            rc = 0;
            if ((toSet & FuseSetAttr.Mode) != 0)
            {
                rc = fs.Chmod(path, attributes->Mode, fileInfo);
            }

            if (rc == 0 && (toSet & (FuseSetAttr.Uid | FuseSetAttr.Gid)) != 0)
            {
                uint uid = (toSet & FuseSetAttr.Uid) != 0 ? attributes->Uid : uint.MaxValue;
                uint gid = (toSet & FuseSetAttr.Gid) != 0 ? attributes->Gid : uint.MaxValue;
                rc = fs.Chown(path, uid, gid, fileInfo);
            }

            if (rc == 0 && (toSet & FuseSetAttr.Size) != 0)
            {
                rc = fs.Truncate(path, attributes->Size, fileInfo);
            }

            if (rc == 0 && (toSet & (FuseSetAttr.AccessTime | FuseSetAttr.ModifyTime)) != 0)
            {
                var access = TimeOf(toSet, FuseSetAttr.AccessTimeNow, FuseSetAttr.AccessTime, attributes->AccessTime);
                var modify = TimeOf(toSet, FuseSetAttr.ModifyTimeNow, FuseSetAttr.ModifyTime, attributes->ModifyTime);
                rc = fs.SetTimes(path, in access, in modify, fileInfo);
            }

            if (rc == 0)
            {
                rc = fs.GetAttr(path, ref stat, fileInfo);
                SetInode(ref stat, node);
            }
        }
        catch (Exception e)
        {
            rc = Fail(e);
        }

        ReplyAttributes(request, node, rc, ref stat);
    }

    private static TimeSpec TimeOf(int toSet, int nowBit, int setBit, TimeSpec given) =>
        (toSet & nowBit) != 0 ? new TimeSpec(0, TimeSpec.UtimeNow)
        : (toSet & setBit) != 0 ? given
        : new TimeSpec(0, TimeSpec.UtimeOmit);

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static void Open(IntPtr request, ulong node, FuseFileInfoNative* fi)
    {
        t_request = request;
        int rc;
        try
        {
            var fileInfo = new FuseFileInfo(fi);
            if (s_settings->DirectIo)
            {
                fileInfo.DirectIo = true;
            }

            if (s_settings->KernelCache)
            {
                fileInfo.KeepCache = true;
            }

            rc = Fs.Open(s_nodes.PathOf(node), fileInfo);
        }
        catch (Exception e)
        {
            rc = Fail(e);
        }

        if (rc == 0)
        {
            Api.ReplyOpen(request, fi);
        }
        else
        {
            ReplyStatus(request, rc);
        }
    }

    // size is bounded by max_read (1 MiB with libfuse 3.14), so it always fits an int. The reply is written from this
    // thread's buffers: a reply of one memory piece goes out with fuse_reply_buf (one writev), anything with file pieces
    // with fuse_reply_data (spliced when the connection allows).
    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static void Read(IntPtr request, ulong node, nuint size, long offset, FuseFileInfoNative* fi)
    {
        t_request = request;
        int rc;
        byte* memory = null;
        FuseBufVec* vector = null;
        try
        {
            int requested = checked((int)size);
            var reply = FuseReadReply.ForThisThread(requested);
            if (s_readBuf)
            {
                rc = Fs.ReadBuf(s_nodes.PathOf(node), reply, offset, new FuseFileInfo(fi));
                if (rc == 0 && reply.Bytes > requested)
                {
                    rc = Fail(new InvalidOperationException($"read_buf answered {reply.Bytes} bytes for a read of {size}"));
                }

                if (rc == 0 && !reply.IsPlainMemory(out memory, out rc))
                {
                    vector = reply.Vector;
                }
            }
            else
            {
                var buffer = reply.AddMemory(requested);
                rc = Fs.Read(s_nodes.PathOf(node), buffer, offset, new FuseFileInfo(fi));
                if (rc > requested)
                {
                    rc = Fail(new InvalidOperationException($"read answered {rc} bytes for a read of {size}"));
                }

                reply.IsPlainMemory(out memory, out _);
            }
        }
        catch (Exception e)
        {
            rc = Fail(e);
        }

        if (rc < 0)
        {
            ReplyStatus(request, rc);
        }
        else if (vector != null)
        {
            Api.ReplyData(request, vector, 0);
        }
        else
        {
            Api.ReplyBuf(request, memory, (nuint)rc);
        }
    }

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static void Write(IntPtr request, ulong node, byte* buffer, nuint size, long offset, FuseFileInfoNative* fi)
    {
        t_request = request;
        int rc;
        try
        {
            rc = Fs.Write(s_nodes.PathOf(node), new ReadOnlySpan<byte>(buffer, checked((int)size)), offset, new FuseFileInfo(fi));
        }
        catch (Exception e)
        {
            rc = Fail(e);
        }

        if (rc >= 0)
        {
            Api.ReplyWrite(request, (nuint)rc);
        }
        else
        {
            ReplyStatus(request, rc);
        }
    }

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static void Flush(IntPtr request, ulong node, FuseFileInfoNative* fi)
    {
        t_request = request;
        int rc;
        try
        {
            rc = Fs.Flush(s_nodes.PathOf(node), new FuseFileInfo(fi));
        }
        catch (Exception e)
        {
            rc = Fail(e);
        }

        ReplyStatus(request, rc);
    }

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static void Release(IntPtr request, ulong node, FuseFileInfoNative* fi)
    {
        t_request = request;
        int rc;
        try
        {
            rc = Fs.Release(s_nodes.PathOf(node), new FuseFileInfo(fi));
        }
        catch (Exception e)
        {
            rc = Fail(e);
        }

        ReplyStatus(request, rc);
    }

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static void Fsync(IntPtr request, ulong node, int dataSync, FuseFileInfoNative* fi)
    {
        t_request = request;
        int rc;
        try
        {
            rc = Fs.Fsync(s_nodes.PathOf(node), dataSync != 0, new FuseFileInfo(fi));
        }
        catch (Exception e)
        {
            rc = Fail(e);
        }

        ReplyStatus(request, rc);
    }

    /// <summary>
    /// A directory is listed once, when it is opened, into libfuse's dirent format; readdir then answers slices of
    /// that listing (the offset of an entry is where the next one starts) and releasedir frees it.
    /// </summary>
    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static void OpenDir(IntPtr request, ulong node, FuseFileInfoNative* fi)
    {
        t_request = request;
        var listing = (DirectoryListing*)NativeMemory.AllocZeroed((nuint)sizeof(DirectoryListing));
        listing->Request = request;
        int rc;
        try
        {
            var filler = new DirectoryFiller(listing, (delegate* unmanaged<void*, byte*, Stat*, long, int, int>)(delegate* unmanaged[Cdecl]<void*, byte*, Stat*, long, int, int>)&AddDirectoryEntry);
            rc = Fs.ReadDir(s_nodes.PathOf(node), filler);
            if (rc == 0 && listing->Failed)
            {
                rc = -Errno.ENOMEM;
            }
        }
        catch (Exception e)
        {
            rc = Fail(e);
        }

        if (rc == 0)
        {
            fi->Fh = (ulong)listing;
            Api.ReplyOpen(request, fi);
        }
        else
        {
            DirectoryListing.Free(listing);
            ReplyStatus(request, rc);
        }
    }

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static void ReadDir(IntPtr request, ulong node, nuint size, long offset, FuseFileInfoNative* fi)
    {
        var listing = (DirectoryListing*)fi->Fh;
        if (listing == null || offset < 0)
        {
            Api.ReplyErr(request, Errno.EBADF);
            return;
        }

        // A slice may end inside an entry: the kernel drops the partial entry and asks again from the last whole one.
        nuint start = (nuint)offset;
        nuint length = start >= listing->Used ? 0 : Math.Min(size, listing->Used - start);
        Api.ReplyBuf(request, length == 0 ? null : listing->Data + start, length);
    }

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static void ReleaseDir(IntPtr request, ulong node, FuseFileInfoNative* fi)
    {
        DirectoryListing.Free((DirectoryListing*)fi->Fh);
        fi->Fh = 0;
        Api.ReplyErr(request, 0);
    }

    // The filler that DirectoryFiller calls: appends one entry to the listing (libfuse writes it; we grow the memory).
    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static int AddDirectoryEntry(void* buffer, byte* name, Stat* stat, long offset, int flags)
    {
        var listing = (DirectoryListing*)buffer;
        Stat entry = default;
        entry.Inode = UnknownInode;
        if (stat != null)
        {
            entry.Mode = stat->Mode;
            if (s_settings->UseIno)
            {
                entry.Inode = stat->Inode;
            }
        }

        nuint needed = Api.AddDirEntry(listing->Request, null, 0, name, null, 0);
        if (listing->Used + needed > listing->Capacity)
        {
            nuint capacity = Math.Max(listing->Capacity * 2, Math.Max(listing->Used + needed, 4096));
            byte* grown = (byte*)NativeMemory.Realloc(listing->Data, capacity);
            if (grown == null)
            {
                listing->Failed = true;
                return 1;
            }

            listing->Data = grown;
            listing->Capacity = capacity;
        }

        nuint next = listing->Used + needed;
        Api.AddDirEntry(listing->Request, listing->Data + listing->Used, listing->Capacity - listing->Used, name, &entry, (long)next);
        listing->Used = next;
        return 0;
    }

    /// <summary>One open directory's entries in libfuse's dirent format.</summary>
    private struct DirectoryListing
    {
        public IntPtr Request;
        public byte* Data;
        public nuint Used;
        public nuint Capacity;
        public bool Failed;

        public static void Free(DirectoryListing* listing)
        {
            if (listing != null)
            {
                NativeMemory.Free(listing->Data);
                NativeMemory.Free(listing);
            }
        }
    }

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static void StatFs(IntPtr request, ulong node)
    {
        t_request = request;
        StatVfs st = default;
        int rc;
        try
        {
            rc = Fs.StatFs(s_nodes.PathOf(node == 0 ? FuseNodeTable.RootNode : node), ref st);
        }
        catch (Exception e)
        {
            rc = Fail(e);
        }

        if (rc == 0)
        {
            Api.ReplyStatFs(request, &st);
        }
        else
        {
            ReplyStatus(request, rc);
        }
    }

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static void Fallocate(IntPtr request, ulong node, int mode, long offset, long length, FuseFileInfoNative* fi)
    {
        t_request = request;
        int rc;
        try
        {
            rc = Fs.Fallocate(s_nodes.PathOf(node), mode, offset, length, new FuseFileInfo(fi));
        }
        catch (Exception e)
        {
            rc = Fail(e);
        }

        ReplyStatus(request, rc);
    }

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static void Lseek(IntPtr request, ulong node, long offset, int whence, FuseFileInfoNative* fi)
    {
        t_request = request;
        long rc;
        try
        {
            rc = Fs.Lseek(s_nodes.PathOf(node), offset, whence, new FuseFileInfo(fi));
        }
        catch (Exception e)
        {
            rc = Fail(e);
        }

        if (rc >= 0)
        {
            Api.ReplyLseek(request, rc);
        }
        else
        {
            ReplyStatus(request, rc);
        }
    }
}
