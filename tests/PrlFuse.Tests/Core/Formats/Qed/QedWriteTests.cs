using PrlFuse.Core.Checking;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Qed;
using PrlFuse.Tests.Core.Formats.Parallels;
using PrlFuse.Tests.Support;
using static PrlFuse.Tests.Core.Formats.Parallels.WriteTestSupport;
using static PrlFuse.Tests.Core.Formats.Qcow2.Qcow2Oracle;

namespace PrlFuse.Tests.Core.Formats.Qed;

/// <summary>
/// Writes through the engine to a QED top over a backing chain (QED over QED over raw, QED over Parallels): unaligned,
/// across clusters, over backing data, zero writes over data below; afterwards 'qemu-img check -f qed' is clean and
/// 'qemu-img compare' equals a model. Crashes at every write and sync of a recorded session (the recording file layer)
/// leave images QEMU finds no corruption in, and keep every write that was flushed.
/// </summary>
[Trait("Needs", "Qemu")]
public sealed class QedWriteTests
{
    /// <summary>base.img (raw) under mid.qed under top.qed, or base.hds (Parallels) under top.qed; returns the model of the top's view.</summary>
    private static byte[] BuildChain(string folder, int clusterSize, bool overParallels)
    {
        if (overParallels)
        {
            Img(folder, "create", "-q", "-f", "parallels", "base.hds", "8M");
            Io(folder, "parallels", "base.hds", "write -P 80 0 3M", "write -P 81 5M 1M");
            Img(folder, "create", "-q", "-f", "qed", "-o", $"cluster_size={clusterSize}", "-b", "base.hds", "-F", "parallels", "top.qed", "8M");
        }
        else
        {
            File.WriteAllBytes(Path.Combine(folder, "base.img"), Qcow2.Qcow2ReadTests.MixedContent(6 << 20, 21));
            Img(folder, "create", "-q", "-f", "qed", "-o", "cluster_size=4096", "-b", "base.img", "-F", "raw", "mid.qed", "8M");
            Io(folder, "qed", "mid.qed", "write -P 82 100000 300000", "write -z 2M 512k");
            Img(folder, "create", "-q", "-f", "qed", "-o", $"cluster_size={clusterSize}", "-b", "mid.qed", "-F", "qed", "top.qed", "8M");
        }

        Io(folder, "qed", "top.qed", "write -P 83 1M 100k");
        return QemuView(folder, "top.qed");
    }

    [Theory]
    [InlineData(4096, false, 1)]
    [InlineData(65536, false, 2)]
    [InlineData(16384, true, 3)]
    public void RandomWritesAndZeroWritesLeaveAnImageQemuFindsCleanAndEqualToTheModel(int clusterSize, bool overParallels, int seed)
    {
        using var temp = new TempFolder();
        byte[] model = BuildChain(temp.Path, clusterSize, overParallels);
        var random = new Random(seed);
        using (var disk = VirtualDisk.Open(temp.Combine("top.qed"), new DiskOpenOptions { ReadOnly = false }))
        {
            var top = disk.Top;
            Assert.True(top.IsWritable);
            for (int i = 0; i < 300; i++)
            {
                var (offset, length) = RandomWrite(random, top.Size, clusterSize);
                if (random.Next(5) == 0)
                {
                    top.Discard(offset, length);
                    model.AsSpan((int)offset, length).Clear();
                }
                else
                {
                    byte[] data = Fill(random, length);
                    top.Write(data, offset);
                    data.CopyTo(model, offset);
                }

                if (i % 50 == 0)
                {
                    AssertWholeViewEquals(top, model, $"after write {i}");
                }

                if (random.Next(20) == 0)
                {
                    disk.Flush();
                }
            }

            AssertWholeViewEquals(top, model, "before close");
        }

        var check = ProcessRunner.Run("qemu-img", ["check", "-f", "qed", temp.Combine("top.qed")], check: false);
        Assert.True(check.ExitCode == 0, check.Stdout + check.Stderr);
        Assert.False(QedTestImage.Header(temp.Combine("top.qed")).NeedsCheck);
        File.WriteAllBytes(temp.Combine("model.raw"), model);
        var compare = ProcessRunner.Run("qemu-img", ["compare", "-f", "raw", "-F", "qed", temp.Combine("model.raw"), temp.Combine("top.qed")], check: false, workingDirectory: temp.Path);
        Assert.True(compare.ExitCode == 0, compare.Stdout + compare.Stderr);
        Assert.Equal(0, QedChecker.Check(temp.Combine("top.qed")).ExitCode);
    }

