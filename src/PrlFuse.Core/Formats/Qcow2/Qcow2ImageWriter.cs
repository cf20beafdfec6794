using System.Buffers;
using System.Buffers.Binary;
using PrlFuse.Core.IO;
using PrlFuse.Core.Images;

namespace PrlFuse.Core.Formats.Qcow2;

/// <summary>
/// The write path of a qcow2 image that is the writable top of its chain. A write into a standard cluster whose
/// refcount is one (COPIED) goes in place, without a lock. Anything else is done under one lock: a new cluster from the
/// end of the image (<see cref="Qcow2Refcounts"/>), filled with what the guest saw there before (the chain below, the
/// zeros of a zero cluster, the old cluster when it is shared with an internal snapshot, a compressed cluster
/// decompressed; with extended L2 entries only the subclusters written), then the L2 entry changed in memory, where
/// reads see it at once.
/// <para>
/// With an external data file, guest data goes there at its guest offset (not refcounted), metadata to the image.
/// Order on disk, as QEMU's: <see cref="Flush"/> makes the data and the refcounts durable, then writes the changed L2
/// tables and makes them durable, then the changed L1 entries, and only then lowers the refcounts of the clusters the
/// flushed entries stopped using. A crash at any moment leaves at worst clusters counted and not used (leaks). Nothing
/// is written into a cluster that is shared or not yet counted, and freed clusters are never reused in a session.
/// </para>
/// </summary>
public sealed class Qcow2ImageWriter : LayerWriter
{
    private readonly Qcow2Image _image;
    private readonly IParentContent _parent;
    private readonly ImageFile _file;

    /// <summary>Where guest data goes: the image file, or its external data file (where the host offset is the guest offset).</summary>
    private readonly ImageFile _data;
    private readonly bool _external;

    /// <summary>The external data file must read as the guest disk by itself: zeros are written there, never only noted.</summary>
    private readonly bool _rawExternal;
    private readonly int _clusterBits;
    private readonly long _clusterBytes;
    private readonly int _l2Bits;
    private readonly bool _extended;
    private readonly int _entryWords;
    private readonly int _subclusterBits;
    private readonly ulong[] _l1Raw;
    private readonly Lock _lock = new();
    private readonly SortedSet<long> _dirtyL2 = [];
    private readonly SortedSet<long> _dirtyL1 = [];

    /// <summary>Host ranges whose refcount drops once the entries that stopped using them are durable.</summary>
    private readonly List<(long Host, long Length)> _pendingFrees = [];
    private Qcow2Refcounts? _refcounts;
    private bool _opened;

    /// <summary>Only <see cref="Qcow2Image"/> opens its writer, after it judged the image writable.</summary>
    internal Qcow2ImageWriter(Qcow2Image image, IParentContent parent)
    {
        _image = image;
        _parent = parent;
        _file = image.File;
        _data = image.DataFile;
        var header = image.Header;
        _external = header.HasDataFile;
        _rawExternal = header.HasDataFile && header.IsDataFileRaw;
        _clusterBits = header.ClusterBits;
        _clusterBytes = header.ClusterBytes;
        _extended = header.HasExtendedL2;
        _entryWords = _extended ? 2 : 1;
        _l2Bits = System.Numerics.BitOperations.Log2((ulong)header.L2Entries);
        _subclusterBits = _clusterBits - 5;
        _l1Raw = new ulong[image.L1Offsets.Length];
        byte[] raw = new byte[_l1Raw.Length * FieldLocations.L1EntrySize];
        _file.ReadZeroFilled(raw, header.L1TableOffset);
        for (int i = 0; i < _l1Raw.Length; i++)
        {
            _l1Raw[i] = BinaryPrimitives.ReadUInt64BigEndian(raw.AsSpan(i * FieldLocations.L1EntrySize));
        }
    }

    public override (long Host, long Length) Write(long guestOffset, ReadOnlySpan<byte> data)
    {
        long cluster = guestOffset >> _clusterBits;
        int within = (int)(guestOffset & (_clusterBytes - 1));
        if (data.Length == 0)
        {
            return (0, 0);
        }

        if (Volatile.Read(ref _opened) && InPlaceHost(cluster, within, data.Length) is >= 0 and long inPlace)
        {
            _data.Write(data, inPlace + within);
            return (inPlace + within, data.Length);
        }

        lock (_lock)
        {
            EnsureOpen();
            return WriteLocked(cluster, within, data);
        }
    }

