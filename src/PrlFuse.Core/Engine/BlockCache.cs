using System.Numerics;
using System.Runtime.InteropServices;

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
/// </summary>
public sealed unsafe class BlockCache : IDisposable
{
    public const int DefaultBlockSize = 64 * 1024;
    public const int Ways = 8;

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
    private long _hits;
    private long _misses;
    private int _disposed;

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

    public long Hits => Interlocked.Read(ref _hits);

    public long Misses => Interlocked.Read(ref _misses);

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
                _referenced[slot] = 1;
                Interlocked.Increment(ref _hits);
                return true;
            }
        }

        Interlocked.Increment(ref _misses);
        return false;
    }

    /// <summary>
    /// Admission on a miss: true when this block was missed recently too, so it is worth reading whole and keeping.
    /// A block missed once is not cached: a random 4 KiB read then costs 4 KiB, not a whole block, and one-off reads
    /// do not evict blocks that are read again. The doorkeeper is a direct-mapped table of recently missed keys,
    /// written without a lock (a lost update only delays an admission).
    /// </summary>
    public bool AdmitOnMiss(long key)
    {
        int slot = (int)((ulong)key * 0xC2B2AE3D27D4EB4FUL >> 32) & _doorMask;
        if (Volatile.Read(ref _doorkeeper[slot]) == key)
        {
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
