using System.Collections.Concurrent;
using System.Text;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Images;
using PrlFuse.Fuse.Native;

namespace PrlFuse.Fuse;

/// <summary>How the mount presents the disk.</summary>
public sealed record BundleFileSystemOptions
{
    /// <summary>Open files with direct_io (default): loop devices send large requests and nothing is cached twice.</summary>
    public bool DirectIo { get; init; } = true;

    /// <summary>
    /// Serve large reads (from <see cref="BundleFileSystem.SpliceMinBytes"/>) as ranges of the image files that the
    /// kernel splices from the page cache to /dev/fuse (one copy instead of two). Default on.
    /// </summary>
    public bool Splice { get; init; } = true;

    public uint Uid { get; init; }

    public uint Gid { get; init; }

    /// <summary>Called when a callback hits an unexpected error (logged by the daemon).</summary>
    public Action<string>? Log { get; init; }

    /// <summary>Called once the kernel's init request has been handled: from then on the mount answers.</summary>
    public Action? OnInitialized { get; init; }
}

/// <summary>
/// Presents a <see cref="VirtualDisk"/>:
/// <code>
///   /current.raw                 the top snapshot (read-write when the disk was opened read-write)
///   /snapshots/{GUID}.raw        every other snapshot, read-only (0444); a qcow2 internal snapshot as NAME.raw
/// </code>
/// Every callback is a hot path: the file table is built once, paths are matched as UTF-8 bytes, reads and writes
/// go straight into the kernel's buffer, and nothing is allocated per request.
/// </summary>
public sealed class BundleFileSystem : IFuseFileSystem
{
    private const uint DirectoryMode = StatMode.Directory | 0x1ED; // 0755
    private static readonly byte[] RootPath = "/"u8.ToArray();
    private static readonly byte[] SnapshotsPath = "/snapshots"u8.ToArray();

    private readonly VirtualDisk _disk;
    private readonly BundleFileSystemOptions _options;
    // Grows (a copy published whole) when a live snapshot adds a file; a file's index, its handle, never changes.
    private FileEntry[] _files;

    // Writes, discards and flushes hold it shared; a live snapshot holds it exclusively, so none is in flight while
    // the top changes. Writers are preferred: a snapshot is not starved by a stream of writes.
    private readonly ReaderWriterLockSlim _writeGate = new(LockRecursionPolicy.NoRecursion);
    private readonly TimeSpec _mountTime;

    // Damaged clusters already logged (image, cluster): grows only with the clusters actually read.
    private readonly ConcurrentDictionary<(string Image, long Cluster), byte> _reportedDamage = new();

    // 1 once the host's lack of hole punching has been logged (once per mount: a guest's fstrim discards a lot).
    private int _reportedPunchFallback;

    public BundleFileSystem(VirtualDisk disk, BundleFileSystemOptions options)
    {
        _disk = disk;
        _options = options;
        _mountTime = TimeSpec.FromDateTimeOffset(DateTimeOffset.UtcNow);
        var files = new List<FileEntry> { new("/current.raw", "current.raw", disk.Top) };
        foreach (var view in disk.SnapshotViews)
        {
            string name = view.Name + ".raw";
            files.Add(new FileEntry("/snapshots/" + name, name, view));
        }

        _files = [.. files];
    }

    /// <summary>One presented file: its path, its view, and what stat says about it.</summary>
    private sealed class FileEntry
    {
        private long _allocatedBytes = -1;
        private long _allocatedAt;

        public FileEntry(string path, string name, SnapshotView view)
        {
            Path = Encoding.UTF8.GetBytes(path);
            Name = Encoding.UTF8.GetBytes(name);
            View = view;
            var top = view.Storages[0].TopLayer;
            ModifyTime = TimeSpec.FromDateTimeOffset(File.GetLastWriteTimeUtc(top.Path));
            ChangeTime = TimeSpec.FromDateTimeOffset(File.GetLastWriteTimeUtc(top.Path));
        }

        public byte[] Path { get; }

        public byte[] Name { get; }

        public SnapshotView View { get; }

        public bool Writable => View.IsWritable;

        public TimeSpec ModifyTime { get; set; }

