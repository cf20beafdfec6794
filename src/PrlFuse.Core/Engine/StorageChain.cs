using PrlFuse.Core.IO;
using PrlFuse.Core.Images;

namespace PrlFuse.Core.Engine;

/// <summary>
/// One storage of one snapshot: its chain of layers, top first, root last. A guest byte comes from the first
/// layer that has its cluster allocated, else it is zero. Layers may have different cluster sizes, so a run of
/// the same answer ends at the nearest cluster boundary of any layer asked.
/// </summary>
public sealed class StorageChain
{
    private readonly ImageLayer[] _layers;
    private readonly BlockCache? _cache;
    private readonly LayerWriter? _writer;

    // A layer that may answer "zeros here" hides the data below without holding data itself: finding data and holes
    // then follows each offset's answer through the chain instead of taking allocation layer by layer.
    private readonly bool _zerosHide;

    // Which layer answers where, for chains deep enough that walking the layers per cluster costs; null otherwise.
    private readonly MergedMap? _map;

    /// <summary>Chains of at least this many layers resolve through a <see cref="MergedMap"/> instead of walking their layers.</summary>
    internal const int MergedMapMinDepth = 4;

    /// <summary>
    /// A chain over <paramref name="layers"/> (top first). <paramref name="writable"/>: the top is opened for writing
    /// over the content of the layers below it (<see cref="ImageLayer.OpenWriter"/>); the top layer owns that writer.
    /// </summary>
    internal StorageChain(int storageIndex, long startBytes, long lengthBytes, ImageLayer[] layers, BlockCache? cache, bool writable)
    {
        StorageIndex = storageIndex;
        StartBytes = startBytes;
        LengthBytes = lengthBytes;
        _layers = layers;
        _cache = cache;
        _zerosHide = layers.Any(l => l.MayHoldZeros);
        _map = layers.Length >= MergedMapMinDepth ? MergedMap.Create(layers, lengthBytes) : null;
        if (writable)
        {
            _writer = layers[0].OpenWriter(new BelowTop(this));
        }
    }

    public int StorageIndex { get; }

    /// <summary>Where this storage starts on the guest disk.</summary>
    public long StartBytes { get; }

    public long LengthBytes { get; }

    /// <summary>The layers, top first.</summary>
    public IReadOnlyList<ImageLayer> Layers => _layers;

    public ImageLayer TopLayer => _layers[0];

    /// <summary>
    /// Finds who holds <paramref name="offset"/>: the index of the layer (or -1 for none) and its host offset,
    /// with the number of bytes (at most <paramref name="limit"/>) that keep the same answer.
    /// </summary>
    public int Resolve(long offset, long limit, out long hostOffset, out long run) => Resolve(0, offset, limit, out hostOffset, out run);

    private int Resolve(int firstLayer, long offset, long limit, out long hostOffset, out long run)
    {
        if (firstLayer == 0 && _map is { } map)
        {
            int owner = map.OwnerOf(offset, limit, out long sameUntil);
            if (owner != MergedMap.Mixed)
            {
                // Every layer above the owner misses up to sameUntil: only the owner is asked.
                limit = Math.Min(limit, sameUntil - offset);
                if (owner == MergedMap.None)
                {
                    hostOffset = 0;
                    run = limit;
                    return -1;
                }

                _layers[owner].TryMap(offset, out hostOffset, out long ownerRun);
                run = Math.Min(limit, ownerRun);
                return owner;
            }
        }

        return Walk(firstLayer, offset, limit, out hostOffset, out run);
    }

    /// <summary><see cref="Resolve(int, long, long, out long, out long)"/> by asking each layer from <paramref name="firstLayer"/> down in turn.</summary>
    internal int Walk(int firstLayer, long offset, long limit, out long hostOffset, out long run)
    {
        for (int i = firstLayer; i < _layers.Length; i++)
        {
            bool hit = _layers[i].TryMap(offset, out hostOffset, out long layerRun);
            limit = Math.Min(limit, layerRun);
            if (hit)
            {
                run = limit;
                return i;
            }
        }

        hostOffset = 0;
        run = limit;
        return -1;
    }

