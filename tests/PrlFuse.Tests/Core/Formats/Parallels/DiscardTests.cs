using System.Security.Cryptography;
using PrlFuse.Core.Engine;
using PrlFuse.Tests.Support;
using static PrlFuse.Tests.Core.Formats.Parallels.WriteTestSupport;

namespace PrlFuse.Tests.Core.Formats.Parallels;

/// <summary>
/// Discard (what fallocate PUNCH_HOLE and ZERO_RANGE on current.raw become): the range reads as zeros whatever the layers
/// below hold, for us and for QEMU; whole clusters give their host space back; the images stay clean; and crashes at any
/// point keep every discard that was flushed.
/// </summary>
[Trait("Needs", "Qemu")]
public sealed class DiscardTests
{
    /// <summary>A random discard: whole clusters, runs of them, parts of one, unaligned ranges across clusters.</summary>
    private static (long Offset, long Length) RandomDiscard(Random random, long size, long cluster)
    {
        long clusters = size / cluster;
        (long offset, long length) = random.Next(4) switch
        {
            0 => (random.NextInt64(clusters) * cluster, cluster * (1 + random.Next(4))),
            1 => ((random.NextInt64(clusters) * cluster) + random.Next((int)cluster / 2), 1 + random.Next((int)cluster / 2)),
            2 => (random.NextInt64(size), random.NextInt64(cluster * 6)),
            _ => (random.NextInt64(clusters) * cluster, cluster * (8 + random.Next(24))),
        };
        offset = Math.Clamp(offset, 0, size - 1);
        return (offset, Math.Min(length, size - offset));
    }

