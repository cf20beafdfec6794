using PrlFuse.Core;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.Management;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.Management;

/// <summary>create, snapshot create and restore-descriptor against QEMU as the oracle, crashes at every step included.</summary>
[Trait("Needs", "Qemu")]
public sealed class DiskManagementTests
{
    [Theory]
    [InlineData(100L << 20, 1L << 20, false)]
    [InlineData((40L << 20) + 512, 64L << 10, false)]
    [InlineData(5L << 20, 4096L, false)]
    [InlineData(24L << 20, 1L << 20, true)]
    public void ACreatedDiskIsWhatQemuReadsAsAnEmptyDiskOfItsSize(long size, long cluster, bool plain)
    {
        using var temp = new TempFolder();
        string bundle = BundleCreator.Create(temp.Combine("new.hdd"), size, plain, cluster);
        var d = DescriptorParser.ParseFile(Path.Combine(bundle, DescriptorStore.FileName));
        var image = Assert.Single(Assert.Single(d.Storages).Images);
        Assert.Equal(DiskDescriptor.PredefinedTopGuid, image.Guid);
        Assert.Equal($"new.hdd.0.{DiskDescriptor.FormatGuid(DiskDescriptor.PredefinedTopGuid)}.hds", image.File);
        Assert.Equal(size / 512, d.Parameters.DiskSizeSectors);
        string path = Path.Combine(bundle, image.File);

        var info = Qemu.Info("--output=json", path);
        Assert.Contains($"\"virtual-size\": {size}", info.Stdout, StringComparison.Ordinal);
        Assert.Contains(plain ? "\"format\": \"raw\"" : "\"format\": \"parallels\"", info.Stdout, StringComparison.Ordinal);
        if (!plain)
        {
            // Byte for byte what qemu-img create makes, and as clean for qemu-img check (which reports a leak in its
            // own new images when the BAT ends inside a small cluster).
            string qemuMade = temp.Combine("qemu.hds");
            Qemu.Create(qemuMade, size.ToString(System.Globalization.CultureInfo.InvariantCulture), clusterSize: $"{cluster / 1024}k");
            Assert.Equal(File.ReadAllBytes(qemuMade), File.ReadAllBytes(path));
            Assert.Equal(Qemu.Check(qemuMade).ExitCode, Qemu.Check(path).ExitCode);
            Assert.True(ParallelsHeader.TryRead(File.ReadAllBytes(path).AsSpan(0, 64), out var header, out _));
            Assert.Equal(ParallelsMagic.WithouFreSpacExt, header.Magic);
            Assert.Equal(cluster, header.ClusterBytes);
            Assert.Equal(0, header.DataOffsetSectors * 512 % cluster);
            Assert.Equal(header.DataOffsetSectors * 512L, new FileInfo(path).Length);
        }
        else
        {
            Assert.Equal(size, new FileInfo(path).Length);
        }

        // Written through prlfuse, QEMU reads what was written.
        var data = new byte[3 << 20];
        new Random(7).NextBytes(data);
        using (var disk = VirtualDisk.Open(bundle, new DiskOpenOptions { ReadOnly = false }))
        {
            Assert.Equal(size, disk.Size);
            disk.Top.Write(data, size - data.Length);
        }

        var views = BundleOracle.AssertEveryViewMatchesQemu(bundle, temp.Path);
        Assert.True(views[DiskDescriptor.PredefinedTopGuid].AsSpan((int)(size - data.Length)).SequenceEqual(data));
    }