    [Fact]
    public void AllocationSetsNeedCheckUntilTheMetadataIsDurable()
    {
        using var temp = new TempFolder();
        BuildChain(temp.Path, 4096, overParallels: false);
        using var disk = VirtualDisk.Open(temp.Combine("top.qed"), new DiskOpenOptions { ReadOnly = false });
        disk.Top.Write(new byte[] { 1, 2, 3 }, 7 << 20);
        Assert.True(QedTestImage.Header(temp.Combine("top.qed")).NeedsCheck);
        disk.Flush();
        Assert.False(QedTestImage.Header(temp.Combine("top.qed")).NeedsCheck);
    }

    /// <summary>A qemu-made 8 MiB image of 4 KiB clusters with data at 0, its first data entry set to what <paramref name="entry"/> gives for the file's length.</summary>
    private static string ImageWithFirstEntryAt(TempFolder temp, Func<long, ulong> entry)
    {
        Img(temp.Path, "create", "-q", "-f", "qed", "-o", "cluster_size=4096", "a.qed", "8M");
        Io(temp.Path, "qed", "a.qed", "write -P 9 0 64k");
        string image = temp.Combine("a.qed");
        QedTestImage.WriteUInt64(image, QedTestImage.FirstDataEntryOffset(image), entry(new FileInfo(image).Length));
        return image;
    }

    [Fact]
    public void ReadWriteOpenOfAnImageLeftWithNeedCheckClearsEntriesThatPointPastTheEnd()
    {
        using var temp = new TempFolder();
        string image = ImageWithFirstEntryAt(temp, _ => 1UL << 40);
        QedTestImage.SetFeatures(image, FieldLocations.FeatureNeedCheck);
        using (var disk = VirtualDisk.Open(image, new DiskOpenOptions { ReadOnly = false }))
        {
            var top = (QedImage)disk.Top.Storages[0].TopLayer;
            Assert.Equal(1, top.FixedOnOpen);
            byte[] first = new byte[4096];
            disk.Top.Read(first, 0);
            Assert.All(first, b => Assert.Equal(0, b));
        }

        // The cluster the entry pointed at is left leaked, as after QEMU's own fix: no corruption.
        Assert.False(QedTestImage.Header(image).NeedsCheck);
        Assert.Equal(3, ProcessRunner.Run("qemu-img", ["check", "-f", "qed", image], check: false).ExitCode);
        Assert.Equal(3, QedChecker.Check(image).ExitCode);
    }

    /// <summary>
    /// Fuzz seed 1 case 7267 (QED): an L2 entry one cluster past the end of the file is damaged, and must stay so
    /// when the writer grows the file over it: the cluster it points at is never allocated for another guest cluster.
    /// </summary>
    [Fact]
    public void EntryPastTheEndStaysDamagedWhenTheFileGrowsOverIt()
    {
        using var temp = new TempFolder();
        string image = ImageWithFirstEntryAt(temp, end => (ulong)end + 4096);
        Assert.Equal(0, new FileInfo(image).Length % 4096);
        byte[] data = new byte[8192];
        new Random(7267).NextBytes(data);
        using (var disk = VirtualDisk.Open(image, new DiskOpenOptions { ReadOnly = false, CacheBytes = 0 }))
        {
            // Two new clusters at the end of the file: the second is where the damaged entry points.
            disk.Top.Write(data, 4 << 20);
            Assert.ThrowsAny<IOException>(() => disk.Top.Write(new byte[4096], 0));
            byte[] back = new byte[data.Length];
            disk.Top.Read(back, 4 << 20);
            Assert.Equal(data, back);
        }

        using var again = VirtualDisk.Open(image, new DiskOpenOptions { CacheBytes = 0 });
        byte[] reopened = new byte[data.Length];
        again.Top.Read(reopened, 4 << 20);
        Assert.Equal(data, reopened);
    }