    /// <summary>The host cluster a write may go into in place (its own, refcount one, the bytes allocated), or -1.</summary>
    private long InPlaceHost(long cluster, int within, int length)
    {
        long l1Index = cluster >> _l2Bits;
        ulong l1Entry = Volatile.Read(ref _l1Raw[l1Index]);
        if ((l1Entry & FieldLocations.CopiedFlag) == 0 || _image.ActiveL2(l1Index) is not { } table)
        {
            return -1;
        }

        int i = (int)(cluster & ((1L << _l2Bits) - 1)) * _entryWords;
        ulong entry = Volatile.Read(ref table[i]);
        long host = (long)(entry & FieldLocations.OffsetMask);
        if ((entry & (FieldLocations.CopiedFlag | FieldLocations.CompressedFlag)) != FieldLocations.CopiedFlag || !_image.HasCluster(entry) || (host & (_clusterBytes - 1)) != 0)
        {
            return -1;
        }

        if (!_extended)
        {
            return (entry & FieldLocations.ZeroFlag) == 0 ? host : -1;
        }

        uint allocated = (uint)Volatile.Read(ref table[i + 1]);
        uint needed = Subclusters(within, length);
        return (allocated & needed) == needed ? host : -1;
    }

    /// <summary>The bits of the subclusters that bytes [within, within + length) of a cluster touch.</summary>
    private uint Subclusters(int within, int length)
    {
        int first = within >> _subclusterBits;
        int last = (within + length - 1) >> _subclusterBits;
        return (uint)((ulong.MaxValue >> (63 - last)) & ~((1UL << first) - 1));
    }

    private (long Host, long Length) WriteLocked(long cluster, int within, ReadOnlySpan<byte> data)
    {
        long l1Index = cluster >> _l2Bits;
        var table = WritableL2(l1Index);
        int i = (int)(cluster & ((1L << _l2Bits) - 1)) * _entryWords;
        ulong entry = table[i];
        var refcounts = _refcounts!;
        if ((entry & FieldLocations.CompressedFlag) != 0)
        {
            if (_external)
            {
                // The format has no compressed clusters beside an external data file: where would their bytes be?
                throw new DamagedClusterException(_image.Path, cluster, "it is a compressed cluster in an image with an external data file, which the format does not allow", "run 'qemu-img check' on the image");
            }

            return WriteOverCompressed(table, i, cluster, entry, within, data);
        }

        long old = (long)(entry & FieldLocations.OffsetMask);
        bool hasOld = _image.HasCluster(entry);

        // Clusters of an external data file are not refcounted: each belongs to its guest cluster alone.
        bool own = hasOld && (_external || (entry & FieldLocations.CopiedFlag) != 0 || refcounts.Get(old) == 1);
        if (_extended)
        {
            return WriteSubclusters(table, i, cluster, old, hasOld, own, within, data);
        }

        bool zero = (entry & FieldLocations.ZeroFlag) != 0;
        if (own && !zero)
        {
            _data.Write(data, old + within);
            if ((entry & FieldLocations.CopiedFlag) == 0)
            {
                Publish(table, i, l1Index, entry | FieldLocations.CopiedFlag, 0);
            }

            return (old + within, data.Length);
        }

        // A whole cluster to write: over zeros, over a cluster shared with a snapshot, or over what the chain below holds.
        long host = own ? old : NewCluster(cluster);
        long guest = cluster << _clusterBits;
        int after = within + data.Length;
        WholeCluster(host, within, data, full =>
        {
            if (zero)
            {
                full.Clear();
            }
            else if (hasOld)
            {
                _data.ReadZeroFilled(full, old);
            }
            else
            {
                _parent.Read(full[..within], guest);
                _parent.Read(full[after..], guest + after);
            }
        });
        if (hasOld && host != old)
        {
            _pendingFrees.Add((old, _clusterBytes));
        }

        Publish(table, i, l1Index, (ulong)host | FieldLocations.CopiedFlag, 0);
        return (host, _clusterBytes);
    }

    /// <summary>A host cluster for guest cluster <paramref name="cluster"/>: counted at the image's end, or its fixed place in the external data file.</summary>
    private long NewCluster(long cluster) => _external ? cluster << _clusterBits : _refcounts!.Allocate();

