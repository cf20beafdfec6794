using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using PrlFuse.Core.IO;

namespace PrlFuse.Core.Engine;

/// <summary>
/// A bounded cache of image file blocks shared by every view of a disk, keyed by (image, block of the host file):
/// a base cluster read through one snapshot file is a hit for every other snapshot file that shares it.
/// <para>
/// Set-associative with <see cref="Ways"/> slots per set. Readers take no lock: each slot carries a sequence
/// number that is odd while a filler writes it, and a reader that sees it change retries as a miss (a seqlock).
/// Fillers and invalidations serialise per set with a spin flag. A per-set generation, bumped by every
/// invalidation, stops a reader that read the file before a write from inserting what it read after it.
/// </para>
/// Memory is reserved up front but pages are only touched as blocks are filled.
/// <para>
/// The host files are read through the host's page cache, so what a hit saves is one pread of the same bytes from
/// memory: a hit must cost less than that, and a miss no more than reading without the cache. Hence page-sized blocks
/// (a miss reads no more than a 4 KiB reader asked for), hits copied once and without a lock or a shared counter, and
/// a block kept only when it was missed before (<see cref="AdmitOnMiss"/>), from the bytes the miss read anyway.
/// </para>
/// </summary>
public sealed unsafe class BlockCache : IDisposable
{
    public const int DefaultBlockSize = 4096;
    public const int Ways = 8;

    /// <summary>Reads of up to this many blocks go through the cache; larger ones straight to the file (see <see cref="Read"/>).</summary>
    public const int SmallReadBlocks = 4;

    // Hits and misses are counted in stripes of their own cache line, so that threads do not share a counter.
    private const int CounterStripes = 16;
    private const int StripeLongs = 8;

    private readonly byte* _data;
    private readonly long[] _keys;
    private readonly int[] _sequence;
    private readonly byte[] _referenced;
    private readonly int[] _setLocks;
    private readonly int[] _generations;
    private readonly int[] _hands;
    private readonly int _setMask;
    private readonly long[] _doorkeeper;
    private readonly int _doorMask;
    private readonly long[] _hitCounts = new long[CounterStripes * StripeLongs];
    private readonly long[] _missCounts = new long[CounterStripes * StripeLongs];
    private readonly int _blockShift;
    private int _admitting; // 1 once a block was admitted: from then on an invalidation must look at the sets
    private int _disposed;

    // Scratch for a miss that must read whole blocks around a partial request: per thread, as large as a small read.
    [ThreadStatic]
    private static byte[]? t_scratch;

    /// <summary>
    /// A cache of at most <paramref name="capacityBytes"/> (at least <see cref="Ways"/> blocks of 512 bytes).
    /// <see cref="BlockSize"/> may come out smaller than <paramref name="blockSize"/> for a small capacity.
    /// </summary>
    public BlockCache(long capacityBytes, int blockSize = DefaultBlockSize)
    {
        if (blockSize <= 0 || !BitOperations.IsPow2(blockSize))
        {
            throw new ArgumentOutOfRangeException(nameof(blockSize), "block size must be a power of two");
        }

        // A capacity too small for one set of full-size blocks gets smaller blocks rather than overshooting it
        // (the readers take the block size from the cache); 512 bytes is the floor.
        while ((long)blockSize * Ways > capacityBytes && blockSize > 512)
        {
            blockSize /= 2;
        }

        long sets = Math.Max(1, capacityBytes / blockSize / Ways);
        sets = (long)BitOperations.RoundUpToPowerOf2((ulong)sets);
        if (sets * Ways * blockSize > capacityBytes && sets > 1)
        {
            sets /= 2;
        }

        BlockSize = blockSize;
        _blockShift = BitOperations.Log2((uint)blockSize);
        int slots = checked((int)(sets * Ways));
        _setMask = (int)sets - 1;
        _data = (byte*)NativeMemory.AlignedAlloc((nuint)((long)slots * blockSize), 4096);
        _keys = new long[slots];
        Array.Fill(_keys, -1L);
        _sequence = new int[slots];
        _referenced = new byte[slots];
        _setLocks = new int[sets];
        _generations = new int[sets];
        _hands = new int[sets];
        CapacityBytes = (long)slots * blockSize;
        _doorkeeper = new long[BitOperations.RoundUpToPowerOf2((uint)slots * 2)];
        Array.Fill(_doorkeeper, -1L);
        _doorMask = _doorkeeper.Length - 1;
    }

    public int BlockSize { get; }

    public long CapacityBytes { get; }

    public long Hits => Sum(_hitCounts);

    public long Misses => Sum(_missCounts);

