using PrlFuse.Core.Engine;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Oracle;

/// <summary>Every snapshot view equals qemu's view of the same chain, byte for byte.</summary>
[Trait("Needs", "Qemu")]
public sealed class OracleTests
{
    [Theory]
    [InlineData(1, 11)]
    [InlineData(2, 12)]
    [InlineData(3, 13)]
    [InlineData(4, 14)]
    public void EveryViewOfAChainEqualsQemu(int depth, int seed)
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, depth, [24 * 2048], seed);
        AssertAllViewsMatch(chain, temp.Path, seed);
    }

    [Fact]
    public void SplitDiskChainEqualsQemu()
    {
        using var temp = new TempFolder();
        // Storages of odd sizes so boundaries fall inside clusters of the guest address space.
        var chain = QemuChain.Build(temp.Path, 3, [5 * 2048 + 128, 3 * 2048 + 8, 7 * 2048], 21);
        AssertAllViewsMatch(chain, temp.Path, 21);
    }

    [Fact]
    public void PredefinedTopWithoutTopGuid()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 3, [8 * 2048], 31, predefinedTop: true, useTopGuid: false);
        using var disk = VirtualDisk.Open(chain.Bundle);
        Assert.Equal(chain.Levels[^1].Guid, disk.Top.Id);
        AssertAllViewsMatch(chain, temp.Path, 31);
    }

    [Fact]
    public void SingleLeafIsTheTopWithoutTopGuid()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [8 * 2048], 41, useTopGuid: false);
        using var disk = VirtualDisk.Open(chain.Bundle);
        Assert.Equal(chain.Levels[^1].Guid, disk.Top.Id);
    }

    private static void AssertAllViewsMatch(QemuChain chain, string scratch, int seed)
    {
        using var disk = VirtualDisk.Open(chain.Bundle, new DiskOpenOptions { CacheBytes = 4 << 20 });
        Assert.Equal(chain.Levels.Count, disk.Views.Count);
        Assert.Equal(chain.Levels[^1].Guid, disk.Top.Id);
        var random = new Random(seed);
        for (int level = 0; level < chain.Levels.Count; level++)
        {
            byte[] oracle = chain.OracleView(level, scratch);
            var view = disk.Views[chain.Levels[level].Guid];
            Assert.Equal(oracle.LongLength, view.Size);

            // The whole view in large reads.
            var whole = new byte[view.Size];
            for (long off = 0; off < view.Size; off += 3 << 20)
            {
                int n = (int)Math.Min(3 << 20, view.Size - off);
                Assert.Equal(n, view.Read(whole.AsSpan((int)off, n), off));
            }

            AssertSame(oracle, whole, 0, $"level {level} whole view");

            // Thousands of random unaligned reads, small and large, some crossing clusters and storages.
            var buffer = new byte[3 << 20];
            for (int i = 0; i < 3000; i++)
            {
                int length = random.Next(4) == 0 ? random.Next(1, buffer.Length) : random.Next(1, 70_000);
                long offset = random.NextInt64(view.Size);
                int n = view.Read(buffer.AsSpan(0, length), offset);
                Assert.Equal((int)Math.Min(length, view.Size - offset), n);
                AssertSame(oracle.AsSpan((int)offset, n), buffer.AsSpan(0, n), offset, $"level {level} read {i} ({offset}+{length})");
            }

            // Past the end reads nothing.
            Assert.Equal(0, view.Read(buffer.AsSpan(0, 10), view.Size));
        }
    }

    private static void AssertSame(ReadOnlySpan<byte> expected, ReadOnlySpan<byte> actual, long baseOffset, string what)
    {
        int diff = expected.CommonPrefixLength(actual);
        if (diff != expected.Length || expected.Length != actual.Length)
        {
            Assert.Fail($"{what}: first difference at guest offset {baseOffset + diff}: expected {(diff < expected.Length ? expected[diff] : -1)}, got {(diff < actual.Length ? actual[diff] : -1)}");
        }
    }
}