    /// <summary>
    /// Appends to <paramref name="pieces"/> (from index <paramref name="count"/>) where guest bytes [offset, offset + length)
    /// of this storage live, without reading them; adjacent pieces of one file that are contiguous in it, and adjacent
    /// zero pieces, are merged. Bytes past the end of a host file are zeros (as <see cref="Read(Span{byte}, long)"/>
    /// reads them). Returns false when <paramref name="pieces"/> is full before the range is covered.
    /// </summary>
    public bool MapRange(long offset, int length, Span<HostPiece> pieces, ref int count)
    {
        int pos = 0;
        while (pos < length)
        {
            int layer = Resolve(0, offset + pos, length - pos, out long host, out long run);
            int n = (int)run;
            if (host < 0)
            {
                if (host == ImageLayer.OwnReadHostOffset)
                {
                    // Bytes the layer reads itself (compressed) are in no file: the caller reads the range instead.
                    return false;
                }

                if (host != ImageLayer.ZeroHostOffset)
                {
                    throw Damaged(layer, offset + pos);
                }

                layer = -1;
            }

            if (layer < 0)
            {
                if (!Append(pieces, ref count, null, 0, n))
                {
                    return false;
                }
            }
            else
            {
                var file = _layers[layer].DataFile;
                int inFile = (int)Math.Clamp(file.Length - host, 0, n);
                if ((inFile > 0 && !Append(pieces, ref count, file, host, inFile))
                    || (inFile < n && !Append(pieces, ref count, null, 0, n - inFile)))
                {
                    return false;
                }
            }

            pos += n;
        }

        return true;
    }

    /// <summary>A layer holds the cluster at <paramref name="offset"/> but its mapping is damaged (see ImageLayer.DamagedHostOffset).</summary>
    private DamagedClusterException Damaged(int layer, long offset) => _layers[layer].DamagedRead(offset);

    private static bool Append(Span<HostPiece> pieces, ref int count, ImageFile? file, long host, int length)
    {
        if (count > 0)
        {
            ref var last = ref pieces[count - 1];
            if (last.File == file && (file is null || last.HostOffset + last.Length == host))
            {
                last = last with { Length = last.Length + length };
                return true;
            }
        }

        if (count == pieces.Length)
        {
            return false;
        }

        pieces[count++] = new HostPiece(file, host, length);
        return true;
    }

    /// <summary>Reads guest bytes [offset, offset + destination.Length) of this storage (offset relative to it).</summary>
    public void Read(Span<byte> destination, long offset) => Read(0, destination, offset);

    private void Read(int firstLayer, Span<byte> destination, long offset)
    {
        // Adjacent pieces from the same layer and contiguous in its file are read with one call.
        int pendingLayer = -1;
        long pendingHost = 0;
        int pendingStart = 0;
        int pendingLength = 0;
        int pos = 0;
        while (pos < destination.Length)
        {
            int layer = Resolve(firstLayer, offset + pos, destination.Length - pos, out long host, out long run);
            int n = (int)run;
            if (host < 0)
            {
                if (host == ImageLayer.ZeroHostOffset)
                {
                    layer = -1;
                }
                else if (host == ImageLayer.OwnReadHostOffset)
                {
                    _layers[layer].ReadOwn(destination.Slice(pos, n), offset + pos);
                    layer = -2;
                }
                else
                {
                    throw Damaged(layer, offset + pos);
                }
            }

            if (layer >= 0 && layer == pendingLayer && host == pendingHost + pendingLength)
            {
                pendingLength += n;
            }
            else
            {
                if (pendingLayer >= 0)
                {
                    ReadHost(_layers[pendingLayer], destination.Slice(pendingStart, pendingLength), pendingHost);
                }

                // A range the layer read itself (-2) is done; zeros (-1) are written here; a file range waits.
                pendingLayer = layer;
                pendingHost = host;
                pendingStart = pos;
                pendingLength = n;
                if (layer == -1)
                {
                    destination.Slice(pos, n).Clear();
                }
            }

            pos += n;
        }

        if (pendingLayer >= 0)
        {
            ReadHost(_layers[pendingLayer], destination.Slice(pendingStart, pendingLength), pendingHost);
        }
    }

    /// <summary>
    /// Writes guest bytes into the top layer (offset relative to this storage), one top cluster at a time: the top's
    /// writer allocates as needed and fills a new cluster from the layers below itself (see <see cref="BelowTop"/>).
    /// </summary>
    public void Write(ReadOnlySpan<byte> source, long offset)
    {
        var writer = _writer ?? throw new IOException($"{TopLayer.Path}: image is read-only");
        var top = _layers[0];
        long clusterBytes = top.ClusterBytes;
        int pos = 0;
        while (pos < source.Length)
        {
            long guest = offset + pos;
            int n = (int)Math.Min(source.Length - pos, clusterBytes - (guest % clusterBytes));
            var (host, length) = writer.Write(guest, source.Slice(pos, n));
            Invalidate(top, host, length);
            // The writer allocates whole top clusters (filled from below): every granule of the cluster changes owner.
            _map?.Refresh(guest - (guest % clusterBytes), clusterBytes);
            pos += n;
        }
    }