    [Fact]
    public void CreateRefusesAnExistingTargetAndBadSizesAndLeavesNothingBehind()
    {
        using var temp = new TempFolder();
        Directory.CreateDirectory(temp.Combine("taken.hdd"));
        File.WriteAllText(temp.Combine("file.hdd"), "x");
        Assert.Contains("already exists", Assert.Throws<PrlFuseException>(() => BundleCreator.Create(temp.Combine("taken.hdd"), 1 << 20, false, 1 << 20)).Message, StringComparison.Ordinal);
        Assert.Contains("already exists", Assert.Throws<PrlFuseException>(() => BundleCreator.Create(temp.Combine("file.hdd"), 1 << 20, false, 1 << 20)).Message, StringComparison.Ordinal);
        Assert.Throws<PrlFuseException>(() => BundleCreator.Create(temp.Combine("a.hdd"), 1000, false, 1 << 20));
        Assert.Throws<PrlFuseException>(() => BundleCreator.Create(temp.Combine("a.hdd"), 1 << 20, false, 3 << 20));
        Assert.Throws<PrlFuseException>(() => BundleCreator.Create(temp.Combine("no/such/a.hdd"), 1 << 20, false, 1 << 20));
        Assert.Equal(["file.hdd", "taken.hdd"], Directory.GetFileSystemEntries(temp.Path).Select(Path.GetFileName).Order(StringComparer.Ordinal));
    }