        public TimeSpec ChangeTime { get; }

        /// <summary>Allocated bytes for st_blocks: counted once for read-only views, at most every 2 s for the top.</summary>
        public long AllocatedBytes()
        {
            long now = Environment.TickCount64;
            if (_allocatedBytes < 0 || (Writable && now - Volatile.Read(ref _allocatedAt) > 2000))
            {
                Volatile.Write(ref _allocatedBytes, View.CountAllocatedBytes());
                Volatile.Write(ref _allocatedAt, now);
            }

            return Volatile.Read(ref _allocatedBytes);
        }
    }

    /// <summary>
    /// Reads from this size on are answered with file ranges; smaller ones are copied (and use the block cache).
    /// Two pages was the crossover measured with libfuse's high-level API, which sent memory replies of two pages or
    /// more through its splice pipe (one more copy; README, Performance). The binding now writes a memory reply
    /// directly (fuse_reply_buf), so the crossover may lie higher; not measured again yet.
    /// </summary>
    public const int SpliceMinBytes = 8 * 1024;

    /// <summary>The top snapshot's file in the mount's root.</summary>
    public const string CurrentFileName = "current.raw";

    public bool ProvidesReadBuf => _options.Splice;

    /// <summary>Largest write request (see Init).</summary>
    public const uint MaxWriteBytes = 512 * 1024;

    public void Init(FuseInitContext context)
    {
        // Without it libfuse copies file pieces through a buffer (still correct, no gain). SPLICE_MOVE is not wanted:
        // moving would take pages out of the image files' page cache.
        if (_options.Splice && (context.Capable & FuseCapabilities.SpliceWrite) != 0)
        {
            context.Want |= FuseCapabilities.SpliceWrite;
        }

        // A file opened O_DIRECT is served without the direct_io flag (see Open): the kernel then cuts one request
        // into max_write pieces and, with async DIO, sends them all at once, so several FUSE threads copy and write
        // the pieces of a single writer's 1 MiB request in parallel. 512 KiB is the size that gains most for O_DIRECT
        // writers while costing a buffered writer, whose pieces go one after another through direct_io, least
        // (README, Performance).
        if ((context.Capable & FuseCapabilities.AsyncDio) != 0)
        {
            context.Want |= FuseCapabilities.AsyncDio;
        }

        context.MaxWrite = Math.Min(context.MaxWrite, MaxWriteBytes);

        // Many queued requests from a loop device: let the kernel keep more in flight.
        context.MaxBackground = 64;
        context.CongestionThreshold = 48;

        // Sizes never change while mounted; let the kernel keep attributes and names.
        context.AttrTimeout = 10;
        context.EntryTimeout = 10;
        context.NegativeTimeout = 10;

        _options.OnInitialized?.Invoke();
    }

    private FileEntry? Find(ReadOnlySpan<byte> path)
    {
        foreach (var file in Volatile.Read(ref _files))
        {
            if (path.SequenceEqual(file.Path))
            {
                return file;
            }
        }

        return null;
    }

    private FileEntry? FromHandle(FuseFileInfo fileInfo, ReadOnlySpan<byte> path)
    {
        if (fileInfo.IsPresent)
        {
            ulong handle = fileInfo.Handle;
            var files = Volatile.Read(ref _files);
            if (handle >= 1 && handle <= (ulong)files.Length)
            {
                return files[handle - 1];
            }
        }

        return Find(path);
    }

    public int GetAttr(ReadOnlySpan<byte> path, ref Stat stat, FuseFileInfo fileInfo)
    {
        stat = default;
        stat.Uid = _options.Uid;
        stat.Gid = _options.Gid;
        stat.BlockSize = 4096;
        if (path.SequenceEqual(RootPath) || path.SequenceEqual(SnapshotsPath))
        {
            stat.Mode = DirectoryMode;
            stat.LinkCount = 2;
            stat.AccessTime = stat.ModifyTime = stat.ChangeTime = _mountTime;
            return 0;
        }

        var file = FromHandle(fileInfo, path);
        if (file is null)
        {
            return -Errno.ENOENT;
        }

        stat.Mode = StatMode.RegularFile | (file.Writable ? 0x1A4u /* 0644 */ : 0x124u /* 0444 */);
        stat.LinkCount = 1;
        stat.Size = file.View.Size;
        stat.Blocks = file.AllocatedBytes() / 512;
        stat.AccessTime = file.ModifyTime;
        stat.ModifyTime = file.ModifyTime;
        stat.ChangeTime = file.ChangeTime;
        return 0;
    }