    private static Dictionary<string, string> HashLowerLayers(QemuChain chain) =>
        chain.Levels.Take(chain.Levels.Count - 1).SelectMany(l => l.Files).ToDictionary(f => f, f => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(Path.Combine(chain.Bundle, f)))));

    [Theory]
    [InlineData(701, 1)]
    [InlineData(702, 3)]
    [InlineData(703, 3)]
    public void Discarded_ranges_read_as_zeros_for_us_and_for_qemu(int seed, int depth)
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, depth, [16 * 2048], seed);
        var lower = HashLowerLayers(chain);
        byte[] model = chain.OracleView(depth - 1, temp.Path);
        var random = new Random(seed);
        using (var disk = VirtualDisk.Open(chain.Bundle, new DiskOpenOptions { ReadOnly = false }))
        {
            var top = disk.Top;
            long cluster = top.Storages[0].TopLayer.ClusterBytes;
            for (int i = 0; i < 200; i++)
            {
                if (random.Next(2) == 0)
                {
                    var (offset, length) = RandomWrite(random, top.Size, cluster);
                    byte[] data = Fill(random, length);
                    top.Write(data, offset);
                    data.CopyTo(model, offset);
                }
                else
                {
                    var (offset, length) = RandomDiscard(random, top.Size, cluster);
                    top.Discard(offset, length);
                    model.AsSpan((int)offset, (int)length).Clear();
                    AssertReadsEqual(top, model, offset, (int)length, $"discard {i} at {offset}+{length}");
                }

                if (random.Next(10) == 0)
                {
                    disk.Flush();
                }
            }

            AssertWholeViewEquals(top, model, "after the discards");
        }

        AssertQemuClean(chain);
        Assert.True(chain.OracleView(depth - 1, temp.Path).AsSpan().SequenceEqual(model), "QEMU's view differs from what was written and discarded");
        Assert.Equal(lower, HashLowerLayers(chain));
        using var again = VirtualDisk.Open(chain.Bundle);
        AssertWholeViewEquals(again.Top, model, "reopened");
    }

    [Theory]
    [InlineData(711, 1)]
    [InlineData(712, 3)]
    public void Whole_clusters_give_their_host_space_back(int seed, int depth)
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, depth, [64 * 2048], seed);
        string topPath = TopPath(chain);
        byte[] model = chain.OracleView(depth - 1, temp.Path);
        var random = new Random(seed);
        long written;
        long before;
        using (var disk = VirtualDisk.Open(chain.Bundle, new DiskOpenOptions { ReadOnly = false }))
        {
            var top = disk.Top;
            byte[] data = new byte[32 << 20];
            random.NextBytes(data);
            top.Write(data, 16 << 20);
            disk.Flush();
            before = QemuMap.HostAllocatedBytes(topPath);
            written = data.Length;

            top.Discard(16 << 20, written);
            disk.Flush();
            model.AsSpan(16 << 20, (int)written).Clear();
            AssertWholeViewEquals(top, model, "after discarding what was written");

            // Where nothing below holds data, nothing is left; over data below, the top keeps covering it (as a hole): the
            // first data is the first top cluster over data below.
            long end = (16 << 20) + written;
            long below = depth == 1 ? -1 : disk.Views[chain.Levels[depth - 2].Guid].SeekData(16 << 20);
            long topCluster = top.Storages[0].TopLayer.ClusterBytes;
            long expected = below < 0 || below >= end ? -1 : below - (below % topCluster);
            long found = top.SeekData(16 << 20);
            Assert.Equal(expected, found >= end ? -1 : found);
        }

        long after = QemuMap.HostAllocatedBytes(topPath);
        Assert.True(before - after >= written * 9 / 10, $"the top image holds {before} bytes before and {after} after discarding {written}");
        AssertQemuClean(chain);
        Assert.True(chain.OracleView(depth - 1, temp.Path).AsSpan().SequenceEqual(model), "QEMU's view differs after the discard");
    }

    [Theory]
    [InlineData(741, 1)]
    [InlineData(742, 3)]
    public void Where_the_host_cannot_punch_holes_zeros_are_written_and_said(int seed, int depth)
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, depth, [16 * 2048], seed);
        byte[] model = chain.OracleView(depth - 1, temp.Path);
        var random = new Random(seed);

        // A file that cannot punch holes (the ImageFile default), as on a filesystem without them.
        var noHoles = new PrlFuse.Tests.Core.IO.FaultPlan { FileName = Path.GetFileName(TopPath(chain)), Armed = false };
        using (var disk = VirtualDisk.Open(chain.Bundle, noHoles.Options(readOnly: false)))
        {
            var top = disk.Top;
            long cluster = top.Storages[0].TopLayer.ClusterBytes;
            byte[] data = new byte[(int)cluster * 4];
            random.NextBytes(data);
            top.Write(data, cluster * 2);
            data.CopyTo(model, cluster * 2);

            Assert.False(top.Discard((cluster * 2) + 100, 1000), "a part of a cluster is zeroed by a write, not a hole");
            model.AsSpan((int)(cluster * 2) + 100, 1000).Clear();
            Assert.True(top.Discard(cluster * 3, cluster * 2), "whole clusters could not be punched: the caller must hear it");
            model.AsSpan((int)(cluster * 3), (int)(cluster * 2)).Clear();
            disk.Flush();
            AssertWholeViewEquals(top, model, "after discards without holes");
        }

        AssertQemuClean(chain);
        Assert.True(chain.OracleView(depth - 1, temp.Path).AsSpan().SequenceEqual(model), "QEMU's view differs after discards without holes");
    }

    [Fact]
    public void A_read_only_view_refuses_discard()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [8 * 2048], 721);
        using (var disk = VirtualDisk.Open(chain.Bundle, new DiskOpenOptions { ReadOnly = false }))
        {
            var lower = disk.Views[chain.Levels[0].Guid];
            Assert.Throws<InvalidOperationException>(() => lower.Discard(0, 4096));
        }

        using var readOnly = VirtualDisk.Open(chain.Bundle);
        Assert.Throws<InvalidOperationException>(() => readOnly.Top.Discard(0, 4096));
    }

    [Theory]
    [InlineData(731, 1)]
    [InlineData(732, 3)]
    public void Crashes_keep_every_flushed_discard_and_leave_no_corruption(int seed, int depth)
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, depth, [16 * 2048], seed);
        string topPath = TopPath(chain);
        byte[] initial = File.ReadAllBytes(topPath);
        byte[] model = chain.OracleView(depth - 1, temp.Path);
        var log = new OpLog();
        var random = new Random(seed);
        log.Mark("flushed", model: (byte[])model.Clone());
        using (var disk = VirtualDisk.Open(chain.Bundle, new DiskOpenOptions { ReadOnly = false, OpenFile = RecordingImageFile.Opener(log, p => p == topPath) }))
        {
            var top = disk.Top;
            long cluster = top.Storages[0].TopLayer.ClusterBytes;
            for (int i = 0; i < 150; i++)
            {
                if (random.Next(2) == 0)
                {
                    var (offset, length) = RandomWrite(random, top.Size, cluster);
                    byte[] data = Fill(random, length);
                    log.Mark("change", offset, length);
                    top.Write(data, offset);
                    data.CopyTo(model, offset);
                }
                else
                {
                    var (offset, length) = RandomDiscard(random, top.Size, cluster);
                    log.Mark("change", offset, length);
                    top.Discard(offset, length);
                    model.AsSpan((int)offset, (int)length).Clear();
                }

                if (random.Next(8) == 0)
                {
                    disk.Flush();
                    log.Mark("flushed", model: (byte[])model.Clone());
                }
            }
        }

        var ops = log.Snapshot();
        Assert.Contains(ops, op => op is PunchOp);
        DurabilityTests.AssertCrashesKeepWhatWasFlushed(chain, topPath, initial, ops, model.Length, random, Path.Combine(temp.Path, "crash"));
    }
}
