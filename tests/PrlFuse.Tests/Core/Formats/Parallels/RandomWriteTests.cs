using PrlFuse.Core.Checking;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.Images;
using PrlFuse.Tests.Support;
using static PrlFuse.Tests.Core.Formats.Parallels.WriteTestSupport;

namespace PrlFuse.Tests.Core.Formats.Parallels;

/// <summary>
/// Random writes to the top of a qemu-built chain through Core, against an in-memory model: reads equal the model at
/// all times, and after close qemu sees the same bytes, qemu-img check is clean, in_use is restored and every older
/// image is byte-identical.
/// </summary>
[Trait("Needs", "Qemu")]
public sealed class RandomWriteTests
{
    private const uint ParallelsHeaderInUseOpen = PrlFuse.Core.Formats.Parallels.ParallelsHeader.InUseOpen;

    [Theory]
    [InlineData(1, 101, 0)]
    [InlineData(2, 102, 4 << 20)]
    [InlineData(3, 103, 4 << 20)]
    [InlineData(3, 104, 0)]
    public void RandomWritesMatchTheModelAndQemu(int depth, int seed, long cacheBytes)
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, depth, [16 * 2048], seed);
        Run(chain, temp.Path, seed, cacheBytes, writes: 400);
    }

    [Fact]
    public void RandomWritesToAnOldMagicTop()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [16 * 2048], 108);
        TestImage.ToOldMagic(TopPath(chain));
        Run(chain, temp.Path, 108, 4 << 20, writes: 300);
    }

    [Fact]
    public void WritesAcrossTheStoragesOfASplitDisk()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [5 * 2048 + 128, 3 * 2048 + 8, 7 * 2048], 105);
        Run(chain, temp.Path, 105, 4 << 20, writes: 400);
    }

    private static void Run(QemuChain chain, string scratch, int seed, long cacheBytes, int writes)
    {
        var random = new Random(seed);
        byte[] model = chain.OracleView(chain.Levels.Count - 1, scratch);
        var olderHashes = chain.Levels.Take(chain.Levels.Count - 1)
            .SelectMany(l => l.Files).Select(f => Path.Combine(chain.Bundle, f))
            .ToDictionary(f => f, TestImage.Hash);
        var inUseBefore = Enumerable.Range(0, chain.Storages.Count).Select(s => TestImage.ReadU32(TopPath(chain, s), 44)).ToArray();

        using (var disk = VirtualDisk.Open(chain.Bundle, new DiskOpenOptions { ReadOnly = false, CacheBytes = cacheBytes }))
        {
            var top = disk.Top;
            Assert.True(top.IsWritable);
            long cluster = top.Storages[0].TopLayer.ClusterBytes;
            for (int i = 0; i < writes; i++)
            {
                var (offset, length) = RandomWrite(random, model.Length, cluster);
                byte[] data = Fill(random, length);
                top.Write(data, offset);
                data.CopyTo(model, offset);

                // The range just written, and a random one, read back as the model says.
                AssertReadsEqual(top, model, offset, length, $"write {i}");
                var (ro, rl) = RandomWrite(random, model.Length, cluster);
                AssertReadsEqual(top, model, ro, rl, $"after write {i}");
                if (random.Next(40) == 0)
                {
                    disk.Flush();
                }

                if (i == 0)
                {
                    // The first write marked the image it went to open ("Ynot") on disk.
                    var written = top.Storages.Where(s => s.StartBytes < offset + length && offset < s.StartBytes + s.LengthBytes);
                    Assert.All(written, s => Assert.True(((ExpandableImage)s.TopLayer).IsOpenForWrite));
                    Assert.All(written, s => Assert.Equal(ParallelsHeaderInUseOpen, TestImage.ReadU32(s.TopLayer.Path, 44)));
                }
            }

            AssertWholeViewEquals(top, model, "before close");

            // Older snapshots still read as qemu says.
            for (int level = 0; level < chain.Levels.Count - 1; level++)
            {
                AssertWholeViewEquals(disk.Views[chain.Levels[level].Guid], chain.OracleView(level, scratch), $"level {level}");
            }
        }

        AssertQemuClean(chain);
        for (int s = 0; s < chain.Storages.Count; s++)
        {
            Assert.Equal(inUseBefore[s], TestImage.ReadU32(TopPath(chain, s), 44));
            Assert.Empty(ImageChecker.Check(TopPath(chain, s)).Problems);
        }

        Checking.CheckCommandTests.AssertSameData(model, chain.OracleView(chain.Levels.Count - 1, scratch));
        foreach (var (file, hash) in olderHashes)
        {
            Assert.Equal(hash, TestImage.Hash(file));
        }

        // Reopened by us, the disk reads the same.
        using var again = VirtualDisk.Open(chain.Bundle);
        AssertWholeViewEquals(again.Top, model, "reopened");
    }

    [Fact]
    public void UnwrittenDiskIsLeftByteIdentical()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [8 * 2048], 106);
        string hash = TestImage.Hash(TopPath(chain));
        using (var disk = VirtualDisk.Open(chain.Bundle, new DiskOpenOptions { ReadOnly = false }))
        {
            Assert.True(disk.Top.IsWritable);
            disk.Top.Read(new byte[4096], 0);
            disk.Flush();
        }

        Assert.Equal(hash, TestImage.Hash(TopPath(chain)));
    }

    [Fact]
    public void WritesPastTheEndAreRefusedAndReadOnlyViewsRefuseWrites()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [8 * 2048], 107);
        using var disk = VirtualDisk.Open(chain.Bundle, new DiskOpenOptions { ReadOnly = false });
        Assert.Throws<ArgumentOutOfRangeException>(() => disk.Top.Write(new byte[10], disk.Size - 5));
        Assert.Throws<InvalidOperationException>(() => disk.Views[chain.Levels[0].Guid].Write(new byte[10], 0));
        // Beside a writer only a force-share open gets in (a plain read-only one is refused: Core/ImageLockTests).
        using var ro = VirtualDisk.Open(chain.Bundle, new DiskOpenOptions { ForceShare = true });
        Assert.False(ro.Top.IsWritable);
    }
}