    public int ReadDir(ReadOnlySpan<byte> path, DirectoryFiller filler)
    {
        bool root = path.SequenceEqual(RootPath);
        if (!root && !path.SequenceEqual(SnapshotsPath))
        {
            return Find(path) is null ? -Errno.ENOENT : -Errno.ENOTDIR;
        }

        filler.Add("."u8);
        filler.Add(".."u8);
        if (root)
        {
            filler.Add("current.raw"u8);
            filler.Add("snapshots"u8);
            return 0;
        }

        var files = Volatile.Read(ref _files);
        for (int i = 1; i < files.Length; i++)
        {
            filler.Add(files[i].Name);
        }

        return 0;
    }

    public int Open(ReadOnlySpan<byte> path, FuseFileInfo fileInfo)
    {
        var files = Volatile.Read(ref _files);
        for (int i = 0; i < files.Length; i++)
        {
            if (path.SequenceEqual(files[i].Path))
            {
                if (fileInfo.WantsWrite && !files[i].Writable)
                {
                    return -Errno.EROFS;
                }

                fileInfo.Handle = (ulong)i + 1;
                // An O_DIRECT open bypasses the kernel's page cache without the flag, and only without it does the kernel
                // send the pieces of one request in parallel (async DIO; see Init).
                bool direct = _options.DirectIo && (fileInfo.Flags & OpenFlags.Direct) == 0;
                fileInfo.DirectIo = direct;
                fileInfo.KeepCache = !direct && !files[i].Writable;
                return 0;
            }
        }

        return path.SequenceEqual(RootPath) || path.SequenceEqual(SnapshotsPath) ? -Errno.EISDIR : -Errno.ENOENT;
    }

    public int Read(ReadOnlySpan<byte> path, Span<byte> buffer, long offset, FuseFileInfo fileInfo)
    {
        var file = FromHandle(fileInfo, path);
        if (file is null)
        {
            return -Errno.ENOENT;
        }

        try
        {
            return file.View.Read(buffer, offset);
        }
        catch (IOException e)
        {
            return Fail(e, file);
        }
    }

    /// <summary>
    /// A read answered with where the bytes are: pieces of the image files go as file ranges (spliced by libfuse),
    /// zeros as zeroed memory. Small reads, ranges in too many pieces and files without a handle are read as usual.
    /// </summary>
    public int ReadBuf(ReadOnlySpan<byte> path, FuseReadReply reply, long offset, FuseFileInfo fileInfo)
    {
        var file = FromHandle(fileInfo, path);
        if (file is null)
        {
            return -Errno.ENOENT;
        }

        if (offset < 0)
        {
            return -Errno.EINVAL;
        }

        var view = file.View;
        if (offset >= view.Size)
        {
            return 0;
        }

        int length = (int)Math.Min(reply.RequestedBytes, view.Size - offset);
        try
        {
            if (length >= SpliceMinBytes && TryAddPieces(view, reply, offset, length))
            {
                return 0;
            }

            view.Read(reply.AddMemory(length), offset);
            return 0;
        }
        catch (IOException e)
        {
            return Fail(e, file);
        }
    }

    private static bool TryAddPieces(SnapshotView view, FuseReadReply reply, long offset, int length)
    {
        var storage = default(PieceBuffer);
        Span<HostPiece> pieces = storage;
        int count = view.MapRange(offset, length, pieces[..Math.Min(pieces.Length, reply.Remaining)]);
        if (count < 0)
        {
            return false;
        }

        pieces = pieces[..count];
        foreach (var piece in pieces)
        {
            if (piece.File is { Handle: null })
            {
                return false;
            }
        }

        foreach (var piece in pieces)
        {
            if (piece.File is null)
            {
                reply.AddZeros(piece.Length);
            }
            else
            {
                reply.AddFile(piece.File.Handle!, piece.HostOffset, piece.Length);
            }
        }

        return true;
    }