    /// <summary>
    /// The first offset at or after <paramref name="offset"/> (relative to this storage) where a layer at index
    /// <paramref name="firstLayer"/> or below holds data, or <see cref="LengthBytes"/> when none does. From the layers'
    /// allocation tables; nothing is read.
    /// </summary>
    public long NextData(long offset, int firstLayer = 0)
    {
        if (_zerosHide)
        {
            return NextVisibleData(offset, firstLayer);
        }

        long best = LengthBytes;
        for (int i = firstLayer; i < _layers.Length && best > offset; i++)
        {
            best = Math.Min(best, _layers[i].FindNext(offset, allocated: true));
        }

        return Math.Max(best, offset);
    }

    /// <summary>
    /// <see cref="NextData"/> for a chain with a layer that may hide what is below with zeros: the nearest data of any
    /// layer counts only where no layer above it answers zeros; else the search goes on past those zeros.
    /// </summary>
    private long NextVisibleData(long offset, int firstLayer)
    {
        long at = offset;
        while (at < LengthBytes)
        {
            long candidate = LengthBytes;
            for (int i = firstLayer; i < _layers.Length && candidate > at; i++)
            {
                candidate = Math.Min(candidate, _layers[i].FindNext(at, allocated: true));
            }

            candidate = Math.Max(candidate, at);
            if (candidate >= LengthBytes)
            {
                return LengthBytes;
            }

            int layer = Resolve(firstLayer, candidate, LengthBytes - candidate, out long host, out long run);
            if (layer >= 0 && host != ImageLayer.ZeroHostOffset)
            {
                return candidate;
            }

            at = candidate + run;
        }

        return LengthBytes;
    }

    /// <summary>
    /// <see cref="NextHole"/> for a chain with a layer that may hide what is below with zeros: follows each offset's
    /// answer (the layer that holds it, or zeros, or none) until one is not data.
    /// </summary>
    private long NextVisibleHole(long offset)
    {
        long at = offset;
        while (at < LengthBytes)
        {
            int layer = Resolve(0, at, LengthBytes - at, out long host, out long run);
            if (layer < 0 || host == ImageLayer.ZeroHostOffset)
            {
                return at;
            }

            long gap = _layers[layer].FindNext(at, allocated: false);
            if (gap == at)
            {
                // A raw root's own hole.
                return at;
            }

            at += Math.Min(run, gap - at);
        }

        return LengthBytes;
    }

    /// <summary>
    /// The first offset at or after <paramref name="offset"/> where no layer holds data, or <see cref="LengthBytes"/>
    /// when there is none before the end: each layer that holds the offset moves it to its own next gap, until none does.
    /// </summary>
    public long NextHole(long offset)
    {
        if (_zerosHide)
        {
            return NextVisibleHole(offset);
        }

        long at = offset;
        while (at < LengthBytes)
        {
            bool moved = false;
            foreach (var layer in _layers)
            {
                long gap = layer.FindNext(at, allocated: false);
                if (gap > at)
                {
                    at = gap;
                    moved = true;
                }
            }

            if (!moved)
            {
                return at;
            }
        }

        return LengthBytes;
    }

