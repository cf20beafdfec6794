using System.Buffers;
using System.Buffers.Binary;
using System.Security.Cryptography;
using PrlFuse.Core.Formats;
using PrlFuse.Core.IO;

namespace PrlFuse.Core.Images;

/// <summary>
/// The write path of the top image.
/// <para>
/// Locking. Readers never lock: a BAT entry is published (release) only after the data it points at is in the
/// file. Writers to an allocated cluster write in place with no lock. Allocating a cluster takes the cluster's
/// stripe lock (so racing writers on one cluster allocate it once and neither write is lost), reserves space at the
/// data end, fills the cluster (old content from the chain below plus the new bytes), writes it, then publishes the
/// entry. <see cref="_flushLock"/> is the one lock for the BAT's on-disk state and file growth: allocators hold it
/// shared from the data write to the publication, and <see cref="Flush"/> holds it exclusively, so every BAT entry
/// that reaches the disk points at data that was made durable (fdatasync) before it. A crash at any moment leaves at
/// worst leaked clusters.
/// </para>
/// </summary>
public sealed partial class ExpandableImage
{
    /// <summary>File growth step: one ftruncate per this many bytes of allocation, not one per cluster.</summary>
    public const long GrowthChunkBytes = 64L << 20;

    /// <summary>Largest cluster written: 16 times the largest size Parallels uses (1 MiB).</summary>
    public const long MaxWritableClusterBytes = 16L << 20;

    private const int StripeCount = 64;
    private const int BatPageBytes = 4096;

    private readonly object[] _stripes = CreateStripes();
    private readonly ReaderWriterLockSlim _flushLock = new(LockRecursionPolicy.NoRecursion);
    private readonly object _growLock = new();
    private readonly object _openLock = new();
    private byte[]? _dirtyBatPages;
    private long _nextFree;
    private long _fileEnd;

    /// <summary>Space from here on was grown by this session: it reads as zeros except where this session wrote.</summary>
    private long _freshFrom = long.MaxValue;
    private bool _directWrites;
    private bool _openedForWrite;
    private bool _closed;
    private int _growingAhead;
    private uint _closedInUse;

    /// <summary>Why this image cannot be written even though its file is writable, or null.</summary>
    public string? WriteBlockedReason { get; private set; }

    /// <summary>True once the first change was made (in_use is "Ynot" on disk until a clean close).</summary>
    public bool IsOpenForWrite => Volatile.Read(ref _openedForWrite);

    public override bool IsImmutable => !File.Writable || WriteBlockedReason is not null;

    private static object[] CreateStripes()
    {
        var stripes = new object[StripeCount];
        for (int i = 0; i < stripes.Length; i++)
        {
            stripes[i] = new object();
        }

        return stripes;
    }

    /// <summary>Decides at open whether writes are allowed (the spec's NECESSARY rule for unknown extensions).</summary>
    private void CheckWritable()
    {
        if (!File.Writable)
        {
            return;
        }

        if (Header.IsUnclean)
        {
            WriteBlockedReason = "image was not closed cleanly; run 'prlfuse check --repair'";
        }
        else if (IsDamaged)
        {
            // A write could allocate over space a damaged entry points at; the repair decides what those clusters hold.
            WriteBlockedReason = $"image has {DamagedClusterCount} damaged BAT entr{(DamagedClusterCount == 1 ? "y" : "ies")}; run 'prlfuse check --repair'";
        }
        else if (ClusterBytes > MaxWritableClusterBytes)
        {
            // A write into a new cluster builds the whole cluster in memory: a hostile tracks field (up to 2 GiB) would
            // make every such write allocate that much.
            WriteBlockedReason = $"cluster size of {ClusterBytes} bytes is larger than PrlFuse writes ({MaxWritableClusterBytes >> 20} MiB); it is served read-only";
            AddWarning(WarningCodes.ClusterTooLargeToWrite, WriteBlockedReason);
        }
        else if (Extension is { } ext && ext.Features.Any(f => !f.IsDirtyBitmap && (f.Flags & ExtensionFeature.FlagNecessary) != 0))
        {
            WriteBlockedReason = "image has a format extension feature marked NECESSARY that PrlFuse does not know; it is served read-only";
            AddWarning(WarningCodes.UnknownNecessaryFeature, WriteBlockedReason);
        }
    }