    /// <summary>Writes cluster <paramref name="host"/> whole: <paramref name="fill"/> gives what is not written now.</summary>
    private void WholeCluster(long host, int within, ReadOnlySpan<byte> data, SpanAction fill)
    {
        if (data.Length == _clusterBytes)
        {
            _data.Write(data, host);
            return;
        }

        byte[] rented = ArrayPool<byte>.Shared.Rent((int)_clusterBytes);
        try
        {
            var full = rented.AsSpan(0, (int)_clusterBytes);
            fill(full);
            data.CopyTo(full[within..]);
            _data.Write(full, host);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(rented);
        }
    }

    private delegate void SpanAction(Span<byte> span);

    /// <summary>A compressed cluster becomes a standard one (never written compressed): decompressed, changed, written whole.</summary>
    private (long Host, long Length) WriteOverCompressed(ulong[] table, int i, long cluster, ulong entry, int within, ReadOnlySpan<byte> data)
    {
        byte[]? content = data.Length == _clusterBytes ? null : _image.DecompressedCluster(cluster);
        long host = _refcounts!.Allocate();
        WholeCluster(host, within, data, full => content.AsSpan().CopyTo(full));

        // The host sectors the compressed data occupies, as QEMU counts them.
        int x = 62 - (_clusterBits - 8);
        long offset = (long)(entry & ((1UL << x) - 1));
        long sectors = (long)((entry >> x) & ((1UL << (62 - x)) - 1)) + 1;
        _pendingFrees.Add((offset & ~511L, sectors * 512));
        Publish(table, i, cluster >> _l2Bits, (ulong)host | FieldLocations.CopiedFlag, _extended ? uint.MaxValue : 0UL);
        return (host, _clusterBytes);
    }

    /// <summary>
    /// With extended L2 entries: a cluster that is shared is copied first; then each subcluster written that was not
    /// allocated is written whole (the rest of it zeros, or the chain below), the others in place.
    /// </summary>
    private (long Host, long Length) WriteSubclusters(ulong[] table, int i, long cluster, long old, bool hasOld, bool own, int within, ReadOnlySpan<byte> data)
    {
        ulong bitmap = table[i + 1];
        uint allocated = (uint)bitmap;
        uint zero = (uint)(bitmap >> 32);
        long host = old;
        bool copied = false;
        if (hasOld && !own)
        {
            host = _refcounts!.Allocate();
            byte[] rented = ArrayPool<byte>.Shared.Rent((int)_clusterBytes);
            try
            {
                _data.ReadZeroFilled(rented.AsSpan(0, (int)_clusterBytes), old);
                _data.Write(rented.AsSpan(0, (int)_clusterBytes), host);
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(rented);
            }

            _pendingFrees.Add((old, _clusterBytes));
            copied = true;
        }
        else if (!hasOld)
        {
            host = NewCluster(cluster);
        }

        int subBytes = 1 << _subclusterBits;
        int first = within >> _subclusterBits;
        int last = (within + data.Length - 1) >> _subclusterBits;
        long guest = cluster << _clusterBits;
        int end = within + data.Length;
        for (int s = first; s <= last;)
        {
            bool isAllocated = (allocated & (1u << s)) != 0;
            int runEnd = s;
            while (runEnd < last && ((allocated & (1u << (runEnd + 1))) != 0) == isAllocated)
            {
                runEnd++;
            }

            int runStart = s << _subclusterBits;
            int runStop = (runEnd + 1) << _subclusterBits;
            int from = Math.Max(runStart, within);
            int to = Math.Min(runStop, end);
            if (isAllocated)
            {
                _data.Write(data[(from - within)..(to - within)], host + from);
            }
            else
            {
                byte[] rented = ArrayPool<byte>.Shared.Rent(runStop - runStart);
                try
                {
                    var run = rented.AsSpan(0, runStop - runStart);
                    for (int k = s; k <= runEnd; k++)
                    {
                        var piece = run.Slice((k - s) * subBytes, subBytes);
                        if ((zero & (1u << k)) != 0)
                        {
                            piece.Clear();
                        }
                        else
                        {
                            _parent.Read(piece, guest + ((long)k << _subclusterBits));
                        }
                    }

                    data[(from - within)..(to - within)].CopyTo(run[(from - runStart)..]);
                    _data.Write(run, host + runStart);
                }
                finally
                {
                    ArrayPool<byte>.Shared.Return(rented);
                }
            }

            s = runEnd + 1;
        }

        uint touched = Subclusters(within, data.Length);
        ulong newBitmap = (allocated | touched) | ((ulong)(zero & ~touched) << 32);
        Publish(table, i, cluster >> _l2Bits, (ulong)host | FieldLocations.CopiedFlag, newBitmap);
        return copied || !hasOld ? (host, _clusterBytes) : (host + (first << _subclusterBits), (last - first + 1) << _subclusterBits);
    }