    /// <summary>
    /// Where guest bytes from <paramref name="offset"/> come from, for at most <paramref name="limit"/> bytes: the layer
    /// (-1 for none: zeros), its host offset, and how many bytes keep that answer with contiguous host offsets.
    /// Unallocated runs are skipped in one step through the allocation tables.
    /// </summary>
    public int ResolveExtent(long offset, long limit, out long hostOffset, out long length)
    {
        int layer = Resolve(0, offset, limit, out hostOffset, out long run);
        if (layer >= 0 && hostOffset is ImageLayer.ZeroHostOffset or ImageLayer.OwnReadHostOffset)
        {
            // Zeros a layer holds, or bytes it reads itself: one answer as far as the layer keeps giving it.
            length = run;
            while (length < limit)
            {
                int next = Resolve(0, offset + length, limit - length, out long host, out long more);
                if (next != layer || host != hostOffset)
                {
                    break;
                }

                length += more;
            }

            return layer;
        }

        if (layer == _layers.Length - 1 && hostOffset >= 0 && _layers[layer].FindNext(offset, allocated: true) > offset)
        {
            // A root that maps the offset but holds no data there (a raw file's own hole) reads zeros, as no layer.
            layer = -1;
        }

        if (layer < 0)
        {
            length = _zerosHide ? UnheldLength(offset, run, limit) : Math.Min(limit, NextData(offset) - offset);
            return layer;
        }

        // A raw layer's data ends at its file's next hole; an allocation table's at the cluster's end, as TryMap says.
        limit = Math.Min(limit, _layers[layer].FindNext(offset, allocated: false) - offset);
        length = Math.Min(run, limit);
        while (hostOffset >= 0 && length < limit)
        {
            int next = Resolve(0, offset + length, limit - length, out long host, out long more);
            if (next != layer || host != hostOffset + length)
            {
                break;
            }

            length += more;
        }

        return layer;
    }

    /// <summary>
    /// How far from <paramref name="offset"/> (which no layer holds, for <paramref name="run"/> bytes) no layer holds
    /// anything, data or zeros, up to <paramref name="limit"/>: zeros a layer holds are an entry of their own.
    /// </summary>
    private long UnheldLength(long offset, long run, long limit)
    {
        long length = run;
        while (length < limit && Resolve(0, offset + length, limit - length, out _, out long more) < 0)
        {
            length += more;
        }

        return Math.Min(length, limit);
    }

    /// <summary>
    /// Makes guest bytes [offset, offset + length) of this storage read as zeros (discard and write-zeroes), one top
    /// cluster at a time: ranges where no layer holds data are left alone; each top cluster the range covers wholly is
    /// released or left as a hole that hides the layers below (see <see cref="LayerWriter.Discard"/>); the rest is
    /// written with zeros. Returns true when the host could not punch a hole somewhere and zeros were written instead.
    /// </summary>
    public bool Discard(long offset, long length)
    {
        var writer = _writer ?? throw new IOException($"{TopLayer.Path}: image is read-only");
        var top = _layers[0];
        long clusterBytes = top.ClusterBytes;
        bool punchUnsupported = false;
        long end = offset + length;
        long pos = offset;
        while (pos < end)
        {
            long clusterStart = pos - (pos % clusterBytes);
            long clusterEnd = Math.Min(clusterStart + clusterBytes, LengthBytes);
            long stop = Math.Min(end, clusterEnd);
            long data = NextData(pos);
            if (data >= stop)
            {
                // Nothing anywhere holds data here: jump to the cluster of the next data.
                pos = Math.Max(stop, Math.Min(end, data - (data % clusterBytes)));
                continue;
            }

            bool whole = pos == clusterStart && stop == clusterEnd;
            bool hideParent = _layers.Length > 1 && NextData(clusterStart, firstLayer: 1) < clusterEnd;
            var outcome = writer.Discard(pos, (int)(stop - pos), whole, hideParent);
            Invalidate(top, outcome.Host, outcome.Length);
            _map?.Refresh(clusterStart, clusterEnd - clusterStart);
            punchUnsupported |= outcome.PunchUnsupported;
            pos = stop;
        }

        return punchUnsupported;
    }

    /// <summary>Makes the top layer's completed writes durable.</summary>
    public void Flush() => _writer?.Flush();

    /// <summary>The content of this storage below its top: what the top's writer is opened over.</summary>
    private sealed class BelowTop(StorageChain chain) : IParentContent
    {
        public void Read(Span<byte> destination, long guestOffset)
        {
            long available = Math.Max(0, Math.Min(destination.Length, chain.LengthBytes - guestOffset));
            chain.Read(1, destination[..(int)available], guestOffset);
            destination[(int)available..].Clear();
        }
    }

    private void Invalidate(ImageLayer layer, long host, long length)
    {
        _cache?.InvalidateRange(layer.CacheId, host, length);
    }

    /// <summary>Large reads go straight to the file (the page cache streams them); small ones through the block cache.</summary>
    private void ReadHost(ImageLayer layer, Span<byte> destination, long host)
    {
        if (_cache is { } cache)
        {
            cache.Read(layer.DataFile, layer.CacheId, destination, host);
        }
        else
        {
            layer.DataFile.ReadZeroFilled(destination, host);
        }
    }
}