    [System.Runtime.CompilerServices.InlineArray(FuseReadReply.MaxPieces)]
    private struct PieceBuffer
    {
        private HostPiece _first;
    }

    public int Write(ReadOnlySpan<byte> path, ReadOnlySpan<byte> buffer, long offset, FuseFileInfo fileInfo)
    {
        var file = FromHandle(fileInfo, path);
        if (file is null)
        {
            return -Errno.ENOENT;
        }

        if (!file.Writable)
        {
            return -Errno.EROFS;
        }

        long size = file.View.Size;
        if (offset >= size)
        {
            return buffer.IsEmpty ? 0 : -Errno.ENOSPC;
        }

        int n = (int)Math.Min(buffer.Length, size - offset);
        _writeGate.EnterReadLock();
        try
        {
            file.View.Write(buffer[..n], offset);
            file.ModifyTime = TimeSpec.FromDateTimeOffset(DateTimeOffset.UtcNow);
            return n;
        }
        catch (IOException e)
        {
            return Fail(e, file);
        }
        finally
        {
            _writeGate.ExitReadLock();
        }
    }

    /// <summary>SEEK_DATA and SEEK_HOLE from the allocation tables of the file's chain (nothing is read).</summary>
    public long Lseek(ReadOnlySpan<byte> path, long offset, int whence, FuseFileInfo fileInfo)
    {
        var file = FromHandle(fileInfo, path);
        if (file is null)
        {
            return -Errno.ENOENT;
        }

        if (whence is not (SeekWhence.Data or SeekWhence.Hole))
        {
            return -Errno.EINVAL;
        }

        // A negative offset, or one at or past the end, finds nothing: ENXIO, as ext4 and xfs answer.
        var view = file.View;
        long found = whence == SeekWhence.Data ? view.SeekData(offset) : view.SeekHole(offset);
        return found < 0 ? -Errno.ENXIO : found;
    }

    /// <summary>
    /// Discard (PUNCH_HOLE with KEEP_SIZE, what a loop device sends for a discard) and write-zeroes (ZERO_RANGE, with or
    /// without KEEP_SIZE) on the writable top: the range reads as zeros and whole clusters give their host space back.
    /// Ranges past the end are cut at the end when the size is kept. ZERO_RANGE without KEEP_SIZE past the end would
    /// grow the disk: EFBIG, the file's size being its limit, fails that request alone, whereas EOPNOTSUPP would tell
    /// callers (QEMU's raw driver) that the mode never works and make them stop using it. Other modes: EOPNOTSUPP.
    /// </summary>
    public int Fallocate(ReadOnlySpan<byte> path, int mode, long offset, long length, FuseFileInfo fileInfo)
    {
        var file = FromHandle(fileInfo, path);
        if (file is null)
        {
            return -Errno.ENOENT;
        }

        if (!file.Writable)
        {
            return -Errno.EROFS;
        }

        bool keepSize = (mode & FallocateMode.KeepSize) != 0;
        int operation = mode & ~FallocateMode.KeepSize;
        // PUNCH_HOLE always comes with KEEP_SIZE (the kernel refuses it alone); plain allocation would promise space for
        // clusters the format allocates only on write.
        if (!(operation == FallocateMode.ZeroRange || (operation == FallocateMode.PunchHole && keepSize)))
        {
            return -Errno.EOPNOTSUPP;
        }

        if (offset < 0 || length <= 0)
        {
            return -Errno.EINVAL;
        }

        var view = file.View;
        long size = view.Size;
        if (!keepSize && length > size - offset)
        {
            return -Errno.EFBIG;
        }

        if (offset >= size)
        {
            return 0;
        }

        _writeGate.EnterReadLock();
        try
        {
            if (view.Discard(offset, Math.Min(length, size - offset)) && Interlocked.Exchange(ref _reportedPunchFallback, 1) == 0)
            {
                _options.Log?.Invoke($"{Encoding.UTF8.GetString(file.Path)}: the host filesystem of {view.Storages[0].TopLayer.Path} cannot punch holes; discarded ranges are written with zeros");
            }

            file.ModifyTime = TimeSpec.FromDateTimeOffset(DateTimeOffset.UtcNow);
            return 0;
        }
        catch (IOException e)
        {
            return Fail(e, file);
        }
        finally
        {
            _writeGate.ExitReadLock();
        }
    }

