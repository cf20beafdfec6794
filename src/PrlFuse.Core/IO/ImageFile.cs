using Microsoft.Win32.SafeHandles;

namespace PrlFuse.Core.IO;

/// <summary>
/// Positional access to one image file. There is no stream position, so any number of threads may read
/// and write at once without a lock. Tests substitute a fault-injecting subclass.
/// </summary>
public abstract class ImageFile : IDisposable
{
    protected ImageFile(string path, bool writable)
    {
        Path = path;
        Writable = writable;
    }

    public string Path { get; }

    public bool Writable { get; }

    public abstract long Length { get; }

    /// <summary>
    /// The operating-system handle, for callers that hand file ranges to the kernel (splice) instead of reading them;
    /// null when there is none (test doubles), and then only <see cref="Read"/> may be used. Valid until disposed.
    /// </summary>
    public virtual SafeFileHandle? Handle => null;

    /// <summary>Reads up to <paramref name="buffer"/>.Length bytes at <paramref name="offset"/>; fewer only at the end of the file.</summary>
    public abstract int Read(Span<byte> buffer, long offset);

    public abstract void Write(ReadOnlySpan<byte> buffer, long offset);

    public abstract void SetLength(long length);

    /// <summary>
    /// Grows the file from <paramref name="from"/> to <paramref name="to"/> with space reserved on the host
    /// filesystem where it can (fallocate), else sparsely. Either way the new bytes read as zeros.
    /// </summary>
    public virtual void Allocate(long from, long to) => SetLength(to);

    /// <summary>
    /// Asks the host to bring [offset, offset + length) into its page cache now (a hint; no effect where unsupported).
    /// </summary>
    public virtual void Prefetch(long offset, long length)
    {
    }

    /// <summary>Makes written data durable: fdatasync when <paramref name="dataOnly"/>, else fsync.</summary>
    public abstract void Flush(bool dataOnly);

    /// <summary>Fills <paramref name="buffer"/> from <paramref name="offset"/>; bytes past the end of the file read as zeros.</summary>
    public void ReadZeroFilled(Span<byte> buffer, long offset)
    {
        int done = 0;
        while (done < buffer.Length)
        {
            int n = Read(buffer[done..], offset + done);
            if (n <= 0)
            {
                buffer[done..].Clear();
                return;
            }

            done += n;
        }
    }

    public void Dispose()
    {
        Dispose(true);
        GC.SuppressFinalize(this);
    }

    protected virtual void Dispose(bool disposing)
    {
    }
}

/// <summary>An <see cref="ImageFile"/> over one shared <see cref="SafeFileHandle"/> with <see cref="RandomAccess"/>.</summary>
public sealed class PositionalImageFile : ImageFile
{
    private readonly SafeFileHandle _handle;
    private long _length;
    private bool _noFallocate;

    private PositionalImageFile(string path, SafeFileHandle handle, bool writable)
        : base(path, writable)
    {
        _handle = handle;
        _length = RandomAccess.GetLength(handle);
    }

    public static PositionalImageFile Open(string path, bool writable) => Open(path, writable, exclusive: false);

    /// <summary>
    /// Opens an image. A writer shares the file with readers only; <paramref name="exclusive"/> shares it with no one
    /// (the file lock then fails while another PrlFuse has the image open, e.g. a repair while mounted).
    /// </summary>
    public static PositionalImageFile Open(string path, bool writable, bool exclusive)
    {
        var share = exclusive ? FileShare.None : writable ? FileShare.Read : FileShare.ReadWrite | FileShare.Delete;
        var handle = File.OpenHandle(path, FileMode.Open, writable ? FileAccess.ReadWrite : FileAccess.Read, share, FileOptions.None);
        return new PositionalImageFile(path, handle, writable);
    }

    public override long Length => Volatile.Read(ref _length);

    public override SafeFileHandle? Handle => _handle;

    public override int Read(Span<byte> buffer, long offset)
    {
        int done = 0;
        while (done < buffer.Length)
        {
            int n = RandomAccess.Read(_handle, buffer[done..], offset + done);
            if (n == 0)
            {
                break;
            }

            done += n;
        }

        return done;
    }

    public override void Write(ReadOnlySpan<byte> buffer, long offset)
    {
        RandomAccess.Write(_handle, buffer, offset);
        long end = offset + buffer.Length;
        long current;
        while (end > (current = Volatile.Read(ref _length)))
        {
            if (Interlocked.CompareExchange(ref _length, end, current) == current)
            {
                break;
            }
        }
    }

    public override void SetLength(long length)
    {
        RandomAccess.SetLength(_handle, length);
        Volatile.Write(ref _length, length);
    }

    /// <summary>
    /// WILLNEED in steps: the kernel caps one readahead at the device's readahead window (8 MiB here), so a single call
    /// over a large range brings in only its start. On a range that was just fallocated the kernel fills the pages with
    /// zeros without any I/O.
    /// </summary>
    public override void Prefetch(long offset, long length)
    {
        const long Step = 2L << 20;
        for (long at = offset; at < offset + length; at += Step)
        {
            if (PosixSync.FadviseWillNeed(_handle, at, Math.Min(Step, offset + length - at)) != 0)
            {
                return;
            }
        }
    }

    public override void Allocate(long from, long to)
    {
        // ENOSPC here is no error yet: the sparse extension below still lets writes that fit succeed.
        if (to > from && !_noFallocate && PosixSync.Fallocate(_handle, from, to - from) is int rc && rc != 0)
        {
            _noFallocate = rc is 95 /* EOPNOTSUPP */ or 22 /* EINVAL */ or 38 /* ENOSYS */;
        }

        SetLength(to);
    }

    public override void Flush(bool dataOnly)
    {
        if (!Writable)
        {
            return;
        }

        int rc = dataOnly ? PosixSync.FDataSync(_handle) : PosixSync.FSync(_handle);
        if (rc != 0)
        {
            throw new IOException($"{Path}: {(dataOnly ? "fdatasync" : "fsync")} failed (errno {rc})", rc);
        }
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _handle.Dispose();
        }
    }
}