    /// <summary>
    /// Writes <paramref name="data"/> at <paramref name="within"/> of guest cluster <paramref name="cluster"/>.
    /// When the cluster is not allocated yet, <paramref name="readBelow"/> supplies the old content of the whole
    /// cluster (the chain below, or zeros). Returns the host range written, for cache invalidation.
    /// </summary>
    public (long Host, long Length) WriteCluster(long cluster, int within, ReadOnlySpan<byte> data, ReadBelow readBelow, object? state)
    {
        if (WriteBlockedReason is not null || !File.Writable)
        {
            throw new IOException($"{Path}: image is read-only: {WriteBlockedReason ?? "opened read-only"}");
        }

        if (cluster >= Bat.Count)
        {
            throw new IOException($"{Path}: write beyond the image's {Bat.Count} clusters");
        }

        EnsureOpenForWrite();
        long host = Bat.GetHostOffset(cluster);
        if (host != 0)
        {
            WriteData(data, host + within, host >= Volatile.Read(ref _freshFrom));
            return (host + within, data.Length);
        }

        lock (_stripes[cluster % StripeCount])
        {
            host = Bat.GetHostOffset(cluster);
            if (host != 0)
            {
                WriteData(data, host + within, host >= Volatile.Read(ref _freshFrom));
                return (host + within, data.Length);
            }

            int clusterBytes = (int)ClusterBytes;
            byte[]? rented = null;
            _flushLock.EnterReadLock();
            try
            {
                host = Reserve();
                bool fresh = host >= Volatile.Read(ref _freshFrom);
                try
                {
                    if (data.Length == clusterBytes)
                    {
                        WriteData(data, host, fresh);
                    }
                    else
                    {
                        // Only the rest of the cluster comes from below. Over zeros below, in space that is known to
                        // read as zeros, the new bytes are all there is to write (half the bytes of a 512 KiB write
                        // into a 1 MiB cluster, and no copy).
                        rented = ArrayPool<byte>.Shared.Rent(clusterBytes);
                        var full = rented.AsSpan(0, clusterBytes);
                        int after = within + data.Length;
                        long guest = cluster * ClusterBytes;
                        readBelow(full[..within], guest, state);
                        readBelow(full[after..], guest + after, state);
                        if (fresh && !full[..within].ContainsAnyExcept((byte)0) && !full[after..].ContainsAnyExcept((byte)0))
                        {
                            WriteData(data, host + within, fresh);
                        }
                        else
                        {
                            data.CopyTo(full[within..]);
                            WriteData(full, host, fresh);
                        }
                    }
                }
                catch
                {
                    // The read below or the write failed (EIO, ENOSPC): give the slot back so it is not leaked.
                    Unreserve(host);
                    throw;
                }

                Bat.SetEntry(cluster, Bat.EntryForHostOffset(host));
                Volatile.Write(ref _dirtyBatPages![(ParallelsHeader.Size + (cluster * 4)) / BatPageBytes], 1);
            }
            finally
            {
                _flushLock.ExitReadLock();
                if (rented is not null)
                {
                    ArrayPool<byte>.Shared.Return(rented);
                }
            }

            return (host, clusterBytes);
        }
    }

    /// <summary>
    /// Writes into a cluster of this image. Fresh space (past the file's end when it was opened for writing, grown by
    /// this session) is written past the host page cache where the file allows it: those pages are not in the cache,
    /// and creating them (allocating and zeroing memory, in a VM often faulting it in from the hypervisor) cost more
    /// than the device write (1 MiB writes into new clusters: 0.3-1.5 GB/s buffered, 2 GB/s direct on this machine's
    /// virtio disk). Clusters that were there before are written through the page cache, which likely holds them.
    /// </summary>
    private void WriteData(ReadOnlySpan<byte> data, long host, bool fresh)
    {
        if (!(fresh && _directWrites && File.TryWriteDirect(data, host)))
        {
            File.Write(data, host);
        }
    }

