using PrlFuse.Core.IO;

namespace PrlFuse.Core.Images;

/// <summary>
/// Space for new clusters at the end of an image file, for a writer that appends its clusters there (a Parallels
/// image does; qcow2 and QED do too). Reserving a slot takes no lock. The file grows in chunks of allocated space,
/// not a sparse tail (a host filesystem would have to allocate blocks on every write into a sparse tail, several times
/// slower: README, Performance), one ftruncate per chunk rather than one per cluster, and one chunk is kept ahead of
/// the slots, grown by a background thread. Space grown by this session is fresh: it reads as zeros except where this
/// session wrote, so a writer may skip writing zeros there. Grown space is trimmed by a clean close
/// (<see cref="Close"/>); a crash leaves it as leaked space, which is never corruption.
/// </summary>
public sealed class DataAreaAllocator
{
    /// <summary>File growth step.</summary>
    public const long GrowthChunkBytes = 64L << 20;

    private readonly ImageFile _file;
    private readonly long _clusterBytes;
    private readonly long _limit;
    private readonly bool _prefetch;
    private readonly object _growLock = new();
    private long _nextFree;
    private long _fileEnd;
    private long _freshFrom;
    private bool _closed;
    private int _growingAhead;

    /// <param name="file">The image file; its length now is where fresh space starts.</param>
    /// <param name="clusterBytes">The slot size.</param>
    /// <param name="nextFree">The first free slot (past everything the image uses).</param>
    /// <param name="limit">The first host offset the image's metadata cannot address: reserving it fails with EFBIG.</param>
    /// <param name="prefetch">
    /// Bring space grown ahead into the page cache, so that buffered writes into it only copy into pages that exist
    /// (creating page-cache pages was the largest part of the CPU of a write into new clusters). Not when writes into
    /// fresh space go past the page cache: the pages would only be invalidated again.
    /// </param>
    public DataAreaAllocator(ImageFile file, long clusterBytes, long nextFree, long limit, bool prefetch)
    {
        _file = file;
        _clusterBytes = clusterBytes;
        _nextFree = nextFree;
        _limit = limit;
        _prefetch = prefetch;
        _fileEnd = file.Length;
        _freshFrom = _fileEnd;
    }

    /// <summary>True when <paramref name="host"/> lies in space this session grew and no failed write touched.</summary>
    public bool IsFresh(long host) => host >= Volatile.Read(ref _freshFrom);

    /// <summary>Reserves one cluster slot, growing the file when the slot reaches past it.</summary>
    public long Reserve()
    {
        long clusterBytes = _clusterBytes;
        long host = Interlocked.Add(ref _nextFree, clusterBytes) - clusterBytes;
        if (host >= _limit)
        {
            throw new IOException($"{_file.Path}: image is full: its metadata cannot address offset {host}", Errno.EFBIG);
        }

        long fileEnd = Volatile.Read(ref _fileEnd);
        if (host + clusterBytes > fileEnd)
        {
            lock (_growLock)
            {
                if (host + clusterBytes > _fileEnd)
                {
                    long target = Math.Max(host + clusterBytes, _fileEnd + GrowthChunkBytes);
                    try
                    {
                        _file.Allocate(_fileEnd, target);
                    }
                    catch
                    {
                        Unreserve(host);
                        throw;
                    }

                    Volatile.Write(ref _fileEnd, target);
                    fileEnd = target;
                }
            }
        }

        if (fileEnd - (host + clusterBytes) < GrowthChunkBytes)
        {
            GrowAhead();
        }

        return host;
    }

    /// <summary>
    /// Returns a reserved slot that was never published, when it is still the last one (an allocation racing past it
    /// leaves it leaked, which is harmless: a leak is never corruption).
    /// </summary>
    public void Unreserve(long host)
    {
        // The slot may hold part of the failed write now: it is fresh no more. Marked before it is handed back, so a
        // writer that gets it again cannot take it for zeros.
        Atomic.RaiseTo(ref _freshFrom, host + _clusterBytes);
        Interlocked.CompareExchange(ref _nextFree, host, host + _clusterBytes);
    }

    /// <summary>Clean close: no more growth, and the file is trimmed to <paramref name="usedEnd"/>.</summary>
    public void Close(long usedEnd)
    {
        // Under the grow lock, with _closed set: a growth ahead still queued finds the space closed and does nothing.
        lock (_growLock)
        {
            _closed = true;
            if (usedEnd < _file.Length)
            {
                _file.SetLength(usedEnd);
            }
        }
    }

    /// <summary>
    /// Stops growth ahead and waits for one in flight: its fallocate or fadvise holds a reference to the handle, which
    /// would keep the file (and its image locks) open past the writer's end, so an immediate reopen would find it "in
    /// use".
    /// </summary>
    public void Stop()
    {
        lock (_growLock)
        {
            _closed = true;
        }

        SpinWait.SpinUntil(() => Volatile.Read(ref _growingAhead) == 0);
    }

    /// <summary>Keeps one growth chunk ahead of the slots, grown (and brought into the page cache) by a background thread.</summary>
    private void GrowAhead()
    {
        if (Interlocked.CompareExchange(ref _growingAhead, 1, 0) != 0)
        {
            return;
        }

        ThreadPool.UnsafeQueueUserWorkItem(
            static space =>
            {
                try
                {
                    long from;
                    long target;
                    lock (space._growLock)
                    {
                        from = space._fileEnd;
                        target = from + GrowthChunkBytes;
                        if (space._closed || Volatile.Read(ref space._nextFree) + GrowthChunkBytes <= from || target >= space._limit)
                        {
                            return;
                        }

                        space._file.Allocate(from, target);
                        Volatile.Write(ref space._fileEnd, target);
                    }

                    if (space._prefetch)
                    {
                        space._file.Prefetch(from, target - from);
                    }
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException or ObjectDisposedException)
                {
                    // Only a head start: Reserve grows the file itself when it gets there, and reports errors.
                }
                finally
                {
                    Volatile.Write(ref space._growingAhead, 0);
                }
            },
            this,
            preferLocal: false);
    }
}
