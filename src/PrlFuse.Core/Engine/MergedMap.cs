using PrlFuse.Core.Images;

namespace PrlFuse.Core.Engine;

/// <summary>
/// Which layer of a chain answers for each granule of guest space (the first layer, top down, whose
/// <see cref="ImageLayer.TryMap"/> holds it), so a read of a deep chain asks that one layer instead of every layer above
/// it. Built lazily, one chunk of granules at a time on first use, layer by layer from the allocation tables. A granule
/// in which some layer's answer changes is <see cref="Mixed"/>: the chain walks its layers there, as without a map.
/// Lookups take no lock; building and <see cref="Refresh"/> take one, so a build never publishes an owner that a write
/// finished meanwhile has changed.
/// </summary>
internal sealed class MergedMap
{
    /// <summary>No layer holds the granule: it reads as zeros.</summary>
    public const int None = -1;

    /// <summary>Answers change inside the granule: the layers are walked there.</summary>
    public const int Mixed = -2;

    private const int Unknown = -3;
    private const int ChunkGranules = 1024;

    // Clusters smaller than this only cost mixed granules (a walk), not a map of millions of entries.
    private const long SmallestGranule = 64 * 1024;

    // Beyond this many chunk slots (a descriptor claiming an absurd size) the chain keeps walking.
    private const long MostChunks = 1 << 20;

    private readonly ImageLayer[] _layers;
    private readonly long _length;
    private readonly long _granule;
    private readonly int[]?[] _chunks;
    private readonly Lock _gate = new();

    private MergedMap(ImageLayer[] layers, long length, long granule, long chunks)
    {
        _layers = layers;
        _length = length;
        _granule = granule;
        _chunks = new int[]?[chunks];
    }

    /// <summary>A map over <paramref name="layers"/> (top first) for guest bytes [0, <paramref name="length"/>), or null when it would be too large.</summary>
    public static MergedMap? Create(ImageLayer[] layers, long length)
    {
        long smallest = long.MaxValue;
        foreach (var layer in layers)
        {
            if (layer.Kind != ImageKind.Plain)
            {
                smallest = Math.Min(smallest, layer.ClusterBytes);
            }
        }

        long granule = Math.Max(SmallestGranule, smallest == long.MaxValue ? SmallestGranule : smallest);
        long chunks = (length / granule / ChunkGranules) + 1;
        return length <= 0 || chunks > MostChunks ? null : new MergedMap(layers, length, granule, chunks);
    }

    /// <summary>
    /// The layer that answers for <paramref name="offset"/> (an index, <see cref="None"/> or <see cref="Mixed"/>), and the
    /// end of the granules from there on (up to <paramref name="limit"/> bytes past the offset, within one chunk) that
    /// have the same owner.
    /// </summary>
    public int OwnerOf(long offset, long limit, out long sameUntil)
    {
        long granule = offset / _granule;
        long chunkIndex = granule / ChunkGranules;
        var chunk = Volatile.Read(ref _chunks[chunkIndex]) ?? Build(chunkIndex);
        int at = (int)(granule - (chunkIndex * ChunkGranules));
        int owner = Volatile.Read(ref chunk[at]);
        long end = (granule + 1) * _granule;
        long stop = offset + Math.Min(limit, _length - offset);
        while (end < stop && ++at < ChunkGranules && Volatile.Read(ref chunk[at]) == owner)
        {
            end += _granule;
        }

        sameUntil = Math.Min(end, _length);
        return owner;
    }

    /// <summary>Guest bytes [offset, offset + length) were written or discarded in the top layer: their granules are asked again.</summary>
    public void Refresh(long offset, long length)
    {
        length = Math.Min(length, _length - offset);
        if (length <= 0)
        {
            return;
        }

        lock (_gate)
        {
            for (long granule = offset / _granule; granule <= (offset + length - 1) / _granule; granule++)
            {
                long chunkIndex = granule / ChunkGranules;
                if (_chunks[chunkIndex] is { } chunk)
                {
                    long start = granule * _granule;
                    Volatile.Write(ref chunk[granule - (chunkIndex * ChunkGranules)], OwnerByWalk(start, Math.Min(start + _granule, _length)));
                }
            }
        }
    }

    /// <summary>The owner of guest bytes [start, end) found by asking each layer in turn, as the chain does without a map.</summary>
    private int OwnerByWalk(long start, long end)
    {
        for (int i = 0; i < _layers.Length; i++)
        {
            bool hit = _layers[i].TryMap(start, out _, out long run);
            if (run < end - start)
            {
                return Mixed;
            }

            if (hit)
            {
                return i;
            }
        }

        return None;
    }

    private int[] Build(long chunkIndex)
    {
        lock (_gate)
        {
            if (_chunks[chunkIndex] is { } built)
            {
                return built;
            }

            long start = chunkIndex * ChunkGranules * _granule;
            long end = Math.Min(start + (ChunkGranules * _granule), _length);
            var owners = new int[ChunkGranules];
            int count = (int)((end - start + _granule - 1) / _granule);
            owners.AsSpan(0, count).Fill(Unknown);
            owners.AsSpan(count).Fill(None);
            int unknown = count;
            for (int i = 0; i < _layers.Length && unknown > 0; i++)
            {
                Paint(owners, i, start, end, ref unknown);
            }

            for (int g = 0; g < count; g++)
            {
                if (owners[g] == Unknown)
                {
                    owners[g] = None;
                }
            }

            Volatile.Write(ref _chunks[chunkIndex], owners);
            return owners;
        }
    }

    /// <summary>
    /// Gives layer <paramref name="index"/> the granules of [start, end) that no layer above it holds and that it holds
    /// wholly; a granule it holds only in part is mixed. Unheld stretches are skipped through its allocation table,
    /// except where a layer's table does not tell its answers (a raw file's holes, ranges of zeros).
    /// </summary>
    private void Paint(int[] owners, int index, long start, long end, ref int unknown)
    {
        var layer = _layers[index];
        bool skipByTable = layer.Kind != ImageKind.Plain && !layer.MayHoldZeros;
        long pos = start;
        long heldFrom = -1;
        while (pos < end)
        {
            bool hit = layer.TryMap(pos, out _, out long run);
            long stop = run >= end - pos ? end : pos + run;
            if (hit)
            {
                if (heldFrom < 0)
                {
                    heldFrom = pos;
                }

                pos = stop;
                continue;
            }

            if (heldFrom >= 0)
            {
                Claim(owners, index, heldFrom, pos, start, ref unknown);
                heldFrom = -1;
            }

            if (skipByTable && stop < end)
            {
                long next = layer.FindNext(stop, allocated: true);
                stop = next >= end ? end : Math.Max(stop, next);
            }

            pos = stop;
        }

        if (heldFrom >= 0)
        {
            Claim(owners, index, heldFrom, end, start, ref unknown);
        }
    }

    private void Claim(int[] owners, int index, long from, long to, long chunkStart, ref int unknown)
    {
        long first = (from - chunkStart) / _granule;
        long last = (to - chunkStart + _granule - 1) / _granule;
        for (long g = first; g < last; g++)
        {
            if (owners[g] != Unknown)
            {
                continue;
            }

            long granuleStart = chunkStart + (g * _granule);
            long granuleEnd = Math.Min(granuleStart + _granule, _length);
            owners[g] = from <= granuleStart && to >= granuleEnd ? index : Mixed;
            unknown--;
        }
    }
}
