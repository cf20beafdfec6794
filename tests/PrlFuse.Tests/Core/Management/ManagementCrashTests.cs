using PrlFuse.Core.Checking;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Management;
using PrlFuse.Tests.Core.Formats.Parallels;
using PrlFuse.Tests.Support;
using static PrlFuse.Tests.Core.Management.ManagementTestSupport;

namespace PrlFuse.Tests.Core.Management;

/// <summary>
/// Resize and compact recorded by the recording file layer, then crashed at every write and every flush (each op
/// boundary, with a random subset of what was not yet durable kept): the image has no corruption (at most leaked
/// space, for our checker and for qemu-img check), and its view is the old one or the new one, whole.
/// </summary>
[Trait("Needs", "Qemu")]
public sealed class ManagementCrashTests
{
    [Theory]
    [InlineData(64L << 20)]
    [InlineData(4L << 20)]
    public void ACrashAnywhereInAResizeLeavesTheOldOrTheNewImage(long newSize)
    {
        using var temp = new TempFolder();
        string image = temp.Combine("bare.hds");
        Qemu.Create(image, "8M", clusterSize: "4k");
        Qemu.Write(image, "write -P 1 0 300k", "write -P 2 2M 8k", "write -P 3 3M 4k");
        byte[] initial = File.ReadAllBytes(image);
        byte[] oldView = QemuView([image], temp.Path);
        var log = new OpLog();

        DiskResizer.Resize(image, newSize, shrink: true, new ManagementOptions { OpenFile = RecordingImageFile.Opener(log, _ => true) });

        byte[] newView = QemuView([image], temp.Path);
        Assert.Equal(newSize, newView.LongLength);
        var ops = log.Snapshot();
        Assert.Contains(ops, o => o is FlushOp);
        AssertEveryCrashReadsOldOrNew(initial, ops, temp.Combine("crash.hds"), oldView, newView);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    public void ACrashAnywhereInACompactLeavesEveryViewAsItWas(int recordedLevel)
    {
        using var temp = new TempFolder();
        var chain = ResizeTests.SmallClusterChain(temp.Path, 8 << 20);
        string root = Path.Combine(chain.Bundle, chain.Levels[0].Files[0]);
        string top = Path.Combine(chain.Bundle, chain.Levels[1].Files[0]);
        Qemu.Write(root, "write -P 0 0 64k");
        Qemu.Write(top, "write -P 0 4M 8k", "write -P 9 6M 16k", "write -P 0 6M 4k");
        var before = OracleViews(chain, temp.Path);
        string recorded = Path.Combine(chain.Bundle, chain.Levels[recordedLevel].Files[0]);
        byte[] initial = File.ReadAllBytes(recorded);
        var log = new OpLog();

        DiskCompactor.Compact(chain.Bundle, new ManagementOptions { OpenFile = RecordingImageFile.Opener(log, p => p.EndsWith(chain.Levels[recordedLevel].Files[0], StringComparison.Ordinal)) });

        var ops = log.Snapshot();
        Assert.True(new FileInfo(recorded).Length < initial.Length, "the recorded image did not shrink: the test shows nothing");
        string crashBundle = temp.Folder("crash");
        foreach (string file in Directory.GetFiles(chain.Bundle))
        {
            File.Copy(file, Path.Combine(crashBundle, Path.GetFileName(file)));
        }

        string crashImage = Path.Combine(crashBundle, chain.Levels[recordedLevel].Files[0]);
        var random = new Random(521 + recordedLevel);
        int lastSeq = ops[^1].Seq;
        for (int point = 1; point <= lastSeq + 1; point++)
        {
            DurabilityTests.BuildCrashImage(initial, ops, point, random, crashImage);
            AssertNoCorruption(crashImage, point);
            using var disk = Reopen.Retrying(() => VirtualDisk.Open(crashBundle));
            for (int level = 0; level < chain.Levels.Count; level++)
            {
                byte[] view = new byte[before[level].Length];
                disk.Views[chain.Levels[level].Guid].Read(view, 0);
                AssertSame(before[level], view, $"crash at op {point}, level {level}");
            }
        }
    }

    private static void AssertEveryCrashReadsOldOrNew(byte[] initial, List<FileOp> ops, string crashImage, byte[] oldView, byte[] newView)
    {
        var random = new Random(522);
        int lastSeq = ops[^1].Seq;
        for (int point = 1; point <= lastSeq + 1; point++)
        {
            DurabilityTests.BuildCrashImage(initial, ops, point, random, crashImage);
            AssertNoCorruption(crashImage, point);
            using var disk = Reopen.Retrying(() => VirtualDisk.Open(crashImage));
            byte[] view = new byte[disk.Size];
            disk.Top.Read(view, 0);
            AssertSame(view.Length == oldView.Length ? oldView : newView, view, $"crash at op {point} (of {lastSeq}), a {view.Length}-byte view");
        }
    }

    private static void AssertNoCorruption(string image, int point)
    {
        var report = ImageChecker.Check(image);
        Assert.True(
            report.Problems.All(p => p.Kind is CheckProblemKind.LeakedSpace),
            $"crash at op {point}: {string.Join("; ", report.Problems.Select(p => p.ToLine()))}");
        var qemu = Qemu.Check(image);
        Assert.True(qemu.ExitCode is 0 or 3, $"crash at op {point}: qemu-img check exit {qemu.ExitCode}\n{qemu.Stdout}{qemu.Stderr}");
    }
}
