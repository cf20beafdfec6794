using System.Buffers;
using System.Buffers.Binary;
using System.Security.Cryptography;
using PrlFuse.Core.IO;
using PrlFuse.Core.Images;

namespace PrlFuse.Core.Formats.Parallels;

/// <summary>
/// The write path of a Parallels expandable image that is the writable top of its chain: cluster allocation (the
/// space itself comes from a <see cref="DataAreaAllocator"/>), the order of data and BAT writes, and the clean close. Opened over its parent (<see cref="IParentContent"/>), whose
/// content fills the rest of a cluster written for the first time. Reading stays with <see cref="ExpandableImage"/>.
/// <para>
/// Locking. Readers never lock: a BAT entry is published (release) only after the data it points at is in the
/// file. Writers to an allocated cluster write in place with no lock. Allocating a cluster takes the cluster's
/// stripe lock (so racing writers on one cluster allocate it once and neither write is lost), reserves a slot at the
/// data end, fills the cluster (old content from the chain below plus the new bytes), writes it, then publishes the
/// entry. <see cref="_flushLock"/> is the one lock for the BAT's on-disk state: allocators hold it
/// shared from the data write to the publication, and <see cref="Flush"/> holds it exclusively, so every BAT entry
/// that reaches the disk points at data that was made durable (fdatasync) before it. A crash at any moment leaves at
/// worst leaked clusters.
/// </para>
/// </summary>
public sealed class ExpandableImageWriter : LayerWriter
{
    private const int StripeCount = 64;

    private readonly ExpandableImage _image;
    private readonly IParentContent _parent;
    private readonly ImageFile _file;
    private readonly BlockAllocationTable _bat;
    private readonly long _clusterBytes;
    private readonly object[] _stripes = CreateStripes();
    private readonly ReaderWriterLockSlim _flushLock = new(LockRecursionPolicy.NoRecursion);
    private readonly object _openLock = new();
    private byte[]? _dirtyBatPages;

    /// <summary>Where new clusters go; set by the first change (<see cref="EnsureOpenForWrite"/>).</summary>
    private DataAreaAllocator? _space;
    private bool _directWrites;
    private bool _openedForWrite;
    private bool _closed;
    private uint _closedInUse;

    /// <summary>Only <see cref="ExpandableImage"/> opens its writer, after it judged the image writable.</summary>
    internal ExpandableImageWriter(ExpandableImage image, IParentContent parent)
    {
        _image = image;
        _parent = parent;
        _file = image.File;
        _bat = image.Bat;
        _clusterBytes = image.ClusterBytes;
    }

    /// <summary>True once the first change was made (in_use is "Ynot" on disk until a clean close).</summary>
    public bool IsOpenForWrite => Volatile.Read(ref _openedForWrite);

    private static object[] CreateStripes()
    {
        var stripes = new object[StripeCount];
        for (int i = 0; i < stripes.Length; i++)
        {
            stripes[i] = new object();
        }

        return stripes;
    }