    [Theory]
    [InlineData(4096, 501)]
    [InlineData(65536, 502)]
    public void CrashAtEveryWriteAndSyncLeavesNoCorruptionAndKeepsWhatWasFlushed(int clusterSize, int seed)
    {
        using var temp = new TempFolder();
        byte[] model = BuildChain(temp.Path, clusterSize, overParallels: false);
        string topPath = temp.Combine("top.qed");
        byte[] initial = File.ReadAllBytes(topPath);
        var log = new OpLog();
        var random = new Random(seed);
        log.Mark("flushed", model: (byte[])model.Clone());
        using (var disk = VirtualDisk.Open(topPath, new DiskOpenOptions { ReadOnly = false, OpenFile = RecordingImageFile.Opener(log, p => p == topPath) }))
        {
            var top = disk.Top;
            for (int i = 0; i < 40; i++)
            {
                var (offset, length) = RandomWrite(random, top.Size, clusterSize);
                log.Mark("write", offset, length);
                if (random.Next(6) == 0)
                {
                    top.Discard(offset, length);
                    model.AsSpan((int)offset, length).Clear();
                }
                else
                {
                    byte[] data = Fill(random, length);
                    top.Write(data, offset);
                    data.CopyTo(model, offset);
                }

                if (random.Next(6) == 0)
                {
                    disk.Flush();
                    log.Mark("flushed", model: (byte[])model.Clone());
                }
            }
        }

        var ops = log.Snapshot();
        string crashRoot = temp.Combine("crash");
        Directory.CreateDirectory(crashRoot);
        foreach (string f in Directory.GetFiles(temp.Path))
        {
            File.Copy(f, Path.Combine(crashRoot, Path.GetFileName(f)));
        }

        string crashTop = Path.Combine(crashRoot, "top.qed");
        int checkedPoints = 0;
        foreach (int point in ops.Where(o => o is WriteOp or FlushOp).Select(o => o.Seq).Append(ops[^1].Seq + 1))
        {
            DurabilityTests.BuildCrashImage(initial, ops, point, random, crashTop);
            var check = ProcessRunner.Run("qemu-img", ["check", "-f", "qed", crashTop], check: false);
            Assert.True(check.ExitCode is 0 or 3, $"crash at op {point}: qemu-img check: {check.Stdout}{check.Stderr}");
            var ours = QedChecker.Check(crashTop);
            Assert.Equal(check.ExitCode, ours.ExitCode);

            var flushed = ops.OfType<MarkOp>().Last(m => m.What == "flushed" && m.Seq < point);
            var unsure = new bool[model.Length / 512];
            foreach (var w in ops.OfType<MarkOp>().Where(m => m.What == "write" && m.Seq > flushed.Seq && m.Seq < point))
            {
                for (long s = w.Offset / 512; s <= (w.Offset + w.Length - 1) / 512; s++)
                {
                    unsure[s] = true;
                }
            }

            byte[] view = new byte[model.Length];
            using (var crashed = VirtualDisk.Open(crashTop))
            {
                Assert.Equal(view.Length, crashed.Top.Read(view, 0));
            }

            for (int s = 0; s < unsure.Length; s++)
            {
                if (!unsure[s] && !view.AsSpan(s * 512, 512).SequenceEqual(flushed.Model.AsSpan(s * 512, 512)))
                {
                    Assert.Fail($"crash at op {point}: sector {s}, flushed at op {flushed.Seq} and not changed since, reads wrong");
                }
            }

            checkedPoints++;
        }

        Assert.True(checkedPoints > 40);
    }
}
