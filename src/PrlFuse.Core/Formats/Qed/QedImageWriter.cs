using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using PrlFuse.Core.IO;
using PrlFuse.Core.Images;

namespace PrlFuse.Core.Formats.Qed;

/// <summary>
/// The write path of a QED image that is the writable top of its chain. Opened over its parent
/// (<see cref="IParentContent"/>), whose content fills the rest of a cluster written for the first time (zeros for a
/// zero cluster). Reading stays with <see cref="QedImage"/>, which sees the tables changed here at once.
/// <para>
/// Order on disk, so that a crash at any moment leaves at worst leaked clusters: a new cluster (data, or a new L2
/// table) is placed at the end of the file; the L2 entry that maps a new data cluster is kept in memory until
/// <see cref="Flush"/>, which makes the data durable, then writes the changed L2 tables and makes them durable, then
/// writes the L1 entries of new tables and makes them durable. Before the first allocation after a flush the header's
/// need-check bit is set (and made durable), as the specification asks of a writer that allocates; a flush that leaves
/// the metadata consistent clears it again, and so does the clean close.
/// </para>
/// <para>
/// Locking. Writes into an allocated cluster go straight to the file with no lock. Allocations, table changes and
/// flushes hold <see cref="_lock"/>; an entry is published (in the table reads see) only after its data was written.
/// </para>
/// </summary>
public sealed class QedImageWriter : LayerWriter
{
    private readonly QedImage _image;
    private readonly IParentContent _parent;
    private readonly ImageFile _file;
    private readonly long _clusterBytes;
    private readonly Lock _lock = new();

    /// <summary>L1 indices whose L2 table changed since the last flush.</summary>
    private readonly SortedSet<long> _dirtyTables = [];

    /// <summary>L1 indices that point at a table new since the last flush.</summary>
    private readonly SortedSet<long> _dirtyL1 = [];
    private long _nextFree;
    private bool _opened;
    private bool _closed;

    internal QedImageWriter(QedImage image, IParentContent parent)
    {
        _image = image;
        _parent = parent;
        _file = image.File;
        _clusterBytes = image.ClusterBytes;
    }

    public override (long Host, long Length) Write(long guestOffset, ReadOnlySpan<byte> data)
    {
        if (guestOffset < 0 || guestOffset + data.Length > _image.VirtualSize)
        {
            throw new IOException($"{_image.Path}: write beyond the image's {_image.VirtualSize} bytes");
        }

        if (!Volatile.Read(ref _opened))
        {
            lock (_lock)
            {
                EnsureOpen();
            }
        }

        if (_image.TryMap(guestOffset, out long host, out _) && host >= 0)
        {
            _file.Write(data, host);
            return (host, data.Length);
        }

        lock (_lock)
        {
            EnsureOpen();
            bool mapped = _image.TryMap(guestOffset, out host, out _);
            if (mapped && host >= 0)
            {
                _file.Write(data, host);
                return (host, data.Length);
            }

            if (host == ImageLayer.DamagedHostOffset)
            {
                throw _image.DamagedRead(guestOffset);
            }

            bool zero = mapped && host == ImageLayer.ZeroHostOffset;
            var (table, index) = TableFor(guestOffset);
            int clusterBytes = (int)_clusterBytes;
            long guest = guestOffset & ~(_clusterBytes - 1);
            int within = (int)(guestOffset - guest);
            long slot = Reserve(_clusterBytes);
            try
            {
                if (data.Length == clusterBytes)
                {
                    _file.Write(data, slot);
                }
                else
                {
                    byte[] rented = ArrayPool<byte>.Shared.Rent(clusterBytes);
                    try
                    {
                        var full = rented.AsSpan(0, clusterBytes);
                        int after = within + data.Length;
                        if (zero)
                        {
                            full.Clear();
                        }
                        else
                        {
                            _parent.Read(full[..within], guest);
                            _parent.Read(full[after..], guest + after);
                        }

                        data.CopyTo(full[within..]);
                        _file.Write(full, slot);
                    }
                    finally
                    {
                        ArrayPool<byte>.Shared.Return(rented);
                    }
                }
            }
            catch
            {
                // The read below or the write failed (EIO, ENOSPC): the slot is given back when nothing follows it.
                Unreserve(slot, _clusterBytes);
                throw;
            }

            Volatile.Write(ref table[index], (ulong)slot);
            _dirtyTables.Add(guestOffset >> (_image.ClusterBits + _image.L2Bits));
            return (slot, clusterBytes);
        }
    }

    /// <summary>
    /// A whole cluster reads as zeros from now on: an allocated one is punched (or zeroed) in place, as QEMU zeroes
    /// allocated clusters in place (dropping it would leak it: QED has no free list); an unallocated one over data
    /// below becomes a zero cluster (entry 1). Part of a cluster is written with zeros (copy-on-write as any write).
    /// </summary>
    public override DiscardOutcome Discard(long guestOffset, int length, bool wholeCluster, bool hideParent)
    {
        if (!wholeCluster)
        {
            var (written, bytes) = WriteZeros(guestOffset, length);
            return new DiscardOutcome(written, bytes, PunchUnsupported: false);
        }

        lock (_lock)
        {
            EnsureOpen();
            bool mapped = _image.TryMap(guestOffset, out long host, out _);
            if (mapped && host >= 0)
            {
                long start = host & ~(_clusterBytes - 1);
                bool punched = _file.TryPunchHole(start, _clusterBytes);
                if (!punched)
                {
                    WriteHostZeros(_file, start, _clusterBytes);
                }

                return new DiscardOutcome(start, _clusterBytes, PunchUnsupported: !punched);
            }

            if (host == ImageLayer.DamagedHostOffset)
            {
                throw _image.DamagedRead(guestOffset);
            }

            if (mapped || !hideParent)
            {
                // Already a zero cluster, or unallocated over nothing: it reads as zeros as it is.
                return default;
            }

            EnsureOpen();
            var (table, index) = TableFor(guestOffset);
            Volatile.Write(ref table[index], FieldLocations.ZeroCluster);
            _dirtyTables.Add(guestOffset >> (_image.ClusterBits + _image.L2Bits));
            return default;
        }
    }