    /// <summary>
    /// Discard of guest [guestOffset, + length) within one cluster. Part of a cluster is zeroed by a write (as any
    /// write). A whole cluster drops its host cluster (freed after the next flush, as any cluster an entry stops
    /// using): it becomes unallocated when nothing below holds data there, else it reads as zeros (a zero cluster, or
    /// all subclusters zero); an image of version 2, which has no zero clusters, gets zeros written instead, and so does
    /// an image whose raw external data file must read as the guest disk by itself.
    /// </summary>
    public override DiscardOutcome Discard(long guestOffset, int length, bool wholeCluster, bool hideParent)
    {
        if (!wholeCluster || (hideParent && _image.Header.Version < 3) || _rawExternal)
        {
            var (written, bytes) = WriteZeros(guestOffset, length);
            return new DiscardOutcome(written, bytes, PunchUnsupported: false);
        }

        long cluster = guestOffset >> _clusterBits;
        long l1Index = cluster >> _l2Bits;
        lock (_lock)
        {
            if (_l1Raw[l1Index] == 0 && !hideParent)
            {
                return default;
            }

            EnsureOpen();
            var table = WritableL2(l1Index);
            int i = (int)(cluster & ((1L << _l2Bits) - 1)) * _entryWords;
            ulong entry = table[i];
            long old;
            if ((entry & FieldLocations.CompressedFlag) != 0)
            {
                int x = 62 - (_clusterBits - 8);
                long offset = (long)(entry & ((1UL << x) - 1));
                long sectors = (long)((entry >> x) & ((1UL << (62 - x)) - 1)) + 1;
                _pendingFrees.Add((offset & ~511L, sectors * 512));
                old = 0;
            }
            else
            {
                old = (long)(entry & FieldLocations.OffsetMask);
                if (_image.HasCluster(entry) && !_external)
                {
                    _pendingFrees.Add((old, _clusterBytes));
                }
            }

            ulong zeroEntry = hideParent && !_extended ? FieldLocations.ZeroFlag : 0;
            ulong zeroBitmap = hideParent ? (ulong)uint.MaxValue << 32 : 0;
            // The bitmap first: a reader in between sees the old cluster with every subcluster zero, never allocated
            // subclusters without a cluster.
            if (_extended)
            {
                Volatile.Write(ref table[i + 1], zeroBitmap);
            }

            bool dropped = (entry & FieldLocations.CompressedFlag) == 0 && _image.HasCluster(entry);
            Volatile.Write(ref table[i], zeroEntry);
            _dirtyL2.Add(l1Index);
            return new DiscardOutcome(old, dropped ? _clusterBytes : 0, PunchUnsupported: false);
        }
    }

    /// <summary>
    /// Changes an L2 entry in memory, where reads find it: the cluster word first, then the subcluster bitmap, so a
    /// reader in between sees the new cluster with the old allocation (which the new cluster also holds).
    /// </summary>
    private void Publish(ulong[] table, int i, long l1Index, ulong entry, ulong bitmap)
    {
        Volatile.Write(ref table[i], entry);
        if (_extended)
        {
            Volatile.Write(ref table[i + 1], bitmap);
        }

        _dirtyL2.Add(l1Index);
    }