    /// <summary>
    /// Writes <paramref name="data"/> at guest <paramref name="guestOffset"/>, within one cluster. When the cluster is
    /// not allocated yet, the parent supplies the rest of it (the chain below, or zeros). Returns the host range
    /// written, for cache invalidation.
    /// </summary>
    public override (long Host, long Length) Write(long guestOffset, ReadOnlySpan<byte> data)
    {
        long cluster = guestOffset / _clusterBytes;
        int within = (int)(guestOffset - (cluster * _clusterBytes));
        if (cluster >= _bat.Count)
        {
            throw new IOException($"{_image.Path}: write beyond the image's {_bat.Count} clusters");
        }

        EnsureOpenForWrite();
        long host = _bat.GetHostOffset(cluster);
        if (host != 0)
        {
            WriteData(data, host + within, _space!.IsFresh(host));
            return (host + within, data.Length);
        }

        lock (_stripes[cluster % StripeCount])
        {
            host = _bat.GetHostOffset(cluster);
            if (host != 0)
            {
                WriteData(data, host + within, _space!.IsFresh(host));
                return (host + within, data.Length);
            }

            int clusterBytes = (int)_clusterBytes;
            byte[]? rented = null;
            _flushLock.EnterReadLock();
            try
            {
                host = _space!.Reserve();
                bool fresh = _space!.IsFresh(host);
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
                        long guest = cluster * _clusterBytes;
                        _parent.Read(full[..within], guest);
                        _parent.Read(full[after..], guest + after);
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
                    _space.Unreserve(host);
                    throw;
                }

                _bat.SetEntry(cluster, _bat.EntryForHostOffset(host));
                Volatile.Write(ref _dirtyBatPages![FieldLocations.BatPageOf(cluster)], 1);
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
    /// Discard of guest [guestOffset, + length) within one cluster. Part of a cluster is zeroed by a write (copy-on-write
    /// as any write). A whole cluster: when nothing below holds data there, its BAT entry goes to zero and its space is
    /// punched out of the file (the slot is never reused: new clusters go at the data end); when the chain below holds
    /// data, the cluster must keep hiding it, so it stays (or becomes) allocated over a host hole, which reads as zeros.
    /// Crash order as for writes: a new slot is punched (or zeroed) before its entry is published, so a BAT entry never
    /// points at old bytes; a dropped entry is written at the next flush, and until then points at the hole.
    /// </summary>
    public override DiscardOutcome Discard(long guestOffset, int length, bool wholeCluster, bool hideParent)
    {
        if (!wholeCluster)
        {
            var (written, bytes) = WriteZeros(guestOffset, length);
            return new DiscardOutcome(written, bytes, PunchUnsupported: false);
        }

        long cluster = guestOffset / _clusterBytes;
        if (cluster >= _bat.Count)
        {
            return default;
        }

        EnsureOpenForWrite();
        lock (_stripes[cluster % StripeCount])
        {
            _flushLock.EnterReadLock();
            try
            {
                long host = _bat.GetHostOffset(cluster);
                if (host != 0 && !hideParent)
                {
                    _bat.SetEntry(cluster, 0);
                    Volatile.Write(ref _dirtyBatPages![FieldLocations.BatPageOf(cluster)], 1);
                    return new DiscardOutcome(host, _clusterBytes, PunchUnsupported: !_file.TryPunchHole(host, _clusterBytes));
                }

                if (host != 0)
                {
                    return new DiscardOutcome(host, _clusterBytes, PunchUnsupported: !ZeroSlot(host, wasFresh: false));
                }

                if (!hideParent)
                {
                    return default;
                }

                host = _space!.Reserve();
                bool punched;
                try
                {
                    punched = ZeroSlot(host, _space.IsFresh(host));
                }
                catch
                {
                    _space.Unreserve(host);
                    throw;
                }

                _bat.SetEntry(cluster, _bat.EntryForHostOffset(host));
                Volatile.Write(ref _dirtyBatPages![FieldLocations.BatPageOf(cluster)], 1);
                return new DiscardOutcome(host, _clusterBytes, PunchUnsupported: !punched);
            }
            finally
            {
                _flushLock.ExitReadLock();
            }
        }
    }

    /// <summary>
    /// Makes the cluster slot at <paramref name="host"/> read as zeros: a hole where the file allows, else zeros written
    /// (not needed over fresh space, which reads as zeros). False when no hole could be punched.
    /// </summary>
    private bool ZeroSlot(long host, bool wasFresh)
    {
        if (_file.TryPunchHole(host, _clusterBytes))
        {
            return true;
        }

        if (!wasFresh)
        {
            WriteHostZeros(_file, host, _clusterBytes);
        }

        return false;
    }

    /// <summary>
    /// Writes into a cluster of this image. Fresh space (past the file's end when it was opened for writing, grown by
    /// this session) is written past the host page cache where the file allows it: those pages are not in the cache,
    /// and creating them (allocating and zeroing memory, in a VM often faulting it in from the hypervisor) cost more
    /// than the device write (README, Performance). Clusters that were there before
    /// are written through the page cache, which likely holds them.
    /// </summary>
    private void WriteData(ReadOnlySpan<byte> data, long host, bool fresh)
    {
        if (!(fresh && _directWrites && _file.TryWriteDirect(data, host)))
        {
            _file.Write(data, host);
        }
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
            _closedInUse = _image.Header.InUse;
            if (_image.Header.IsEmpty)
            {
                ClearForWrite();
            }

            ulong extOffset = RewriteExtensionForWrite();
            long clusterBytes = _clusterBytes;
            long usedEnd = Math.Max(_bat.UsedEnd(), _image.DataOffsetBytes);
            if (extOffset != 0)
            {
                usedEnd = Math.Max(usedEnd, ((long)extOffset * 512) + clusterBytes);
            }

            foreach (long end in BitmapClusterEnds())
            {
                usedEnd = Math.Max(usedEnd, end);
            }

            // Clusters sit at data_off + k * cluster; the next free one is the first such slot past everything used.
            long slots = (usedEnd - _image.DataOffsetBytes + clusterBytes - 1) / clusterBytes;
            _directWrites = _file.EnableDirectWrites();
            _space = new DataAreaAllocator(
                _file,
                clusterBytes,
                nextFree: _image.DataOffsetBytes + (slots * clusterBytes),
                limit: (uint.MaxValue + 1L) * _bat.UnitBytes,
                prefetch: !_directWrites);
            _dirtyBatPages = new byte[FieldLocations.BatPageCount(_bat.Count)];

            var opened = _image.Header with { InUse = ParallelsHeader.InUseOpen, ExtensionOffsetSectors = extOffset };
            WriteHeader(opened);
            _file.Flush(dataOnly: true);
            _image.ReplaceHeader(opened);
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
        for (int i = 0; i < _bat.Count; i++)
        {
            _bat.SetEntry(i, 0);
        }

        long batBytes = FieldLocations.BatEnd(_bat.Count) - FieldLocations.HeaderSize;
        var zeros = new byte[(int)Math.Min(batBytes, 1 << 20)];
        for (long done = 0; done < batBytes; done += zeros.Length)
        {
            _file.Write(zeros.AsSpan(0, (int)Math.Min(zeros.Length, batBytes - done)), FieldLocations.HeaderSize + done);
        }

        _file.Flush(dataOnly: true);

        // Only now: the BAT the reader then exposes is all zeros.
        _image.DropEmptyFlag();
    }

    private IEnumerable<long> BitmapClusterEnds()
    {
        if (_image.Extension?.DirtyBitmap is { } bitmap)
        {
            foreach (ulong e in bitmap.L1Table)
            {
                if (e > 1)
                {
                    yield return ((long)e * 512) + _clusterBytes;
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
        if (_image.Header.ExtensionOffsetSectors == 0)
        {
            return 0;
        }

        var ext = _image.Extension;
        if (ext is null || !ext.ChecksumValid)
        {
            return 0;
        }

        var keep = ext.Features.Where(f => !f.IsDirtyBitmap && (f.Flags & ExtensionFeature.FlagTransit) != 0).ToList();
        if (keep.Count == 0)
        {
            return 0;
        }

        int clusterBytes = (int)_clusterBytes;
        long offset = (long)_image.Header.ExtensionOffsetSectors * 512;
        byte[] old = new byte[clusterBytes];
        _file.ReadZeroFilled(old, offset);
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
        _file.Write(fresh, offset);
        return _image.Header.ExtensionOffsetSectors;
    }

    private void WriteHeader(ParallelsHeader header)
    {
        Span<byte> bytes = stackalloc byte[FieldLocations.HeaderSize];
        header.WriteTo(bytes);
        _file.Write(bytes, 0);
    }

    /// <summary>Makes every completed write durable: the data first, then the BAT entries that point at it.</summary>
    public override void Flush()
    {
        if (!Volatile.Read(ref _openedForWrite))
        {
            return;
        }

        _flushLock.EnterWriteLock();
        try
        {
            _file.Flush(dataOnly: true);
            var written = WriteDirtyBatPages();
            if (written.Count > 0)
            {
                try
                {
                    _file.Flush(dataOnly: true);
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
        byte[]? buffer = null;
        var written = new List<int>();
        for (int page = 0; page < dirty.Length; page++)
        {
            if (dirty[page] == 0)
            {
                continue;
            }

            var (first, count, start) = FieldLocations.BatPage(page, _bat.Count);
            buffer ??= new byte[FieldLocations.BatPageBytes];
            _bat.WriteEntries(buffer, first, count);
            _file.Write(buffer.AsSpan(0, count * FieldLocations.BatEntrySize), start);
            dirty[page] = 0;
            written.Add(page);
        }

        return written;
    }

    /// <summary>
    /// Clean close: flush, trim the file to its used end, restore in_use, make it durable. After this the image
    /// passes 'qemu-img check' with no leaks.
    /// </summary>
    public override void Close()
    {
        if (!Volatile.Read(ref _openedForWrite) || _closed)
        {
            return;
        }

        Flush();
        long usedEnd = Math.Max(_bat.UsedEnd(), _image.DataOffsetBytes);
        if (_image.Header.ExtensionOffsetSectors != 0)
        {
            usedEnd = Math.Max(usedEnd, ((long)_image.Header.ExtensionOffsetSectors * 512) + _clusterBytes);
        }

        _closed = true;
        _space!.Close(usedEnd);

        var closed = _image.Header with { InUse = _closedInUse };
        WriteHeader(closed);
        _image.ReplaceHeader(closed);
        _file.Flush(dataOnly: false);
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            try
            {
                Close();
            }
            finally
            {
                _space?.Stop();
                _flushLock.Dispose();
            }
        }
    }
}
