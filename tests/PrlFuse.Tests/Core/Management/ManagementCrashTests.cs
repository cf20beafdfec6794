using PrlFuse.Core.Checking;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Management;
using PrlFuse.Tests.Support;
using static PrlFuse.Tests.Core.Management.ManagementTestSupport;

namespace PrlFuse.Tests.Core.Management;

/// <summary>
/// Resize and compact of a whole disk (every image of the chain and the descriptor) recorded by the recording file
/// layer, then crashed at every write and every fsync (each image keeps what an fsync that returned covered, and a
/// random part of the rest): no image is corrupt (at most leaked space), every view is the old one or the new one,
/// whole; and the next command (the same one, run again) leaves the new disk with every image clean, for our checker
/// and for qemu-img check.
/// </summary>
[Trait("Needs", "Qemu")]
public sealed class ManagementCrashTests
{
    [Theory]
    [InlineData(false, 64L << 20)]
    [InlineData(false, 4L << 20)]
    [InlineData(true, 64L << 20)]
    [InlineData(true, 4L << 20)]
    public void ACrashAnywhereInAResizeLeavesTheOldOrTheNewDiskAndTheNextResizeFinishesIt(bool bareImage, long newSize)
    {
        using var temp = new TempFolder();
        var chain = SmallChain(temp.Folder("original"));
        string Target(string bundle) => bareImage ? Path.Combine(bundle, chain.Levels[0].Files[0]) : bundle;
        const long OldSize = 8L << 20;
        var before = Views(Target(chain.Bundle));
        uint dataOff = ResizeTests.ReadHeader(Path.Combine(chain.Bundle, chain.Levels[0].Files[0])).DataOffsetSectors;
        string work = temp.Combine("work");
        TempFolder.CopyFiles(chain.Bundle, work);
        var files = new RecordingBundleFiles();

        DiskResizer.Resize(Target(work), newSize, shrink: true, new ManagementOptions { Files = files });

        var ops = files.Ops;
        Assert.Contains(ops, o => o is ImageSyncOp);
        Assert.Equal(!bareImage, ops.Any(o => o is DescriptorOp));
        if (newSize > OldSize)
        {
            Assert.True(ResizeTests.ReadHeader(Path.Combine(work, chain.Levels[0].Files[0])).DataOffsetSectors > dataOff, "no cluster was moved out of the grown BAT's way: the test shows nothing");
        }

        AssertEveryCrash(ops, (int)(newSize >> 20), chain.Bundle, temp.Path, (crash, context) =>
        {
            var views = Views(Target(crash));
            long size = views.First().Value.LongLength;
            Assert.True(size is OldSize || size == newSize, $"{context}: a {size}-byte disk");
            foreach (var (guid, view) in views)
            {
                AssertSame(Resized(before[guid], size), view, $"{context}, snapshot {guid:B}");
            }

            return size == newSize;
        }, crash =>
        {
            DiskResizer.Resize(Target(crash), newSize, shrink: true);
            foreach (var (guid, view) in Views(Target(crash)))
            {
                AssertSame(Resized(before[guid], newSize), view, $"after the next resize, snapshot {guid:B}");
            }
        });
    }

    [Theory]
    [InlineData(2, 521)]
    [InlineData(3, 522)]
    public void ACrashAnywhereInACompactLeavesEveryViewAsItWasAndTheNextCompactFinishesIt(int depth, int seed)
    {
        using var temp = new TempFolder();
        var chain = SmallChain(temp.Folder("original"), depth);
        string root = Path.Combine(chain.Bundle, chain.Levels[0].Files[0]);
        string top = Path.Combine(chain.Bundle, chain.Levels[^1].Files[0]);
        Qemu.Write(root, "write -P 0 0 64k", "write -P 0 5M 32k", "write -P 6 7M 64k");
        Qemu.Write(top, "write -P 0 4M 8k", "write -P 9 6M 16k", "write -P 0 6M 4k", "write -P 0 7M 4k");
        var before = Views(chain.Bundle);
        long[] sizes = [.. chain.Levels.Select(l => new FileInfo(Path.Combine(chain.Bundle, l.Files[0])).Length)];
        string work = temp.Combine("work");
        TempFolder.CopyFiles(chain.Bundle, work);
        var files = new RecordingBundleFiles();

        DiskCompactor.Compact(work, new ManagementOptions { Files = files });

        long[] compacted = [.. chain.Levels.Select(l => new FileInfo(Path.Combine(work, l.Files[0])).Length)];
        Assert.True(compacted.Zip(sizes).Count(p => p.First < p.Second) >= 2, "fewer than two images shrank: the test shows nothing");
        AssertEveryCrash(files.Ops, seed, chain.Bundle, temp.Path, (crash, context) =>
        {
            foreach (var (guid, view) in Views(crash))
            {
                AssertSame(before[guid], view, $"{context}, snapshot {guid:B}");
            }

            return chain.Levels.Select(l => new FileInfo(Path.Combine(crash, l.Files[0])).Length).SequenceEqual(compacted);
        }, crash =>
        {
            DiskCompactor.Compact(crash);
            foreach (var (guid, view) in Views(crash))
            {
                AssertSame(before[guid], view, $"after the next compact, snapshot {guid:B}");
            }

            for (int level = 0; level < chain.Levels.Count; level++)
            {
                long length = new FileInfo(Path.Combine(crash, chain.Levels[level].Files[0])).Length;
                Assert.True(length <= compacted[level], $"after the next compact, level {level} takes {length} bytes, {compacted[level]} after an uninterrupted one");
            }
        });
    }