    /// <summary>The L2 table that maps <paramref name="guestOffset"/> and the entry's index in it; a new table is placed at the end of the file.</summary>
    private (ulong[] Table, int Index) TableFor(long guestOffset)
    {
        long l1Index = guestOffset >> (_image.ClusterBits + _image.L2Bits);
        int index = (int)((guestOffset >> _image.ClusterBits) & ((1L << _image.L2Bits) - 1));
        long entry = _image.L1Entry(l1Index);
        if (entry < 0)
        {
            throw _image.DamagedRead(guestOffset);
        }

        if (entry > 0)
        {
            return (_image.PinTable(l1Index), index);
        }

        long tableBytes = _image.Header.TableBytes;
        long offset = Reserve(tableBytes);
        ulong[] table = new ulong[_image.Header.TableEntries];
        _image.PublishL2(l1Index, offset, table);
        _dirtyTables.Add(l1Index);
        _dirtyL1.Add(l1Index);
        return (table, index);
    }

    /// <summary>Space for <paramref name="bytes"/> at the end of the file; the first allocation since a flush sets need-check.</summary>
    private long Reserve(long bytes)
    {
        SetNeedCheck();

        // A damaged entry past the old end of the file points where the file now grows: that cluster is left as a hole,
        // so the entry stays damaged and never maps a cluster that belongs to another.
        for (long cluster = _nextFree; cluster < _nextFree + bytes; cluster += _clusterBytes)
        {
            if (_image.IsDamagedDataCluster(cluster))
            {
                _nextFree = cluster + _clusterBytes;
            }
        }

        long slot = _nextFree;
        _nextFree += bytes;
        _image.GrowFileLength(_nextFree);
        return slot;
    }

    private void Unreserve(long slot, long bytes)
    {
        if (_nextFree == slot + bytes)
        {
            _nextFree = slot;
        }
    }

    /// <summary>
    /// Before the first change: clear autoclear bits we do not know (as the specification says), find the end of the
    /// file, and the data clusters two entries share or that lie past the end (they become damaged, so no write goes
    /// through them and no allocation lands on them).
    /// </summary>
    private void EnsureOpen()
    {
        if (_opened)
        {
            return;
        }

        var header = _image.Header;
        if (header.AutoclearFeatures != 0)
        {
            WriteHeader(header with { AutoclearFeatures = 0 });
            _file.Flush(dataOnly: true);
        }

        // New clusters go past everything in the file, on a cluster boundary.
        _nextFree = (_file.Length + _clusterBytes - 1) & ~(_clusterBytes - 1);
        _image.FindDamagedDataClusters();
        Volatile.Write(ref _opened, true);
    }

    private void SetNeedCheck()
    {
        var header = _image.Header;
        if (!header.NeedsCheck)
        {
            WriteHeader(header with { Features = header.Features | FieldLocations.FeatureNeedCheck });
            _file.Flush(dataOnly: true);
        }
    }

    private void WriteHeader(QedHeader header)
    {
        Span<byte> bytes = stackalloc byte[FieldLocations.HeaderBytes];
        header.WriteTo(bytes);
        _file.Write(bytes, 0);
        _image.ReplaceHeader(header);
    }

    /// <summary>Makes every completed write durable: the data, then the L2 tables that map it, then the L1 entries of new tables.</summary>
    public override void Flush()
    {
        lock (_lock)
        {
            if (!_opened)
            {
                return;
            }

            _file.Flush(dataOnly: true);
            if (_dirtyTables.Count > 0)
            {
                byte[] buffer = new byte[_image.Header.TableBytes];
                foreach (long l1Index in _dirtyTables)
                {
                    var table = _image.PinTable(l1Index);
                    for (int i = 0; i < table.Length; i++)
                    {
                        BinaryPrimitives.WriteUInt64LittleEndian(buffer.AsSpan(i * FieldLocations.EntrySize), Volatile.Read(ref table[i]));
                    }

                    _file.Write(buffer, _image.L1Entry(l1Index));
                }

                _file.Flush(dataOnly: true);
                _dirtyTables.Clear();
            }

            if (_dirtyL1.Count > 0)
            {
                Span<byte> entry = stackalloc byte[FieldLocations.EntrySize];
                foreach (long l1Index in _dirtyL1)
                {
                    BinaryPrimitives.WriteUInt64LittleEndian(entry, (ulong)_image.L1Entry(l1Index));
                    _file.Write(entry, _image.Header.L1TableOffset + (l1Index * FieldLocations.EntrySize));
                }

                _file.Flush(dataOnly: true);
                _dirtyL1.Clear();
            }

            if (_image.Header.NeedsCheck)
            {
                // Everything the tables point at is durable, and so are the tables: nothing is left to check.
                WriteHeader(_image.Header with { Features = _image.Header.Features & ~FieldLocations.FeatureNeedCheck });
                _file.Flush(dataOnly: true);
            }
        }
    }

    /// <summary>Clean close: everything durable and need-check cleared. Idempotent.</summary>
    public override void Close()
    {
        if (_closed)
        {
            return;
        }

        Flush();
        _closed = true;
    }
}
