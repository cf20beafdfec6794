using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace PrlFuse.Fuse.Native;

/// <summary>
/// The C entry points libfuse calls. One mount per process: they dispatch to the filesystem in a
/// static field (no GCHandle lookup per request). Each one catches everything: an exception escaping
/// an UnmanagedCallersOnly method terminates the process.
/// </summary>
internal static unsafe class FuseCallbacks
{
    private static volatile IFuseFileSystem? s_fs;
    private static volatile Action<Exception>? s_onException;

    private static uint s_maxRead;

    internal static void Attach(IFuseFileSystem fs, Action<Exception>? onException, uint? maxRead = null)
    {
        s_onException = onException;
        s_maxRead = maxRead ?? 0;
        s_fs = fs;
    }

    internal static void Detach()
    {
        s_fs = null;
        s_onException = null;
    }

    internal static FuseOperations Table()
    {
        var ops = BaseTable();
        if (Fs.ProvidesReadBuf)
        {
            ops.ReadBuf = (IntPtr)(delegate* unmanaged[Cdecl]<byte*, FuseBufVec**, nuint, long, FuseFileInfoNative*, int>)&ReadBuf;
        }

        return ops;
    }

    private static FuseOperations BaseTable() => new()
    {
        GetAttr = (IntPtr)(delegate* unmanaged[Cdecl]<byte*, Stat*, FuseFileInfoNative*, int>)&GetAttr,
        Truncate = (IntPtr)(delegate* unmanaged[Cdecl]<byte*, long, FuseFileInfoNative*, int>)&Truncate,
        Open = (IntPtr)(delegate* unmanaged[Cdecl]<byte*, FuseFileInfoNative*, int>)&Open,
        Read = (IntPtr)(delegate* unmanaged[Cdecl]<byte*, byte*, nuint, long, FuseFileInfoNative*, int>)&Read,
        Write = (IntPtr)(delegate* unmanaged[Cdecl]<byte*, byte*, nuint, long, FuseFileInfoNative*, int>)&Write,
        StatFs = (IntPtr)(delegate* unmanaged[Cdecl]<byte*, StatVfs*, int>)&StatFs,
        Flush = (IntPtr)(delegate* unmanaged[Cdecl]<byte*, FuseFileInfoNative*, int>)&Flush,
        Release = (IntPtr)(delegate* unmanaged[Cdecl]<byte*, FuseFileInfoNative*, int>)&Release,
        Fsync = (IntPtr)(delegate* unmanaged[Cdecl]<byte*, int, FuseFileInfoNative*, int>)&Fsync,
        ReadDir = (IntPtr)(delegate* unmanaged[Cdecl]<byte*, void*, IntPtr, long, FuseFileInfoNative*, int, int>)&ReadDir,
        Init = (IntPtr)(delegate* unmanaged[Cdecl]<void*, void*, void*>)&Init,
        Destroy = (IntPtr)(delegate* unmanaged[Cdecl]<void*, void>)&Destroy,
        Utimens = (IntPtr)(delegate* unmanaged[Cdecl]<byte*, TimeSpec*, FuseFileInfoNative*, int>)&Utimens,
        Chmod = (IntPtr)(delegate* unmanaged[Cdecl]<byte*, uint, FuseFileInfoNative*, int>)&Chmod,
        Chown = (IntPtr)(delegate* unmanaged[Cdecl]<byte*, uint, uint, FuseFileInfoNative*, int>)&Chown,
        Fallocate = (IntPtr)(delegate* unmanaged[Cdecl]<byte*, int, long, long, FuseFileInfoNative*, int>)&Fallocate,
        Lseek = (IntPtr)(delegate* unmanaged[Cdecl]<byte*, long, int, FuseFileInfoNative*, long>)&Lseek,
    };

    // libfuse passes NUL-terminated paths; this view costs a strlen, no allocation.
    private static ReadOnlySpan<byte> PathOf(byte* path) => MemoryMarshal.CreateReadOnlySpanFromNullTerminated(path);

    private static IFuseFileSystem Fs => s_fs ?? throw new InvalidOperationException("No filesystem attached.");

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

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static int GetAttr(byte* path, Stat* stat, FuseFileInfoNative* fi)
    {
        try
        {
            *stat = default;
            return Fs.GetAttr(PathOf(path), ref *stat, new FuseFileInfo(fi));
        }
        catch (Exception e)
        {
            return Fail(e);
        }
    }

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static int Truncate(byte* path, long size, FuseFileInfoNative* fi)
    {
        try
        {
            return Fs.Truncate(PathOf(path), size, new FuseFileInfo(fi));
        }
        catch (Exception e)
        {
            return Fail(e);
        }
    }

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static int Open(byte* path, FuseFileInfoNative* fi)
    {
        try
        {
            return Fs.Open(PathOf(path), new FuseFileInfo(fi));
        }
        catch (Exception e)
        {
            return Fail(e);
        }
    }

