using PrlFuse.Core.IO;
using System.Collections.Concurrent;
using PrlFuse.Fuse.Native;

namespace PrlFuse.Tests.Fuse;

/// <summary>
/// A tiny in-memory filesystem for the kernel tests. It records what reached it (fsync datasync
/// values, read requests, handles, truncates) so tests can check the binding end to end.
/// Files: /ro.bin (0444, fixed pseudo-random content), /rw.bin (0644, writable),
/// /direct.bin (opened with direct_io), /boom.bin (Read throws), /pair.bin (direct_io; each Read
/// waits until a second Read is in progress at the same time, proving the loop is multithreaded), /many (a directory
/// of <see cref="ManyEntries"/> empty files with long names: its listing takes many readdir replies).
/// </summary>
internal sealed class MemoryFileSystem : IFuseFileSystem
{
    public const int ReadOnlySize = 3 * 1024 * 1024 + 123;
    public const int MaxBackgroundSet = 77;
    public const int ManyEntries = 3000;

    private readonly Lock _rwLock = new();
    private byte[] _rw = new byte[256 * 1024];
    private long _rwLength = 256 * 1024;
    private long _nextHandle = 100;

    public MemoryFileSystem()
    {
        ReadOnlyData = new byte[ReadOnlySize];
        new Random(1234).NextBytes(ReadOnlyData);
    }

    public byte[] ReadOnlyData { get; }
    public bool InitCalled { get; private set; }
    public uint ProtocolMinor { get; private set; }
    public bool DestroyCalled { get; private set; }
    public ConcurrentQueue<(string Path, bool DataSync, ulong Handle)> Fsyncs { get; } = new();
    public ConcurrentQueue<(long Offset, int Size)> DirectReads { get; } = new();
    public ConcurrentQueue<(long Size, bool HadFileInfo)> Truncates { get; } = new();
    public ConcurrentDictionary<ulong, string> OpenHandles { get; } = new();
    public ConcurrentQueue<Exception> Exceptions { get; } = new();
    public long ModifyTimeSeconds { get; private set; }
    public FuseRequestContext LastOpenCaller { get; private set; }
    public Barrier PairBarrier { get; } = new(2);
    public int HandleMismatches;

    public byte[] RwSnapshot()
    {
        lock (_rwLock)
        {
            return _rw.AsSpan(0, (int)_rwLength).ToArray();
        }
    }

    public void Init(FuseInitContext context)
    {
        InitCalled = true;
        ProtocolMinor = context.ProtocolMinor;
        context.MaxBackground = MaxBackgroundSet;
        context.CongestionThreshold = MaxBackgroundSet * 3 / 4;
        context.UseIno = false;
    }

    public void Destroy() => DestroyCalled = true;

    private enum Node { None, Root, ReadOnly, ReadWrite, Direct, Boom, Pair, Many, ManyEntry }

    /// <summary>The name of entry <paramref name="i"/> of /many (long, so that few fit one readdir reply).</summary>
    public static string ManyEntryName(int i) => $"entry-{i:D5}-{new string((char)('a' + (i % 26)), 80)}";

    private static bool IsManyEntry(ReadOnlySpan<byte> path)
    {
        if (!path.StartsWith("/many/entry-"u8) || path.Length < 17)
        {
            return false;
        }

        return int.TryParse(path.Slice(12, 5), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int i)
            && i < ManyEntries && path[6..].SequenceEqual(System.Text.Encoding.UTF8.GetBytes(ManyEntryName(i)));
    }

    private static Node Find(ReadOnlySpan<byte> path) =>
        path.SequenceEqual("/"u8) ? Node.Root
        : path.SequenceEqual("/many"u8) ? Node.Many
        : IsManyEntry(path) ? Node.ManyEntry
        : path.SequenceEqual("/ro.bin"u8) ? Node.ReadOnly
        : path.SequenceEqual("/rw.bin"u8) ? Node.ReadWrite
        : path.SequenceEqual("/direct.bin"u8) ? Node.Direct
        : path.SequenceEqual("/boom.bin"u8) ? Node.Boom
        : path.SequenceEqual("/pair.bin"u8) ? Node.Pair
        : Node.None;