    public int Fsync(ReadOnlySpan<byte> path, bool dataSync, FuseFileInfo fileInfo)
    {
        var file = FromHandle(fileInfo, path);
        if (file is null)
        {
            return -Errno.ENOENT;
        }

        _writeGate.EnterReadLock();
        try
        {
            // Data and the BAT entries pointing at it are made durable either way: the BAT is what makes data findable.
            file.View.Flush();
            return 0;
        }
        catch (IOException e)
        {
            return Fail(e, file);
        }
        finally
        {
            _writeGate.ExitReadLock();
        }
    }

    /// <summary>
    /// A live snapshot (see <see cref="VirtualDisk.TakeSnapshot"/>): writes, discards and flushes are held off, the
    /// disk takes the snapshot, and its file appears under snapshots/ before they go on. current.raw stays the same file
    /// for every open handle and loop device, reading what it read. Returns the new snapshot's GUID.
    /// </summary>
    public Guid TakeSnapshot(string? name)
    {
        _writeGate.EnterWriteLock();
        try
        {
            return _disk.TakeSnapshot(name).Id;
        }
        finally
        {
            // Also after a failure once the snapshot existed (its old top failed to close): the view is there, so is its file.
            AddNewSnapshotFiles();
            _writeGate.ExitWriteLock();
        }
    }

    private void AddNewSnapshotFiles()
    {
        var files = Volatile.Read(ref _files);
        var added = _disk.SnapshotViews.Where(v => !files.Any(f => f.View == v)).Select(v => new FileEntry("/snapshots/" + v.Name + ".raw", v.Name + ".raw", v)).ToList();
        if (added.Count > 0)
        {
            Volatile.Write(ref _files, [.. files, .. added]);
        }
    }

    public int Truncate(ReadOnlySpan<byte> path, long size, FuseFileInfo fileInfo)
    {
        var file = FromHandle(fileInfo, path);
        if (file is null)
        {
            return path.SequenceEqual(RootPath) || path.SequenceEqual(SnapshotsPath) ? -Errno.EISDIR : -Errno.ENOENT;
        }

        if (!file.Writable)
        {
            return -Errno.EROFS;
        }

        // A disk does not change size; truncating to the same size (O_TRUNC-less tools do that) is harmless.
        return size == file.View.Size ? 0 : -Errno.EPERM;
    }

    public int StatFs(ReadOnlySpan<byte> path, ref StatVfs statVfs)
    {
        statVfs = default;
        statVfs.BlockSize = 4096;
        statVfs.FragmentSize = 4096;
        ulong blocks = 0;
        var files = Volatile.Read(ref _files);
        foreach (var file in files)
        {
            blocks += (ulong)((file.View.Size + 4095) / 4096);
        }

        statVfs.Blocks = blocks;
        statVfs.Files = (ulong)files.Length + 2;
        statVfs.NameMax = 255;
        return 0;
    }

    /// <summary>
    /// The errno an I/O failure carries (ENOSPC, EIO, ...); .NET puts the raw errno in HResult on Linux. A damaged
    /// cluster is EIO, logged the first time only: a loop device or a filesystem retries an unreadable block many times.
    /// </summary>
    private int Fail(IOException e, FileEntry file)
    {
        if (e is DamagedClusterException damaged)
        {
            if (_reportedDamage.TryAdd((damaged.ImagePath, damaged.Cluster), 0))
            {
                _options.Log?.Invoke($"{Encoding.UTF8.GetString(file.Path)}: {e.Message} (further reads of this cluster fail without a message)");
            }

            return -Errno.EIO;
        }

        int errno = e.HResult is > 0 and < 4096 ? e.HResult : Errno.EIO;
        _options.Log?.Invoke($"{Encoding.UTF8.GetString(file.Path)}: {e.Message}");
        return -errno;
    }
}