    [Theory]
    [InlineData(1, new long[] { 16 * 2048 }, 11)]
    [InlineData(3, new long[] { 8 * 2048, 5 * 2048 + 8 }, 12)]
    public void ASnapshotKeepsTheStateItWasTakenInWhileTheCurrentStateGoesOn(int depth, long[] storages, int seed)
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, depth, storages, seed, predefinedTop: true);
        var before = BundleOracle.AssertEveryViewMatchesQemu(chain.Bundle, temp.Path);
        Guid top = chain.Levels[^1].Guid;

        Guid snapshot = SnapshotCreator.Create(chain.Bundle, "first one");

        var after = BundleOracle.AssertEveryViewMatchesQemu(chain.Bundle, temp.Path);
        Assert.Equal(before.Count + 1, after.Count);
        Assert.Equal(before[top], after[snapshot]);
        Assert.Equal(before[top], after[top]);
        foreach (var (guid, bytes) in before.Where(v => v.Key != top))
        {
            Assert.Equal(bytes, after[guid]);
        }

        // The current state keeps its GUID and goes on in new empty images; the snapshot has the old ones and the name.
        var d = DescriptorParser.ParseFile(Path.Combine(chain.Bundle, DescriptorStore.FileName));
        Assert.Equal(snapshot, d.Snapshots.Shots.Single(s => s.Guid == top).ParentGuid);
        for (int s = 0; s < storages.Length; s++)
        {
            Assert.Equal(chain.Levels[^1].Files[s], d.Storages[s].FindImage(snapshot)!.File);
            Assert.Equal(0, new ExpandableImageProbe(Path.Combine(chain.Bundle, d.Storages[s].FindImage(top)!.File)).Allocated);
        }

        using (var disk = VirtualDisk.Open(chain.Bundle, new DiskOpenOptions { ReadOnly = false }))
        {
            var listed = SnapshotLister.List(disk);
            Assert.Equal("first one", listed.Single(e => e.Guid == snapshot).Name);
            Assert.True(listed[^1].IsCurrent);
            Assert.Equal(depth, listed[^1].Depth);

            // Writes to the current state leave the snapshot as it was.
            var data = new byte[1 << 20];
            new Random(seed).NextBytes(data);
            disk.Top.Write(data, 4096);
        }

        var changed = BundleOracle.AssertEveryViewMatchesQemu(chain.Bundle, temp.Path);
        Assert.Equal(before[top], changed[snapshot]);
        Assert.NotEqual(before[top], changed[top]);

        // A second snapshot stacks on the first.
        Guid second = SnapshotCreator.Create(chain.Bundle, null);
        var twice = BundleOracle.AssertEveryViewMatchesQemu(chain.Bundle, temp.Path);
        Assert.Equal(changed[top], twice[second]);
        Assert.Equal(before[top], twice[snapshot]);
        Assert.True(File.Exists(DescriptorStore.BackupPath(Path.Combine(chain.Bundle, DescriptorStore.FileName))));
    }

    [Fact]
    public void ASnapshotOfAPlainDiskStacksAnExpandableImageOnIt()
    {
        using var temp = new TempFolder();
        string bundle = BundleCreator.Create(temp.Combine("p.hdd"), 16 << 20, plain: true, 1 << 20);
        var data = new byte[16 << 20];
        new Random(3).NextBytes(data);
        using (var disk = VirtualDisk.Open(bundle, new DiskOpenOptions { ReadOnly = false }))
        {
            disk.Top.Write(data, 0);
        }

        Guid snapshot = SnapshotCreator.Create(bundle, null);
        var views = BundleOracle.AssertEveryViewMatchesQemu(bundle, temp.Path);
        Assert.Equal(data, views[snapshot]);
        Assert.Equal(data, views[DiskDescriptor.PredefinedTopGuid]);
    }

    [Fact]
    public void SnapshotCreateIsRefusedWhileAWriterHoldsTheDiskAndForBareImages()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [4 * 2048], 21, predefinedTop: true);
        string xml = Path.Combine(chain.Bundle, DescriptorStore.FileName);
        string before = File.ReadAllText(xml);
        using (var writer = VirtualDisk.Open(chain.Bundle, new DiskOpenOptions { ReadOnly = false }))
        {
            var e = Assert.Throws<PrlFuseException>(() => SnapshotCreator.Create(chain.Bundle, null));
            Assert.Contains("snapshot create refused: the disk is in use", e.Message, StringComparison.Ordinal);
        }

        using (var reader = VirtualDisk.Open(chain.Bundle))
        {
            Assert.Contains("in use", Assert.Throws<PrlFuseException>(() => SnapshotCreator.Create(chain.Bundle, null)).Message, StringComparison.Ordinal);
        }

        Assert.Equal(before, File.ReadAllText(xml));
        Assert.Equal(chain.Levels.Count * 1, Directory.GetFiles(chain.Bundle, "*.hds").Length);

        string bare = Path.Combine(chain.Bundle, chain.Levels[0].Files[0]);
        Assert.Contains("bare image", Assert.Throws<PrlFuseException>(() => SnapshotCreator.Create(bare, null)).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void RestoreDescriptorWritesOneForASingleImageAndNothingOtherwise()
    {
        using var temp = new TempFolder();
        foreach (bool plain in new[] { false, true })
        {
            string bundle = BundleCreator.Create(temp.Combine(plain ? "p.hdd" : "e.hdd"), 12 << 20, plain, 256 << 10);
            using (var disk = VirtualDisk.Open(bundle, new DiskOpenOptions { ReadOnly = false }))
            {
                disk.Top.Write(Enumerable.Repeat((byte)0x5A, 1 << 20).ToArray(), 3 << 20);
            }

            var views = BundleOracle.ReadViews(bundle);
            string xml = Path.Combine(bundle, DescriptorStore.FileName);
            Assert.Throws<PrlFuseException>(() => DescriptorRestorer.Restore(bundle));
            File.Delete(xml);

            var result = DescriptorRestorer.Restore(bundle);
            Assert.True(result.Written);
            Assert.Equal(plain ? ImageType.Plain : ImageType.Compressed, Assert.Single(result.Images).Type);
            Assert.Equal(views[DiskDescriptor.PredefinedTopGuid], BundleOracle.AssertEveryViewMatchesQemu(bundle, temp.Path)[DiskDescriptor.PredefinedTopGuid]);
        }

        var chain = QemuChain.Build(temp.Path, 2, [4 * 2048], 31, predefinedTop: true);
        string chainXml = Path.Combine(chain.Bundle, DescriptorStore.FileName);
        File.Delete(chainXml);
        var refused = DescriptorRestorer.Restore(chain.Bundle);
        Assert.False(refused.Written);
        Assert.Equal(2, refused.Images.Count);
        Assert.False(File.Exists(chainXml));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ACrashAtAnyStepOfCreateLeavesNoDiskOrTheWholeOne(bool plain)
    {
        using var temp = new TempFolder();
        string work = temp.Folder("work");
        string before = temp.Folder("before");
        var files = new RecordingFiles(work);
        const long Size = 6 << 20;
        BundleCreator.Create(Path.Combine(work, "c.hdd"), Size, plain, 1 << 20, files);

        var random = new Random(41);
        int last = files.Ops.Count + 1;
        for (int point = 1; point <= last; point++)
        {
            foreach (var trial in new[] { null, random, random })
            {
                string crashed = temp.Combine($"crash-{point}-{Guid.NewGuid():N}");
                files.CrashState(before, crashed, point, trial);
                string bundle = Path.Combine(crashed, "c.hdd");
                if (!Directory.Exists(bundle))
                {
                    Assert.True(point < last, "the finished create left no bundle");
                    Directory.Delete(crashed, recursive: true);
                    continue;
                }

                var views = BundleOracle.AssertEveryViewMatchesQemu(bundle, temp.Path);
                Assert.True(new byte[Size].AsSpan().SequenceEqual(Assert.Single(views).Value), $"crash before op {point}");
                Directory.Delete(crashed, recursive: true);
            }
        }

        Assert.True(Directory.Exists(Path.Combine(work, "c.hdd")));
    }

    [Theory]
    [InlineData(1, new long[] { 4 * 2048 }, 51)]
    [InlineData(2, new long[] { 3 * 2048, 2 * 2048 + 16 }, 52)]
    public void ACrashAtAnyStepOfSnapshotCreateLeavesTheOldDiskOrTheNewOne(int depth, long[] storages, int seed)
    {
        using var temp = new TempFolder();
        string work = temp.Folder("work");
        var chain = QemuChain.Build(work, depth, storages, seed, predefinedTop: true);
        var old = BundleOracle.ReadViews(chain.Bundle);
        Guid top = chain.Levels[^1].Guid;
        string before = temp.Combine("before");
        ProcessRunner.Run("cp", "-a", work, before);

        var files = new RecordingFiles(work);
        Guid snapshot = SnapshotCreator.Create(chain.Bundle, "s", files);
        Assert.Contains(files.Ops, o => o is SyncFolderOp);

        var random = new Random(seed);
        int last = files.Ops.Count + 1;
        int sawNew = 0;
        for (int point = 1; point <= last; point++)
        {
            foreach (var trial in new[] { null, random, random })
            {
                string crashed = temp.Combine($"crash-{point}-{Guid.NewGuid():N}");
                files.CrashState(before, crashed, point, trial);
                string bundle = Path.Combine(crashed, Path.GetFileName(chain.Bundle));
                var views = BundleOracle.AssertEveryViewMatchesQemu(bundle, temp.Path);
                Assert.Equal(old[top], views[top]);
                if (views.ContainsKey(snapshot))
                {
                    sawNew++;
                    Assert.Equal(old.Count + 1, views.Count);
                    Assert.Equal(old[top], views[snapshot]);
                }
                else
                {
                    Assert.Equal(old.Count, views.Count);
                    Assert.True(point < last, "the finished snapshot create is not in the descriptor");
                }

                foreach (var (guid, bytes) in old)
                {
                    Assert.True(bytes.AsSpan().SequenceEqual(views[guid]), $"crash before op {point}: view {guid:B} changed");
                }

                // The interrupted disk takes the next snapshot as any other.
                Guid next = SnapshotCreator.Create(bundle, null);
                Assert.Equal(old[top], BundleOracle.ReadViews(bundle)[next]);
                Directory.Delete(crashed, recursive: true);
            }
        }

        Assert.True(sawNew >= 3, "the finished snapshot create was never seen");
    }

    /// <summary>An expandable image's allocated cluster count, read from its BAT.</summary>
    private sealed class ExpandableImageProbe
    {
        public ExpandableImageProbe(string path)
        {
            using var file = PrlFuse.Core.IO.PositionalImageFile.Open(path, writable: false);
            Assert.True(ParallelsLayout.TryRead(file, null, out var layout, out _, out string error), error);
            Allocated = layout.Bat.CountAllocated();
        }

        public int Allocated { get; }
    }
}