    public int GetAttr(ReadOnlySpan<byte> path, ref Stat stat, FuseFileInfo fileInfo)
    {
        switch (Find(path))
        {
            case Node.Root:
            case Node.Many:
                stat.Mode = StatMode.Directory | 0b111_101_101;
                stat.LinkCount = 2;
                return 0;
            case Node.ManyEntry:
                stat.Mode = StatMode.RegularFile | 0b100_100_100;
                break;
            case Node.ReadOnly:
            case Node.Direct:
            case Node.Boom:
            case Node.Pair:
                stat.Mode = StatMode.RegularFile | 0b100_100_100;
                stat.Size = ReadOnlySize;
                break;
            case Node.ReadWrite:
                stat.Mode = StatMode.RegularFile | 0b110_100_100;
                stat.Size = Interlocked.Read(ref _rwLength);
                stat.ModifyTime = new TimeSpec(ModifyTimeSeconds, 0);
                break;
            default:
                return -Errno.ENOENT;
        }
        stat.LinkCount = 1;
        stat.BlockSize = 4096;
        stat.Blocks = (stat.Size + 511) / 512;
        return 0;
    }

    public int ReadDir(ReadOnlySpan<byte> path, DirectoryFiller filler)
    {
        if (Find(path) == Node.Many)
        {
            filler.Add("."u8, StatMode.Directory);
            filler.Add(".."u8, StatMode.Directory);
            for (int i = 0; i < ManyEntries; i++)
            {
                filler.Add(System.Text.Encoding.UTF8.GetBytes(ManyEntryName(i)), StatMode.RegularFile);
            }

            return 0;
        }

        if (Find(path) != Node.Root)
        {
            return Find(path) == Node.None ? -Errno.ENOENT : -Errno.ENOTDIR;
        }
        filler.Add("."u8, StatMode.Directory);
        filler.Add(".."u8, StatMode.Directory);
        filler.Add("ro.bin"u8, StatMode.RegularFile);
        filler.Add("rw.bin"u8, StatMode.RegularFile);
        filler.Add("direct.bin"u8);
        filler.Add("boom.bin"u8);
        filler.Add("pair.bin"u8);
        filler.Add("many"u8, StatMode.Directory);
        return 0;
    }

    public int Open(ReadOnlySpan<byte> path, FuseFileInfo fileInfo)
    {
        Node node = Find(path);
        if (node is Node.None or Node.Root or Node.Many)
        {
            return node == Node.None ? -Errno.ENOENT : -Errno.EISDIR;
        }
        // Mounted without default_permissions: the kernel checks nothing, so the filesystem must.
        if (node != Node.ReadWrite && fileInfo.WantsWrite)
        {
            return -Errno.EACCES;
        }
        fileInfo.DirectIo = node is Node.Direct or Node.Pair;
        LastOpenCaller = FuseRequestContext.Current;
        ulong handle = (ulong)Interlocked.Increment(ref _nextHandle);
        fileInfo.Handle = handle;
        OpenHandles[handle] = System.Text.Encoding.UTF8.GetString(path);
        return 0;
    }

    private void CheckHandle(FuseFileInfo fileInfo)
    {
        if (!OpenHandles.ContainsKey(fileInfo.Handle))
        {
            Interlocked.Increment(ref HandleMismatches);
        }
    }

    /// <summary>direct.bin has one data range, [<see cref="DirectDataStart"/>, <see cref="DirectDataEnd"/>); boom.bin throws;
    /// the others answer ENOSYS (what the interface's default answers).</summary>
    public long Lseek(ReadOnlySpan<byte> path, long offset, int whence, FuseFileInfo fileInfo)
    {
        CheckHandle(fileInfo);
        switch (Find(path))
        {
            case Node.Boom:
                throw new InvalidOperationException("boom: the binding must turn this into EIO");
            case Node.Direct:
                if (offset >= DirectDataEnd)
                {
                    return -Errno.ENXIO;
                }

                return whence == SeekWhence.Data ? Math.Max(offset, DirectDataStart) : offset < DirectDataStart ? offset : DirectDataEnd;
            default:
                return -Errno.ENOSYS;
        }
    }