    private static long Sum(long[] counts)
    {
        long total = 0;
        for (int i = 0; i < counts.Length; i += StripeLongs)
        {
            total += Interlocked.Read(ref counts[i]);
        }

        return total;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Count(long[] counts) =>
        Interlocked.Increment(ref counts[(Environment.CurrentManagedThreadId & (CounterStripes - 1)) * StripeLongs]);

    /// <summary>Images are numbered from 1; block indexes address up to 2^44 blocks of the host file.</summary>
    public static long MakeKey(int imageId, long blockIndex) => ((long)imageId << 44) | blockIndex;

    private int SetOf(long key) => (int)((ulong)key * 0x9E3779B97F4A7C15UL >> 40) & _setMask;

    /// <summary>Copies bytes [offset, offset + destination.Length) of a cached block; false on a miss.</summary>
    public bool TryRead(long key, int offset, Span<byte> destination)
    {
        int first = SetOf(key) * Ways;
        for (int slot = first; slot < first + Ways; slot++)
        {
            int before = Volatile.Read(ref _sequence[slot]);
            if ((before & 1) != 0 || Volatile.Read(ref _keys[slot]) != key)
            {
                continue;
            }

            new ReadOnlySpan<byte>(_data + ((long)slot * BlockSize) + offset, destination.Length).CopyTo(destination);
            Interlocked.MemoryBarrier();
            if (Volatile.Read(ref _sequence[slot]) == before)
            {
                if (_referenced[slot] == 0)
                {
                    _referenced[slot] = 1; // written only when it changes: a hot block's line stays shared, not bounced
                }

                Count(_hitCounts);
                return true;
            }
        }

        Count(_missCounts);
        return false;
    }

    /// <summary>True when the block of <paramref name="key"/> is resident (a hint: it may go or come right after).</summary>
    private bool Holds(long key)
    {
        int first = SetOf(key) * Ways;
        for (int slot = first; slot < first + Ways; slot++)
        {
            if (Volatile.Read(ref _keys[slot]) == key)
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>
    /// Reads host bytes [<paramref name="host"/>, + destination length) of <paramref name="file"/> (image
    /// <paramref name="imageId"/>) through the cache; bytes past the end of the file read as zeros. Reads of more than
    /// <see cref="SmallReadBlocks"/> blocks go straight to the file (the page cache streams them). Resident blocks are
    /// copied; each run of missing blocks is one read of the file, straight into the destination unless a block to keep
    /// is only partly asked for; blocks missed before (<see cref="AdmitOnMiss"/>) are then kept.
    /// </summary>
    public void Read(ImageFile file, int imageId, Span<byte> destination, long host)
    {
        if (destination.IsEmpty)
        {
            return;
        }

        if (destination.Length > SmallReadBlocks * BlockSize)
        {
            file.ReadZeroFilled(destination, host);
            return;
        }

        long end = host + destination.Length;
        long block = host >> _blockShift;
        long lastBlock = (end - 1) >> _blockShift;
        while (block <= lastBlock)
        {
            long blockStart = block << _blockShift;
            long from = Math.Max(host, blockStart);
            long to = Math.Min(end, blockStart + BlockSize);
            if (TryRead(MakeKey(imageId, block), (int)(from - blockStart), destination.Slice((int)(from - host), (int)(to - from))))
            {
                block++;
                continue;
            }

            long runEnd = block;
            while (runEnd < lastBlock && !Holds(MakeKey(imageId, runEnd + 1)))
            {
                runEnd++;
            }

            ReadMissing(file, imageId, destination, host, block, runEnd);
            block = runEnd + 1;
        }
    }

    /// <summary>Blocks [<paramref name="first"/>, <paramref name="last"/>] of a small read missed: read them once, keep the admitted ones.</summary>
    private void ReadMissing(ImageFile file, int imageId, Span<byte> destination, long host, long first, long last)
    {
        int count = (int)(last - first + 1);
        Span<int> generations = stackalloc int[SmallReadBlocks + 1];
        Span<bool> admitted = stackalloc bool[SmallReadBlocks + 1];
        bool anyAdmitted = false;
        for (int i = 0; i < count; i++)
        {
            long key = MakeKey(imageId, first + i);
            // The generation is taken before the file is read: a write in between makes the insert a no-op.
            admitted[i] = AdmitOnMiss(key);
            generations[i] = GenerationOf(key);
            anyAdmitted |= admitted[i];
        }

        long runStart = first << _blockShift;
        long runEnd = (last + 1) << _blockShift;
        long from = Math.Max(host, runStart);
        long to = Math.Min(host + destination.Length, runEnd);
        var asked = destination.Slice((int)(from - host), (int)(to - from));
        ReadOnlySpan<byte> blocks;
        if (!anyAdmitted || (from == runStart && to == runEnd))
        {
            // Nothing to keep, or whole blocks asked: the file is read straight into the destination.
            file.ReadZeroFilled(asked, from);
            if (!anyAdmitted)
            {
                return;
            }

            blocks = asked;
        }
        else
        {
            var scratch = t_scratch is { } s && s.Length >= (SmallReadBlocks + 1) * BlockSize
                ? s
                : t_scratch = new byte[(SmallReadBlocks + 1) * BlockSize];
            var whole = scratch.AsSpan(0, (int)(runEnd - runStart));
            file.ReadZeroFilled(whole, runStart);
            whole.Slice((int)(from - runStart), asked.Length).CopyTo(asked);
            blocks = whole;
        }

        for (int i = 0; i < count; i++)
        {
            if (admitted[i])
            {
                Insert(MakeKey(imageId, first + i), blocks.Slice(i * BlockSize, BlockSize), generations[i]);
            }
        }
    }

    /// <summary>
    /// Admission on a miss: true when this block was missed recently too, so it is worth keeping. A block missed once
    /// is not cached: one-off reads cost no copy into the cache and do not evict blocks that are read again. The doorkeeper is a direct-mapped table of recently missed keys,
    /// written without a lock (a lost update only delays an admission).
    /// </summary>
    public bool AdmitOnMiss(long key)
    {
        int slot = (int)((ulong)key * 0xC2B2AE3D27D4EB4FUL >> 32) & _doorMask;
        if (Volatile.Read(ref _doorkeeper[slot]) == key)
        {
            if (Volatile.Read(ref _admitting) == 0)
            {
                // A full fence before the caller reads the file; InvalidateRange fences before it reads this.
                Interlocked.Exchange(ref _admitting, 1);
            }

            return true;
        }

        Volatile.Write(ref _doorkeeper[slot], key);
        return false;
    }

    /// <summary>Read before reading the file for a miss; pass to <see cref="Insert"/>.</summary>
    public int GenerationOf(long key) => Volatile.Read(ref _generations[SetOf(key)]);

    /// <summary>Stores a whole block read from the file, unless its set was invalidated since <paramref name="generation"/>.</summary>
    public void Insert(long key, ReadOnlySpan<byte> block, int generation)
    {
        int set = SetOf(key);
        Lock(set);
        try
        {
            if (Volatile.Read(ref _generations[set]) != generation)
            {
                return;
            }

            int first = set * Ways;
            int victim = -1;
            for (int slot = first; slot < first + Ways; slot++)
            {
                if (_keys[slot] == key)
                {
                    return;
                }
            }

            // CLOCK within the set: the first slot not referenced since the hand last passed.
            for (int step = 0; step < 2 * Ways && victim < 0; step++)
            {
                int slot = first + _hands[set];
                _hands[set] = (_hands[set] + 1) % Ways;
                if (_keys[slot] == -1 || _referenced[slot] == 0)
                {
                    victim = slot;
                }
                else
                {
                    _referenced[slot] = 0;
                }
            }

            victim = victim < 0 ? first : victim;
            Interlocked.Increment(ref _sequence[victim]);
            Volatile.Write(ref _keys[victim], key);
            block.CopyTo(new Span<byte>(_data + ((long)victim * BlockSize), BlockSize));
            _referenced[victim] = 1;
            Interlocked.Increment(ref _sequence[victim]);
        }
        finally
        {
            Unlock(set);
        }
    }

    /// <summary>
    /// Drops the blocks of host bytes [<paramref name="host"/>, + <paramref name="length"/>) of image
    /// <paramref name="imageId"/> after they changed in the file. Call after the file write. Free until a block was
    /// first admitted (a write-only workload pays nothing for the cache).
    /// </summary>
    public void InvalidateRange(int imageId, long host, long length)
    {
        Interlocked.MemoryBarrier();
        if (length <= 0 || Volatile.Read(ref _admitting) == 0)
        {
            return;
        }

        for (long block = host >> _blockShift; block <= (host + length - 1) >> _blockShift; block++)
        {
            Invalidate(MakeKey(imageId, block));
        }
    }

    /// <summary>Drops a block after its file bytes changed. Call after the file write.</summary>
    public void Invalidate(long key)
    {
        int set = SetOf(key);
        Lock(set);
        try
        {
            Interlocked.Increment(ref _generations[set]);
            int first = set * Ways;
            for (int slot = first; slot < first + Ways; slot++)
            {
                if (_keys[slot] == key)
                {
                    Interlocked.Increment(ref _sequence[slot]);
                    Volatile.Write(ref _keys[slot], -1L);
                    Interlocked.Increment(ref _sequence[slot]);
                }
            }
        }
        finally
        {
            Unlock(set);
        }
    }

    private void Lock(int set)
    {
        var spinner = default(SpinWait);
        while (Interlocked.CompareExchange(ref _setLocks[set], 1, 0) != 0)
        {
            spinner.SpinOnce();
        }
    }

    private void Unlock(int set) => Volatile.Write(ref _setLocks[set], 0);

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            NativeMemory.AlignedFree(_data);
        }
    }
}
