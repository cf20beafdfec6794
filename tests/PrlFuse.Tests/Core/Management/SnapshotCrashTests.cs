using PrlFuse.Core.Checking;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Management;
using PrlFuse.Tests.Support;
using static PrlFuse.Tests.Core.Management.SnapshotTreeBundle;

namespace PrlFuse.Tests.Core.Management;

/// <summary>
/// Delete, merge and switch recorded write by write (the recording file layer), then a crash simulated at every write
/// and every fsync (each image keeps what an fsync that returned covered, and a random part of the rest), the next
/// command's recovery run, and every view compared: each remaining snapshot reads what it read before, the disk is the
/// old one or the new one, no intent mark is left, and every image is clean (ours at every point, QEMU's at some).
/// </summary>
[Trait("Needs", "Qemu")]
public sealed class SnapshotCrashTests
{
    public enum Operation
    {
        DeleteWithTwoChildren,
        DeleteDown,
        DeleteUp,
        DeleteLeaf,
        Merge,
        Switch,
        SwitchKeepingCurrent,
    }

    [Theory]
    [InlineData(Operation.DeleteWithTwoChildren, 101)]
    [InlineData(Operation.DeleteDown, 102)]
    [InlineData(Operation.DeleteUp, 103)]
    [InlineData(Operation.DeleteLeaf, 104)]
    [InlineData(Operation.Merge, 105)]
    [InlineData(Operation.Merge, 106)]
    [InlineData(Operation.Switch, 107)]
    [InlineData(Operation.SwitchKeepingCurrent, 108)]
    public void ACrashAtEveryWriteAndSyncLeavesTheOldOrTheNewDisk(Operation operation, int seed)
    {
        using var temp = new TempFolder();
        string originalRoot = Path.Combine(temp.Path, "original");
        Directory.CreateDirectory(originalRoot);
        var t = SnapshotOperationTests.Tree(originalRoot, seed);
        if (operation is Operation.DeleteDown or Operation.DeleteUp)
        {
            string big = SnapshotOperationTests.FileOf(t, operation == Operation.DeleteDown ? "B" : "T");
            Qemu.Write(Path.Combine(t.Bundle, big), "write -P 77 0 3M");
        }

        var before = OracleViews(t.Bundle, temp.Path);
        string work = Path.Combine(temp.Path, "work");
        TempFolder.CopyFiles(t.Bundle, work);
        var files = new RecordingBundleFiles();
        SwitchResult? switched = null;
        switch (operation)
        {
            case Operation.DeleteWithTwoChildren:
                SnapshotMerger.Delete(work, t["A"], files);
                break;
            case Operation.DeleteDown or Operation.DeleteUp:
                SnapshotMerger.Delete(work, t["B"], files);
                break;
            case Operation.DeleteLeaf:
                SnapshotMerger.Delete(work, t["C"], files);
                break;
            case Operation.Merge:
                SnapshotMerger.Merge(work, files);
                break;
            default:
                switched = SnapshotSwitcher.Switch(work, t["C"], operation == Operation.SwitchKeepingCurrent, files);
                break;
        }

        var ops = files.Ops;
        Assert.Contains(ops, o => o is DescriptorOp);
        var points = ops.Select(o => o.Seq).Concat(ops.OfType<ImageSyncOp>().Select(s => s.DoneSeq)).Append(ops[^1].Seq + 1).Distinct().Order().ToList();
        var random = new Random(seed);
        bool sawOld = false;
        bool sawNew = false;
        for (int i = 0; i < points.Count; i++)
        {
            string crash = Path.Combine(temp.Path, $"crash{i % 2}");
            if (Directory.Exists(crash))
            {
                Directory.Delete(crash, recursive: true);
            }

            TempFolder.CopyFiles(t.Bundle, crash);
            bool all = i % 5 == 0;
            RecordingBundleFiles.Replay(ops, points[i], t.Bundle, crash, () => all || random.Next(2) == 0);
            string context = $"{operation}, crash at op {points[i]} of {points[^1]}";

            // The next command's first step.
            SnapshotMerger.FinishInterrupted(Path.Combine(crash, "DiskDescriptor.xml"));

            var d = DescriptorParser.ParseFile(Path.Combine(crash, "DiskDescriptor.xml"));
            Assert.Empty(IntentMark.Marked(d));
            var after = OurViews(crash);
            bool isNew = CheckViews(operation, t, before, after, switched, context);
            sawOld |= !isNew;
            sawNew |= isNew;
            foreach (var image in d.Storages.SelectMany(s => s.Images))
            {
                var report = ImageChecker.Check(Path.Combine(crash, image.File));
                Assert.True(report.Problems.Count == 0, $"{context}: {string.Join("; ", report.Problems.Select(p => p.ToLine()))}");
            }

            if (i % 10 == 0 || i == points.Count - 1)
            {
                AssertQemuClean(crash);
            }
        }

        Assert.True(sawOld && sawNew, $"crashes left old {sawOld}, new {sawNew}");
    }

    /// <summary>Checks the views after a crash and recovery; returns whether the disk is the new one.</summary>
    private static bool CheckViews(Operation operation, SnapshotTreeBundle t, Dictionary<Guid, byte[]> before, Dictionary<Guid, byte[]> after, SwitchResult? switched, string context)
    {
        if (switched is not null)
        {
            var top = t["T"];
            bool isNew = after.Count != before.Count || !after[top].AsSpan().SequenceEqual(before[top]);
            foreach (var (guid, bytes) in after)
            {
                byte[] expected = !before.ContainsKey(guid) ? before[top] : guid == top && isNew ? before[t["C"]] : before[guid];
                AssertSame(expected, bytes, $"{context}: snapshot {guid:B}");
            }

            Assert.Equal(operation == Operation.SwitchKeepingCurrent && isNew ? before.Count + 1 : before.Count, after.Count);
            return isNew;
        }

        AssertViewsEqual(before, after, context);
        int gone = operation == Operation.Merge ? before.Count - 1 : 1;
        Assert.True(after.Count == before.Count || after.Count == before.Count - gone, $"{context}: {after.Count} snapshots");
        return after.Count != before.Count;
    }
}