    /// <summary>
    /// Builds what a crash at every point of <paramref name="ops"/> leaves (from a copy of <paramref name="original"/>),
    /// checks that no image is corrupt and what <paramref name="checkCrash"/> checks (it returns whether the disk is the
    /// new one), runs <paramref name="next"/>, and checks that every image is then clean. Both an old and a new disk
    /// must have been seen.
    /// </summary>
    private static void AssertEveryCrash(List<BundleOp> ops, int seed, string original, string scratch, Func<string, string, bool> checkCrash, Action<string> next)
    {
        // The last point comes after the last fsync returned: the operation's end.
        var points = ops.Select(o => o.Seq).Concat(ops.OfType<ImageSyncOp>().Select(s => s.DoneSeq)).Distinct().Order().ToList();
        points.Add(points[^1] + 1);
        var random = new Random(seed);
        bool sawOld = false;
        bool sawNew = false;
        for (int i = 0; i < points.Count; i++)
        {
            string crash = Path.Combine(scratch, $"crash{i % 2}");
            if (Directory.Exists(crash))
            {
                Directory.Delete(crash, recursive: true);
            }

            TempFolder.CopyFiles(original, crash);
            bool all = i % 5 == 0 || i == points.Count - 1;
            RecordingBundleFiles.Replay(ops, points[i], original, crash, () => all || random.Next(2) == 0);
            string context = $"crash at op {points[i]} of {points[^1]}";
            var images = Directory.GetFiles(crash, "*.hds");
            foreach (string image in images)
            {
                var report = ImageChecker.Check(image);
                Assert.True(report.Problems.All(p => p.Kind is CheckProblemKind.LeakedSpace), $"{context}: {string.Join("; ", report.Problems.Select(p => p.ToLine()))}");
            }

            bool isNew = checkCrash(crash, context);
            sawOld |= !isNew;
            sawNew |= isNew;
            next(crash);
            foreach (string image in images)
            {
                var report = ImageChecker.Check(image);
                Assert.True(report.Problems.Count == 0, $"{context}, after the next command: {string.Join("; ", report.Problems.Select(p => p.ToLine()))}");
                if (i % 7 == 0 || i == points.Count - 1)
                {
                    var qemu = Qemu.Check(image);
                    Assert.True(qemu.ExitCode == 0, $"{context}, after the next command: qemu-img check {Path.GetFileName(image)}: {qemu.Stdout}{qemu.Stderr}");
                }
            }
        }

        Assert.True(sawOld && sawNew, $"crashes left old {sawOld}, new {sawNew}");
    }

    /// <summary>An 8 MiB chain of 4 KiB-cluster images (so that a BAT grown to 64 MiB takes the place of data clusters), with data below 4 MiB only.</summary>
    private static QemuChain SmallChain(string folder, int depth = 2)
    {
        const long Bytes = 8L << 20;
        var chain = QemuChain.Build(folder, depth, [Bytes / 512], 505);
        foreach (var level in chain.Levels)
        {
            string path = Path.Combine(chain.Bundle, level.Files[0]);
            File.Delete(path);
            Qemu.Create(path, "8M", clusterSize: "4k");
        }

        Qemu.Write(Path.Combine(chain.Bundle, chain.Levels[0].Files[0]), "write -P 1 0 300k", "write -P 2 2M 8k", "write -P 3 3M 4k");
        for (int level = 1; level < depth; level++)
        {
            Qemu.Write(Path.Combine(chain.Bundle, chain.Levels[level].Files[0]), $"write -P {7 + level} {level * 4}k 8k", "write -P 0 2M 4k", $"write -P 9 {level}M 3000");
        }

        var qemu = OracleViews(chain, folder);
        var ours = Views(chain.Bundle);
        for (int level = 0; level < depth; level++)
        {
            AssertSame(qemu[level], ours[chain.Levels[level].Guid], $"level {level}, ours against QEMU's");
        }

        return chain;
    }

    /// <summary>Every view the disk (a bundle or a bare image) has, read through the engine.</summary>
    private static Dictionary<Guid, byte[]> Views(string disk)
    {
        using var opened = Reopen.Retrying(() => VirtualDisk.Open(disk, new DiskOpenOptions { CacheBytes = 0 }));
        return opened.Views.ToDictionary(v => v.Key, v => BundleOracle.ReadAll(v.Value));
    }

    /// <summary><paramref name="view"/> cut, or zero-extended, to <paramref name="size"/>.</summary>
    private static byte[] Resized(byte[] view, long size)
    {
        var result = new byte[size];
        view.AsSpan(0, (int)Math.Min(size, view.Length)).CopyTo(result);
        return result;
    }
}