    public const long DirectDataStart = 4096;
    public const long DirectDataEnd = 8192;

    public int Read(ReadOnlySpan<byte> path, Span<byte> buffer, long offset, FuseFileInfo fileInfo)
    {
        CheckHandle(fileInfo);
        switch (Find(path))
        {
            case Node.Boom:
                throw new InvalidOperationException("boom: the binding must turn this into EIO");
            case Node.Pair:
                return PairBarrier.SignalAndWait(MountedFileSystem.Patience)
                    ? CopyOut(ReadOnlyData, ReadOnlyData.Length, buffer, offset)
                    : -Errno.ETIMEDOUT;
            case Node.Direct:
                DirectReads.Enqueue((offset, buffer.Length));
                return CopyOut(ReadOnlyData, ReadOnlyData.Length, buffer, offset);
            case Node.ReadOnly:
                return CopyOut(ReadOnlyData, ReadOnlyData.Length, buffer, offset);
            case Node.ReadWrite:
                lock (_rwLock)
                {
                    return CopyOut(_rw, _rwLength, buffer, offset);
                }
            default:
                return -Errno.ENOENT;
        }
    }

    private static int CopyOut(byte[] data, long length, Span<byte> buffer, long offset)
    {
        if (offset >= length)
        {
            return 0;
        }
        int n = (int)Math.Min(buffer.Length, length - offset);
        data.AsSpan((int)offset, n).CopyTo(buffer);
        return n;
    }

    public int Write(ReadOnlySpan<byte> path, ReadOnlySpan<byte> buffer, long offset, FuseFileInfo fileInfo)
    {
        CheckHandle(fileInfo);
        if (Find(path) != Node.ReadWrite)
        {
            return -Errno.EBADF;
        }
        lock (_rwLock)
        {
            long end = offset + buffer.Length;
            if (end > 64L * 1024 * 1024)
            {
                return -Errno.EFBIG;
            }
            EnsureCapacity(end);
            buffer.CopyTo(_rw.AsSpan((int)offset));
            _rwLength = Math.Max(_rwLength, end);
        }
        return buffer.Length;
    }

    private void EnsureCapacity(long size)
    {
        if (size > _rw.Length)
        {
            Array.Resize(ref _rw, (int)Math.Max(size, _rw.Length * 2L));
        }
    }

    public int Fsync(ReadOnlySpan<byte> path, bool dataSync, FuseFileInfo fileInfo)
    {
        CheckHandle(fileInfo);
        Fsyncs.Enqueue((System.Text.Encoding.UTF8.GetString(path), dataSync, fileInfo.Handle));
        return 0;
    }

    public int StatFs(ReadOnlySpan<byte> path, ref StatVfs statVfs)
    {
        statVfs.BlockSize = 4096;
        statVfs.FragmentSize = 4096;
        statVfs.Blocks = 1000;
        statVfs.BlocksFree = 250;
        statVfs.BlocksAvailable = 200;
        statVfs.Files = 4;
        statVfs.NameMax = 255;
        return 0;
    }

    public int Truncate(ReadOnlySpan<byte> path, long size, FuseFileInfo fileInfo)
    {
        if (Find(path) != Node.ReadWrite)
        {
            return -Errno.EACCES;
        }
        lock (_rwLock)
        {
            EnsureCapacity(size);
            if (size < _rwLength)
            {
                _rw.AsSpan((int)size, (int)(_rwLength - size)).Clear();
            }
            _rwLength = size;
        }
        Truncates.Enqueue((size, fileInfo.IsPresent));
        return 0;
    }

    public int Release(ReadOnlySpan<byte> path, FuseFileInfo fileInfo)
    {
        OpenHandles.TryRemove(fileInfo.Handle, out _);
        return 0;
    }

    public int SetTimes(ReadOnlySpan<byte> path, in TimeSpec accessTime, in TimeSpec modifyTime, FuseFileInfo fileInfo)
    {
        if (Find(path) != Node.ReadWrite)
        {
            return -Errno.EROFS;
        }
        if (modifyTime.Nanoseconds != TimeSpec.UtimeOmit)
        {
            ModifyTimeSeconds = modifyTime.Seconds;
        }
        return 0;
    }
}