    /// <summary>Supplies the old content of a guest range from below the top image.</summary>
    public delegate void ReadBelow(Span<byte> destination, long guestOffset, object? state);

    /// <summary>Reserves one cluster at the data end, growing the file in chunks.</summary>
    private long Reserve()
    {
        long clusterBytes = ClusterBytes;
        long host = Interlocked.Add(ref _nextFree, clusterBytes) - clusterBytes;
        if (host / Bat.UnitBytes > uint.MaxValue)
        {
            throw new IOException($"{Path}: image is full: its BAT cannot address offset {host}", Errno.EFBIG);
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
                        // Allocated space, not a sparse tail: writing into a sparse tail makes the host filesystem
                        // allocate blocks on every write (1 MiB writes into new clusters: 0.3-0.5 GB/s on ext4 here,
                        // 2+ GB/s into fallocated space).
                        File.Allocate(_fileEnd, target);
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
    /// Keeps one growth chunk ahead of the allocator, grown and brought into the page cache by a background thread.
    /// Why: writing a new cluster means new page-cache pages, and creating them (allocating and zeroing memory; in a VM
    /// often a fault into the hypervisor as well) was half the CPU of a 1 MiB write into new clusters. Done ahead, on
    /// another CPU, the write only copies into pages that exist. Where writes into grown space go direct (see
    /// <see cref="WriteData"/>) the pages are not brought in: they would only be invalidated again. Space grown ahead is
    /// trimmed by a clean close; a crash leaves it as leaked space, like the chunk growth itself.
    /// </summary>
    private void GrowAhead()
    {
        if (Interlocked.CompareExchange(ref _growingAhead, 1, 0) != 0)
        {
            return;
        }

        ThreadPool.UnsafeQueueUserWorkItem(
            static image =>
            {
                try
                {
                    long from;
                    long target;
                    lock (image._growLock)
                    {
                        from = image._fileEnd;
                        target = from + GrowthChunkBytes;
                        if (image._closed || Volatile.Read(ref image._nextFree) + GrowthChunkBytes <= from || target / image.Bat.UnitBytes > uint.MaxValue)
                        {
                            return;
                        }

                        image.File.Allocate(from, target);
                        Volatile.Write(ref image._fileEnd, target);
                    }

                    if (!image._directWrites)
                    {
                        image.File.Prefetch(from, target - from);
                    }
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException or ObjectDisposedException)
                {
                    // Only a head start: the allocator grows the file itself when it gets there, and reports errors.
                }
                finally
                {
                    Volatile.Write(ref image._growingAhead, 0);
                }
            },
            this,
            preferLocal: false);
    }

    /// <summary>
    /// Returns a reserved slot that was never published, when it is still the last one (an allocation racing past it
    /// leaves it leaked, which is harmless: a leak is never corruption).
    /// </summary>
    private void Unreserve(long host)
    {
        // The slot may hold part of the failed write now: it is fresh no more. Marked before it is handed back, so an
        // allocator that gets it again cannot take it for zeros.
        Atomic.RaiseTo(ref _freshFrom, host + ClusterBytes);
        Interlocked.CompareExchange(ref _nextFree, host, host + ClusterBytes);
    }

    /// <summary>Before the first change: mark the image open ("Ynot"), drop what a write would make untrue, make it durable.</summary>
    private void EnsureOpenForWrite()
    {
        if (Volatile.Read(ref _openedForWrite))
        {
            return;
        }

        lock (_openLock)
        {
            if (_openedForWrite)
            {
                return;
            }

            // Header changes only once the open header is written, so a failed attempt (EIO) is retried from the same
            // state and the in_use restored on close is never "Ynot" itself.
            _closedInUse = Header.InUse;
            if (Header.IsEmpty)
            {
                ClearForWrite();
            }

            ulong extOffset = RewriteExtensionForWrite();
            long clusterBytes = ClusterBytes;
            long usedEnd = Math.Max(Bat.UsedEnd(), DataOffsetBytes);
            if (extOffset != 0)
            {
                usedEnd = Math.Max(usedEnd, ((long)extOffset * 512) + clusterBytes);
            }

            foreach (long end in BitmapClusterEnds())
            {
                usedEnd = Math.Max(usedEnd, end);
            }

            // Clusters sit at data_off + k * cluster; the next free one is the first such slot past everything used.
            long slots = (usedEnd - DataOffsetBytes + clusterBytes - 1) / clusterBytes;
            _nextFree = DataOffsetBytes + (slots * clusterBytes);
            _fileEnd = File.Length;
            _freshFrom = _fileEnd;
            _directWrites = File.EnableDirectWrites();
            long batBytes = ParallelsHeader.Size + (4L * Bat.Count);
            _dirtyBatPages = new byte[(batBytes + BatPageBytes - 1) / BatPageBytes];

            var opened = Header with { InUse = ParallelsHeader.InUseOpen, ExtensionOffsetSectors = extOffset };
            WriteHeader(opened);
            File.Flush(dataOnly: true);
            Header = opened;
            Volatile.Write(ref _openedForWrite, true);
        }
    }

    /// <summary>
    /// The empty-image flag says the image is clear whatever its BAT holds. Before the first write makes that untrue,
    /// the BAT is zeroed on disk (durably) and only then is the flag dropped, so every state a crash can leave reads
    /// the same as before. Without this, writes went into clusters that reads ignored.
    /// </summary>
    private void ClearForWrite()
    {
        for (int i = 0; i < Bat.Count; i++)
        {
            Bat.SetEntry(i, 0);
        }

        var zeros = new byte[(int)Math.Min(4L * Bat.Count, 1 << 20)];
        for (long done = 0; done < 4L * Bat.Count; done += zeros.Length)
        {
            File.Write(zeros.AsSpan(0, (int)Math.Min(zeros.Length, (4L * Bat.Count) - done)), ParallelsHeader.Size + done);
        }

        File.Flush(dataOnly: true);
        Header = Header with { Flags = Header.Flags & ~ParallelsHeader.FlagEmpty };
        _empty = false; // only now: the BAT it exposes is all zeros

    }

    private IEnumerable<long> BitmapClusterEnds()
    {
        if (Extension?.DirtyBitmap is { } bitmap)
        {
            foreach (ulong e in bitmap.L1Table)
            {
                if (e > 1)
                {
                    yield return ((long)e * 512) + ClusterBytes;
                }
            }
        }
    }

    /// <summary>
    /// A write makes a dirty bitmap untrue, so it goes (as QEMU does in read-write mode). Unknown features marked
    /// TRANSIT stay, with the MD5 recomputed; anything else is dropped. Returns the new ext_off.
    /// </summary>
    private ulong RewriteExtensionForWrite()
    {
        if (Header.ExtensionOffsetSectors == 0)
        {
            return 0;
        }

        var ext = Extension;
        if (ext is null || !ext.ChecksumValid)
        {
            return 0;
        }

        var keep = ext.Features.Where(f => !f.IsDirtyBitmap && (f.Flags & ExtensionFeature.FlagTransit) != 0).ToList();
        if (keep.Count == 0)
        {
            return 0;
        }

        int clusterBytes = (int)ClusterBytes;
        long offset = (long)Header.ExtensionOffsetSectors * 512;
        byte[] old = new byte[clusterBytes];
        File.ReadZeroFilled(old, offset);
        byte[] fresh = new byte[clusterBytes];
        BinaryPrimitives.WriteUInt64LittleEndian(fresh, FormatExtension.Magic);
        int pos = FormatExtension.HeaderSize;
        foreach (var f in keep)
        {
            int total = FormatExtension.FeatureHeaderSize + (int)((f.DataSize + 7) & ~7u);
            old.AsSpan((int)f.DataOffset - FormatExtension.FeatureHeaderSize, total).CopyTo(fresh.AsSpan(pos));
            pos += total;
        }

        MD5.HashData(fresh.AsSpan(FormatExtension.HeaderSize), fresh.AsSpan(8, 16));
        File.Write(fresh, offset);
        return Header.ExtensionOffsetSectors;
    }

    private void WriteHeader(ParallelsHeader header)
    {
        Span<byte> bytes = stackalloc byte[ParallelsHeader.Size];
        header.WriteTo(bytes);
        File.Write(bytes, 0);
    }

    /// <summary>Makes every completed write durable: the data first, then the BAT entries that point at it.</summary>
    public void Flush()
    {
        if (!Volatile.Read(ref _openedForWrite))
        {
            return;
        }

        _flushLock.EnterWriteLock();
        try
        {
            File.Flush(dataOnly: true);
            var written = WriteDirtyBatPages();
            if (written.Count > 0)
            {
                try
                {
                    File.Flush(dataOnly: true);
                }
                catch
                {
                    // Not known to be durable: the next Flush writes these pages again.
                    foreach (int page in written)
                    {
                        _dirtyBatPages![page] = 1;
                    }

                    throw;
                }
            }
        }
        finally
        {
            _flushLock.ExitWriteLock();
        }
    }

    /// <summary>
    /// Writes the dirty BAT pages (allocators are held off by the flush lock). A page is marked clean only once its
    /// write succeeded, so a failed write (EIO) leaves it for the next Flush instead of losing the entries.
    /// </summary>
    private List<int> WriteDirtyBatPages()
    {
        var dirty = _dirtyBatPages!;
        long batEnd = ParallelsHeader.Size + (4L * Bat.Count);
        byte[]? buffer = null;
        var written = new List<int>();
        for (int page = 0; page < dirty.Length; page++)
        {
            if (dirty[page] == 0)
            {
                continue;
            }

            long start = Math.Max(ParallelsHeader.Size, (long)page * BatPageBytes);
            long end = Math.Min(batEnd, (long)(page + 1) * BatPageBytes);
            int first = (int)((start - ParallelsHeader.Size) / 4);
            int count = (int)((end - start) / 4);
            buffer ??= new byte[BatPageBytes];
            Bat.WriteEntries(buffer, first, count);
            File.Write(buffer.AsSpan(0, count * 4), start);
            dirty[page] = 0;
            written.Add(page);
        }

        return written;
    }

    /// <summary>
    /// Clean close: flush, trim the file to its used end, restore in_use, make it durable. After this the image
    /// passes 'qemu-img check' with no leaks.
    /// </summary>
    public void CloseForWrite()
    {
        if (!Volatile.Read(ref _openedForWrite) || _closed)
        {
            return;
        }

        Flush();
        long usedEnd = Math.Max(Bat.UsedEnd(), DataOffsetBytes);
        if (Header.ExtensionOffsetSectors != 0)
        {
            usedEnd = Math.Max(usedEnd, ((long)Header.ExtensionOffsetSectors * 512) + ClusterBytes);
        }

        // Under the grow lock, with _closed set: a growth ahead still queued finds the image closed and does nothing.
        lock (_growLock)
        {
            _closed = true;
            if (usedEnd < File.Length)
            {
                File.SetLength(usedEnd);
            }
        }

        Header = Header with { InUse = _closedInUse };
        WriteHeader(Header);
        File.Flush(dataOnly: false);
    }

    partial void OnDispose();

    /// <summary>
    /// Stops growth ahead and waits for one in flight: its fallocate or fadvise holds a reference to the handle, which
    /// would keep the file (and its image locks) open past Dispose, so an immediate reopen would find it "in use".
    /// </summary>
    private void StopGrowthAhead()
    {
        lock (_growLock)
        {
            _closed = true;
        }

        SpinWait.SpinUntil(() => Volatile.Read(ref _growingAhead) == 0);
    }

    partial void OnDispose() => _flushLock.Dispose();
}
