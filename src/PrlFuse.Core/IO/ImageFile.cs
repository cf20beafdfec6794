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

    /// <summary>The QEMU-compatible image lock taken on <see cref="Handle"/> (see <see cref="ImageLock"/>), or null when none was asked for.</summary>
    public ImageLockState? LockState { get; internal set; }

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
    /// Makes [offset, offset + length) read as zeros and gives its blocks back to the host filesystem, without changing
    /// the length. False when the file or its filesystem cannot punch holes: the caller writes zeros instead.
    /// </summary>
    public virtual bool TryPunchHole(long offset, long length) => false;

    /// <summary>
    /// Asks the host to bring [offset, offset + length) into its page cache now (a hint; no effect where unsupported).
    /// </summary>
    public virtual void Prefetch(long offset, long length)
    {
    }

    /// <summary>
    /// Opens the path for writes that bypass the host page cache (see <see cref="TryWriteDirect"/>); false where the
    /// file or its filesystem does not allow it.
    /// </summary>
    public virtual bool EnableDirectWrites() => false;

    /// <summary>
    /// Writes <paramref name="buffer"/> at <paramref name="offset"/> bypassing the host page cache (O_DIRECT) when
    /// direct writes are enabled and the range suits them (large, block-aligned); false when it did not, and then the
    /// caller writes it with <see cref="Write"/>. Durability is the same as <see cref="Write"/>: <see cref="Flush"/>.
    /// </summary>
    public virtual bool TryWriteDirect(ReadOnlySpan<byte> buffer, long offset) => false;

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
    /// <summary>Offsets and lengths of direct writes are multiples of this (any block device's logical block and the page).</summary>
    public const int DirectAlignment = 4096;

    /// <summary>
    /// Smaller writes stay buffered: a direct write waits for the device, and for small pieces the page cache (which
    /// merges them) is cheaper than the wait.
    /// </summary>
    public const int DirectMinBytes = 128 * 1024;

    /// <summary>
    /// Direct writes are copied through a per-thread aligned buffer of this size, in pieces of at most this: the
    /// largest FUSE write request (max_write), so a request is one device write.
    /// </summary>
    private const int BounceBytes = 512 << 10;

    [ThreadStatic]
    private static byte[]? t_bounce;

    [ThreadStatic]
    private static int t_bounceSkew;

    private readonly SafeFileHandle _handle;
    private SafeFileHandle? _direct;
    private bool _directAllowed = true;
    private volatile bool _directRefused;
    private long _length;
    private bool _noFallocate;
    private bool _noPunchHole;

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
    /// <paramref name="directWrites"/> false keeps every write in the page cache (<see cref="EnableDirectWrites"/>
    /// then refuses).
    /// </summary>
    public static PositionalImageFile Open(string path, bool writable, bool exclusive, bool directWrites = true)
    {
        var share = exclusive ? FileShare.None : writable ? FileShare.Read : FileShare.ReadWrite | FileShare.Delete;
        var handle = File.OpenHandle(path, FileMode.Open, writable ? FileAccess.ReadWrite : FileAccess.Read, share, FileOptions.None);
        return new PositionalImageFile(path, handle, writable) { _directAllowed = directWrites };
    }

    /// <summary>Creates a new empty file, read-write, shared with readers only; fails when the path exists.</summary>
    public static PositionalImageFile CreateNew(string path)
    {
        var handle = File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.Read, FileOptions.None);
        return new PositionalImageFile(path, handle, writable: true);
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
        Atomic.RaiseTo(ref _length, offset + buffer.Length);
    }

    public override void SetLength(long length)
    {
        RandomAccess.SetLength(_handle, length);
        Volatile.Write(ref _length, length);
    }

    /// <summary>
    /// A second handle on the same open file (through /proc/self/fd, so a rename cannot swap the file) with O_DIRECT.
    /// Filesystems without O_DIRECT refuse the open, and writes stay buffered.
    /// </summary>
    public override bool EnableDirectWrites()
    {
        if (!Writable || !_directAllowed)
        {
            return false;
        }

        if (Volatile.Read(ref _direct) is null)
        {
            var direct = PosixSync.OpenDirectForWrite($"/proc/self/fd/{_handle.DangerousGetHandle()}");
            if (direct is not null && Interlocked.CompareExchange(ref _direct, direct, null) is not null)
            {
                direct.Dispose();
            }
        }

        return Volatile.Read(ref _direct) is not null;
    }

    public override bool TryWriteDirect(ReadOnlySpan<byte> buffer, long offset)
    {
        var direct = Volatile.Read(ref _direct);
        if (direct is null || _directRefused || buffer.Length < DirectMinBytes || ((offset | (long)buffer.Length) & (DirectAlignment - 1)) != 0)
        {
            return false;
        }

        // O_DIRECT needs an aligned source too; the caller's buffer (a FUSE request's payload) is not.
        var bounce = BounceBuffer();
        try
        {
            for (int done = 0; done < buffer.Length;)
            {
                int n = Math.Min(bounce.Length, buffer.Length - done);
                buffer.Slice(done, n).CopyTo(bounce);
                RandomAccess.Write(direct, bounce[..n], offset + done);
                done += n;
            }
        }
        catch (IOException e) when (e.HResult == Errno.EINVAL /* the filesystem wants another alignment */)
        {
            // Whatever part was written is written again, buffered, by the caller; later writes stay buffered. The
            // handle stays open until Dispose: other threads may be writing through it right now.
            _directRefused = true;
            return false;
        }

        Atomic.RaiseTo(ref _length, offset + buffer.Length);
        return true;
    }

    private static Span<byte> BounceBuffer()
    {
        if (t_bounce is null)
        {
            // Pinned, so its address (and the alignment found in it) never changes.
            t_bounce = GC.AllocateUninitializedArray<byte>(BounceBytes + DirectAlignment, pinned: true);
            long address = (long)System.Runtime.InteropServices.Marshal.UnsafeAddrOfPinnedArrayElement(t_bounce, 0);
            t_bounceSkew = (int)((DirectAlignment - (address & (DirectAlignment - 1))) & (DirectAlignment - 1));
        }

        return t_bounce.AsSpan(t_bounceSkew, BounceBytes);
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
            _noFallocate = rc is Errno.EOPNOTSUPP or Errno.EINVAL or Errno.ENOSYS;
        }

        SetLength(to);
    }

    public override bool TryPunchHole(long offset, long length)
    {
        if (length <= 0)
        {
            return true;
        }

        if (Volatile.Read(ref _noPunchHole))
        {
            return false;
        }

        int rc = PosixSync.PunchHole(_handle, offset, length);
        if (rc == 0)
        {
            return true;
        }

        if (rc is Errno.EOPNOTSUPP or Errno.ENOSYS or Errno.EINVAL)
        {
            Volatile.Write(ref _noPunchHole, true);
            return false;
        }

        throw new IOException($"{Path}: cannot release space at offset {offset} (fallocate errno {rc})", rc);
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
            _direct?.Dispose();
            _handle.Dispose();
        }
    }
}