    /// <summary>
    /// The L2 table of <paramref name="l1Index"/>, ready to change: a new one when there is none, a copy when it is
    /// shared with an internal snapshot (its refcount above one), else the image's own, pinned.
    /// </summary>
    private ulong[] WritableL2(long l1Index)
    {
        ulong l1Entry = _l1Raw[l1Index];
        long offset = (long)(l1Entry & FieldLocations.OffsetMask);
        if (offset != 0 && (l1Entry & FieldLocations.CopiedFlag) == 0 && _refcounts!.Get(offset) == 1)
        {
            SetL1(l1Index, (ulong)offset | FieldLocations.CopiedFlag);
            l1Entry = _l1Raw[l1Index];
        }

        if (offset != 0 && (l1Entry & FieldLocations.CopiedFlag) != 0)
        {
            return _image.PinL2(l1Index, offset);
        }

        ulong[] table = offset == 0 ? new ulong[_clusterBytes / 8] : (ulong[])_image.PinL2(l1Index, offset).Clone();
        long host = _refcounts!.Allocate();
        _image.PinL2(l1Index, host, table);
        if (offset != 0)
        {
            _pendingFrees.Add((offset, _clusterBytes));
        }

        SetL1(l1Index, (ulong)host | FieldLocations.CopiedFlag);
        Volatile.Write(ref _image.L1Offsets[l1Index], host);
        _dirtyL2.Add(l1Index);
        return table;
    }

    private void SetL1(long l1Index, ulong entry)
    {
        Volatile.Write(ref _l1Raw[l1Index], entry);
        _dirtyL1.Add(l1Index);
    }

    /// <summary>
    /// Before the first change: the autoclear bits go (the bitmaps they vouch for are not kept up to date here; the
    /// spec asks a writer that does not update them to clear them), durably, and the refcounts are read.
    /// </summary>
    private void EnsureOpen()
    {
        if (_opened)
        {
            return;
        }

        var header = _image.Header;
        ulong keep = header.AutoclearFeatures & Qcow2Header.AutoclearDataFileRaw;
        if (header.Version >= 3 && header.AutoclearFeatures != keep)
        {
            Span<byte> bits = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64BigEndian(bits, keep);
            _file.Write(bits, FieldLocations.AutoclearFeatures);
            _file.Flush(dataOnly: true);
            _image.ReplaceHeader(header with { AutoclearFeatures = keep });
        }

        _refcounts = new Qcow2Refcounts(_file, _image.Header)
        {
            TableMoved = (offset, clusters) => _image.ReplaceHeader(_image.Header with { RefcountTableOffset = offset, RefcountTableClusters = (uint)clusters }),
        };
        Volatile.Write(ref _opened, true);
    }

    /// <summary>
    /// Makes every completed write durable, in QEMU's order: data and refcounts, then L2 tables, then L1 entries; then
    /// the refcounts of clusters no longer used drop.
    /// </summary>
    public override void Flush()
    {
        if (!Volatile.Read(ref _opened))
        {
            return;
        }

        lock (_lock)
        {
            if (_external)
            {
                _data.Flush(dataOnly: true);
            }

            _file.Flush(dataOnly: true);
            if (_dirtyL2.Count > 0)
            {
                byte[] buffer = new byte[_clusterBytes];
                foreach (long l1Index in _dirtyL2)
                {
                    var table = _image.ActiveL2(l1Index)!;
                    for (int j = 0; j < table.Length; j++)
                    {
                        BinaryPrimitives.WriteUInt64BigEndian(buffer.AsSpan(j * 8), Volatile.Read(ref table[j]));
                    }

                    _file.Write(buffer, (long)(_l1Raw[l1Index] & FieldLocations.OffsetMask));
                }

                _file.Flush(dataOnly: true);
                _dirtyL2.Clear();
            }

            if (_dirtyL1.Count > 0)
            {
                Span<byte> entry = stackalloc byte[FieldLocations.L1EntrySize];
                foreach (long l1Index in _dirtyL1)
                {
                    BinaryPrimitives.WriteUInt64BigEndian(entry, _l1Raw[l1Index]);
                    _file.Write(entry, _image.Header.L1TableOffset + (l1Index * FieldLocations.L1EntrySize));
                }

                _file.Flush(dataOnly: true);
                _dirtyL1.Clear();
            }

            if (_pendingFrees.Count > 0)
            {
                foreach (var (host, length) in _pendingFrees)
                {
                    _refcounts!.Add(host, length, -1);
                }

                _pendingFrees.Clear();
            }
        }
    }

    /// <summary>Clean close: everything durable. qcow2 keeps no open mark, so nothing else changes.</summary>
    public override void Close()
    {
        if (!Volatile.Read(ref _opened))
        {
            return;
        }

        Flush();
        lock (_lock)
        {
            if (_external)
            {
                _data.Flush(dataOnly: false);
            }

            _file.Flush(dataOnly: false);
        }
    }
}
