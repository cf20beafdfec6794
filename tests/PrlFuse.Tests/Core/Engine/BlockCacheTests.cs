using PrlFuse.Core.Engine;
using PrlFuse.Core.IO;
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

    /// <summary>An in-memory file that counts the reads and bytes asked of it.</summary>
    private sealed class CountingFile(byte[] content) : ImageFile("counting", writable: false)
    {
        public int Reads;
        public long BytesRead;

        public override long Length => content.Length;

        public override int Read(Span<byte> buffer, long offset)
        {
            Reads++;
            BytesRead += buffer.Length;
            int n = (int)Math.Clamp(content.Length - offset, 0, buffer.Length);
            content.AsSpan((int)offset, n).CopyTo(buffer);
            return n;
        }

        public override void Write(ReadOnlySpan<byte> buffer, long offset) => throw new NotSupportedException();

        public override void SetLength(long length) => throw new NotSupportedException();

        public override void Flush(bool dataOnly)
        {
        }
    }

    [Fact]
    public void A_miss_costs_what_the_read_costs_without_the_cache_and_a_block_missed_twice_is_then_a_hit()
    {
        var content = new byte[1 << 20];
        new Random(5).NextBytes(content);
        var file = new CountingFile(content);
        using var cache = new BlockCache(1 << 20);
        Assert.Equal(4096, cache.BlockSize);
        var buffer = new byte[4096];

        // First miss of a block: one read of exactly what was asked, nothing kept.
        cache.Read(file, 1, buffer, 8192);
        Assert.Equal((1, 4096L), (file.Reads, file.BytesRead));
        Assert.Equal(content.AsSpan(8192, 4096).ToArray(), buffer);

        // Second miss: still one read of what was asked (straight into the buffer), and now the block is kept.
        cache.Read(file, 1, buffer, 8192);
        Assert.Equal((2, 8192L), (file.Reads, file.BytesRead));

        // Then a hit: no read at all, the same bytes, also for a part of the block.
        cache.Read(file, 1, buffer, 8192);
        Assert.Equal(2, file.Reads);
        Assert.Equal(content.AsSpan(8192, 4096).ToArray(), buffer);
        cache.Read(file, 1, buffer.AsSpan(0, 100), 8192 + 1000);
        Assert.Equal(2, file.Reads);
        Assert.Equal(content.AsSpan(9192, 100).ToArray(), buffer.AsSpan(0, 100).ToArray());

        // Another image's block at the same host offset is not this one.
        cache.Read(file, 2, buffer, 8192);
        Assert.Equal(3, file.Reads);

        // A read larger than a small read bypasses the cache: one read of exactly its bytes.
        var large = new byte[(BlockCache.SmallReadBlocks * 4096) + 1];
        cache.Read(file, 1, large, 8192);
        Assert.Equal((4, 8192L + 4096 + large.Length), (file.Reads, file.BytesRead));
        Assert.Equal(content.AsSpan(8192, large.Length).ToArray(), large);

        // After a write the block is read from the file again.
        cache.InvalidateRange(1, 8192 + 10, 1);
        cache.Read(file, 1, buffer, 8192);
        Assert.Equal(5, file.Reads);
    }

    [Fact]
    public void A_small_read_over_resident_and_missing_blocks_reads_each_missing_run_once()
    {
        var content = new byte[1 << 20];
        new Random(6).NextBytes(content);
        var file = new CountingFile(content);
        using var cache = new BlockCache(1 << 20);
        var buffer = new byte[4 * 4096];

        // Make block 2 of [0, 4) resident (missed twice, so kept).
        cache.Read(file, 1, buffer.AsSpan(0, 4096), 2 * 4096);
        cache.Read(file, 1, buffer.AsSpan(0, 4096), 2 * 4096);
        file.Reads = 0;

        // Unaligned, over blocks 0..3: [0, 2) missing, 2 resident, 3 missing: two reads, the right bytes.
        var read = buffer.AsSpan(0, (4 * 4096) - 100);
        cache.Read(file, 1, read, 100);
        Assert.Equal(2, file.Reads);
        Assert.Equal(content.AsSpan(100, read.Length).ToArray(), read.ToArray());

        // The same read again: blocks 0, 1 and 3 were missed before and are kept now, read whole around the asked part.
        cache.Read(file, 1, read, 100);
        Assert.Equal(content.AsSpan(100, read.Length).ToArray(), read.ToArray());
        file.Reads = 0;
        cache.Read(file, 1, read, 100);
        Assert.Equal(0, file.Reads);
        Assert.Equal(content.AsSpan(100, read.Length).ToArray(), read.ToArray());
    }
}
