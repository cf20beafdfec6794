using PrlFuse.Core.Engine;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.Engine;

/// <summary>The lock-free block cache never returns another block's bytes and stays within its capacity.</summary>
public sealed class BlockCacheTests
{
    private const int BlockSize = 4096;

    private static byte ContentOf(long key, int index)
    {
        ulong x = ((ulong)key * 0x9E3779B97F4A7C15UL) + ((ulong)(index >> 3) * 0xBF58476D1CE4E5B9UL);
        x ^= x >> 31;
        return (byte)(x >> ((index & 7) * 8));
    }

    private static byte[] BlockOf(long key, int size = BlockSize)
    {
        var b = new byte[size];
        for (int i = 0; i < size; i++)
        {
            b[i] = ContentOf(key, i);
        }

        return b;
    }

    private static long KeyOf(int n) => BlockCache.MakeKey(1 + (n % 3), n / 3);

    [Fact]
    public void Concurrent_readers_inserters_and_invalidators_never_see_wrong_data()
    {
        using var cache = new BlockCache(32 * BlockSize * BlockCache.Ways, BlockSize);
        const int keys = 1500;
        var blocks = Enumerable.Range(0, keys).Select(n => BlockOf(KeyOf(n))).ToArray();
        long wrong = 0;
        long hits = 0;
        string? firstError = null;

        void Worker(int seed)
        {
            var random = new Random(seed);
            var buffer = new byte[BlockSize];
            for (int op = 0; op < 150_000; op++)
            {
                // Skewed keys so some blocks are hot and hit often.
                int n = random.Next(4) == 0 ? random.Next(keys) : random.Next(keys / 20);
                long key = KeyOf(n);
                int roll = random.Next(100);
                if (roll < 60)
                {
                    int offset = random.Next(BlockSize);
                    int length = random.Next(1, BlockSize - offset + 1);
                    if (cache.TryRead(key, offset, buffer.AsSpan(0, length)))
                    {
                        Interlocked.Increment(ref hits);
                        if (!buffer.AsSpan(0, length).SequenceEqual(blocks[n].AsSpan(offset, length)))
                        {
                            Interlocked.Increment(ref wrong);
                            Interlocked.CompareExchange(ref firstError, $"key {key:x} offset {offset} length {length}", null);
                        }
                    }
                }
                else if (roll < 92)
                {
                    int generation = cache.GenerationOf(key);
                    cache.Insert(key, blocks[n], generation);
                }
                else
                {
                    cache.Invalidate(key);
                }
            }
        }

        var threads = Enumerable.Range(0, 4).Select(i => new Thread(() => Worker(1000 + i))).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());

        Assert.True(wrong == 0, $"{wrong} reads returned wrong bytes, first: {firstError}");
        Assert.True(hits > 10_000, $"only {hits} hits: the test did not exercise the cache");
        Assert.Equal(cache.Hits, hits);
        AssertWithinCapacity(cache, keys);
    }

    private static void AssertWithinCapacity(BlockCache cache, int keys)
    {
        var one = new byte[1];
        int resident = Enumerable.Range(0, keys).Count(n => cache.TryRead(KeyOf(n), 0, one));
        Assert.True(resident <= cache.CapacityBytes / cache.BlockSize, $"{resident} blocks resident in a cache of {cache.CapacityBytes / cache.BlockSize}");
    }

    [Theory]
    [InlineData(64L << 20, 64 * 1024)]
    [InlineData(3L << 20, 64 * 1024)]
    [InlineData(1L << 20, 64 * 1024)]
    [InlineData(512L << 10, 64 * 1024)]
    [InlineData(100L << 10, 64 * 1024)]
    [InlineData(4096L * 8 * 5, 4096)]
    [InlineData(8192L, 4096)]
    public void Capacity_is_respected(long capacity, int blockSize)
    {
        using var cache = new BlockCache(capacity, blockSize);
        Assert.True(cache.CapacityBytes <= capacity, $"cache of {cache.CapacityBytes} bytes for a capacity of {capacity}");
        Assert.True(cache.CapacityBytes > capacity / 4, $"cache of {cache.CapacityBytes} bytes wastes most of {capacity}");
        Assert.True(cache.BlockSize <= blockSize);

        int blocks = (int)(capacity / cache.BlockSize * 4) + 64;
        for (int n = 0; n < blocks; n++)
        {
            long key = KeyOf(n);
            cache.Insert(key, BlockOf(key, cache.BlockSize), cache.GenerationOf(key));
        }

        AssertWithinCapacity(cache, blocks);

        // The most recent insert is always there.
        var buffer = new byte[16];
        long last = KeyOf(blocks - 1);
        Assert.True(cache.TryRead(last, 100, buffer));
        Assert.Equal(BlockOf(last, cache.BlockSize).AsSpan(100, 16).ToArray(), buffer);
    }

    [Fact]
    public void Insert_after_an_invalidation_with_an_old_generation_is_dropped()
    {
        using var cache = new BlockCache(1 << 20, BlockSize);
        long key = KeyOf(7);
        int generation = cache.GenerationOf(key);
        cache.Invalidate(key); // a write happened while the block was being read from the file
        cache.Insert(key, BlockOf(key), generation);
        var buffer = new byte[8];
        Assert.False(cache.TryRead(key, 0, buffer));

        cache.Insert(key, BlockOf(key), cache.GenerationOf(key));
        Assert.True(cache.TryRead(key, 0, buffer));
        cache.Invalidate(key);
        Assert.False(cache.TryRead(key, 0, buffer));
    }

    [Fact]
    public void Block_size_must_be_a_power_of_two()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new BlockCache(1 << 20, 3000));
        Assert.Throws<ArgumentOutOfRangeException>(() => new BlockCache(1 << 20, 0));
    }

    [Fact]
    public void Concurrent_reads_through_a_small_cache_return_the_image_content()
    {
        using var temp = new TempFolder();
        var b = new ParallelsImageBuilder(2048 * 8, 63) { Content = ParallelsImageBuilder.Pattern(77) };
        b.AllocateEvery(2);
        var built = b.Build(temp.Combine("cache.hds"));
        using var disk = VirtualDisk.Open(built.Path, new DiskOpenOptions { CacheBytes = 512 << 10 });
        var view = disk.Top;
        long errors = 0;

        void Reader(int seed)
        {
            var random = new Random(seed);
            var buffer = new byte[20_000];
            var want = new byte[20_000];
            for (int i = 0; i < 1500; i++)
            {
                int length = random.Next(1, buffer.Length);
                long offset = random.NextInt64(0, view.Size - length);
                view.Read(buffer.AsSpan(0, length), offset);
                b.FillExpected(want.AsSpan(0, length), offset);
                if (!buffer.AsSpan(0, length).SequenceEqual(want.AsSpan(0, length)))
                {
                    Interlocked.Increment(ref errors);
                }
            }
        }

        var threads = Enumerable.Range(0, 3).Select(i => new Thread(() => Reader(i))).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        Assert.Equal(0, errors);
        Assert.True(disk.Cache!.Hits > 0);
    }
}