    // size is bounded by max_read/max_write (1 MiB on 3.14), so it always fits an int.
    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static int Read(byte* path, byte* buffer, nuint size, long offset, FuseFileInfoNative* fi)
    {
        try
        {
            return Fs.Read(PathOf(path), new Span<byte>(buffer, checked((int)size)), offset, new FuseFileInfo(fi));
        }
        catch (Exception e)
        {
            return Fail(e);
        }
    }

    // libfuse frees the vector (and its memory pieces) after replying when we return 0; on an error we free it.
    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static int ReadBuf(byte* path, FuseBufVec** result, nuint size, long offset, FuseFileInfoNative* fi)
    {
        *result = null;
        FuseReadReply reply = default;
        bool created = false;
        try
        {
            reply = FuseReadReply.Create(checked((int)size));
            created = true;
            int rc = Fs.ReadBuf(PathOf(path), reply, offset, new FuseFileInfo(fi));
            if (rc < 0)
            {
                reply.Free();
                return rc;
            }

            if (reply.Bytes > (long)size)
            {
                reply.Free();
                return Fail(new InvalidOperationException($"read_buf answered {reply.Bytes} bytes for a read of {size}"));
            }

            *result = reply.Complete();
            return 0;
        }
        catch (Exception e)
        {
            if (created)
            {
                reply.Free();
            }

            return Fail(e);
        }
    }

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static int Write(byte* path, byte* buffer, nuint size, long offset, FuseFileInfoNative* fi)
    {
        try
        {
            return Fs.Write(PathOf(path), new ReadOnlySpan<byte>(buffer, checked((int)size)), offset, new FuseFileInfo(fi));
        }
        catch (Exception e)
        {
            return Fail(e);
        }
    }

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static int StatFs(byte* path, StatVfs* st)
    {
        try
        {
            *st = default;
            return Fs.StatFs(PathOf(path), ref *st);
        }
        catch (Exception e)
        {
            return Fail(e);
        }
    }

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static int Flush(byte* path, FuseFileInfoNative* fi)
    {
        try
        {
            return Fs.Flush(PathOf(path), new FuseFileInfo(fi));
        }
        catch (Exception e)
        {
            return Fail(e);
        }
    }

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static int Release(byte* path, FuseFileInfoNative* fi)
    {
        try
        {
            return Fs.Release(PathOf(path), new FuseFileInfo(fi));
        }
        catch (Exception e)
        {
            return Fail(e);
        }
    }

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static int Fsync(byte* path, int datasync, FuseFileInfoNative* fi)
    {
        try
        {
            return Fs.Fsync(PathOf(path), datasync != 0, new FuseFileInfo(fi));
        }
        catch (Exception e)
        {
            return Fail(e);
        }
    }

    // offset and flags are ignored: entries are all added in one call with offset 0 (libfuse keeps them).
    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static int ReadDir(byte* path, void* buffer, IntPtr filler, long offset, FuseFileInfoNative* fi, int flags)
    {
        try
        {
            var fill = new DirectoryFiller(buffer, (delegate* unmanaged<void*, byte*, Stat*, long, int, int>)filler);
            return Fs.ReadDir(PathOf(path), fill);
        }
        catch (Exception e)
        {
            return Fail(e);
        }
    }

    // The return value becomes fuse_context->private_data; we keep what fuse_new was given (NULL).
    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static void* Init(void* conn, void* config)
    {
        try
        {
            var context = new FuseInitContext(conn, config);
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
        return null;
    }

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static void Destroy(void* privateData)
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

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static int Utimens(byte* path, TimeSpec* times, FuseFileInfoNative* fi)
    {
        try
        {
            return Fs.SetTimes(PathOf(path), in times[0], in times[1], new FuseFileInfo(fi));
        }
        catch (Exception e)
        {
            return Fail(e);
        }
    }

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static int Chmod(byte* path, uint mode, FuseFileInfoNative* fi)
    {
        try
        {
            return Fs.Chmod(PathOf(path), mode, new FuseFileInfo(fi));
        }
        catch (Exception e)
        {
            return Fail(e);
        }
    }

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static int Chown(byte* path, uint uid, uint gid, FuseFileInfoNative* fi)
    {
        try
        {
            return Fs.Chown(PathOf(path), uid, gid, new FuseFileInfo(fi));
        }
        catch (Exception e)
        {
            return Fail(e);
        }
    }

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static int Fallocate(byte* path, int mode, long offset, long length, FuseFileInfoNative* fi)
    {
        try
        {
            return Fs.Fallocate(PathOf(path), mode, offset, length, new FuseFileInfo(fi));
        }
        catch (Exception e)
        {
            return Fail(e);
        }
    }

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static long Lseek(byte* path, long offset, int whence, FuseFileInfoNative* fi)
    {
        try
        {
            return Fs.Lseek(PathOf(path), offset, whence, new FuseFileInfo(fi));
        }
        catch (Exception e)
        {
            return Fail(e);
        }
    }
}
