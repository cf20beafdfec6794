using PrlFuse.Core.Descriptor;
using PrlFuse.Tests.Core.Management;
using PrlFuse.Tests.Support;
using static PrlFuse.Tests.Core.Management.SnapshotTreeBundle;

namespace PrlFuse.Tests.EndToEnd;

/// <summary>
/// 'prlfuse snapshot delete', 'snapshot switch' and 'merge' through the installed binary: the views against QEMU's,
/// and the refusals with their one-line messages (kill -9 of each at random moments: <see cref="KillNineTests"/>).
/// </summary>
[Trait("Needs", "Qemu")]
[Trait("Needs", "Installed")]
public sealed class SnapshotCommandTests
{
    [Fact]
    public void DeleteSwitchAndMergeKeepWhatEachViewReads()
    {
        using var temp = new TempFolder();
        var t = SnapshotOperationTests.Tree(temp.Path, 201);
        var before = OracleViews(t.Bundle, temp.Path);

        var r = PrlFuseCli.Run("snapshot", "delete", t.Bundle, t["A"].ToString("D"));
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains($"deleted snapshot {t["A"]:B}", r.Stdout, StringComparison.Ordinal);
        var after = OracleViews(t.Bundle, temp.Path);
        Assert.Equal(4, after.Count);
        AssertViewsEqual(before, after, "after delete");
        AssertQemuClean(t.Bundle);

        r = PrlFuseCli.Run("snapshot", "switch", "--keep-current", t.Bundle, t["C"].ToString("B"));
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("kept as snapshot", r.Stdout, StringComparison.Ordinal);
        after = OracleViews(t.Bundle, temp.Path);
        AssertSame(before[t["C"]], after[t["T"]], "after switch, the current state");
        AssertQemuClean(t.Bundle);

        r = PrlFuseCli.Run("merge", t.Bundle);
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("merged 4 snapshots", r.Stdout, StringComparison.Ordinal);
        after = OracleViews(t.Bundle, temp.Path);
        AssertSame(before[t["C"]], Assert.Single(after).Value, "after merge");
        AssertQemuClean(t.Bundle);
        Assert.Single(Directory.GetFiles(t.Bundle, "*.hds"));
    }

    [Fact]
    public void RefusalsAreOneLineAndChangeNothing()
    {
        using var temp = new TempFolder();
        var t = SnapshotOperationTests.Tree(temp.Path, 202);
        string xml = File.ReadAllText(t.Descriptor);

        AssertRefused(PrlFuseCli.Run("snapshot", "delete", t.Bundle, t["T"].ToString("B")), "is the current state, which cannot be deleted");
        AssertRefused(PrlFuseCli.Run("snapshot", "delete", t.Bundle, "not-a-guid"), "is not a snapshot GUID");
        AssertRefused(PrlFuseCli.Run("snapshot", "switch", t.Bundle, t["T"].ToString("B")), "is already the current state");
        string bare = Path.Combine(t.Bundle, SnapshotOperationTests.FileOf(t, "R"));
        AssertRefused(PrlFuseCli.Run("merge", bare), "is a bare image");

        // Another program writing an image: QEMU's own lock, taken by qemu-io waiting on its input.
        using (QemuHolder.Start(Path.Combine(t.Bundle, SnapshotOperationTests.FileOf(t, "B"))))
        {
            AssertRefused(PrlFuseCli.Run("snapshot", "delete", t.Bundle, t["A"].ToString("B")), "in use");
            AssertRefused(PrlFuseCli.Run("merge", t.Bundle), "in use");
        }

        Assert.Equal(xml, File.ReadAllText(t.Descriptor));
        Assert.Equal(5, Directory.GetFiles(t.Bundle, "*.hds").Length);

        // An intent mark left by a crash: a plain check says so, a repair finishes the deletion.
        PrlFuse.Core.Management.DescriptorStore.Write(t.Descriptor, PrlFuse.Core.Management.IntentMark.Mark(DescriptorParser.ParseFile(t.Descriptor), [t["A"]]));
        var check = PrlFuseCli.Run("check", t.Bundle);
        Assert.Contains("an interrupted operation is deleting snapshot", check.Stdout, StringComparison.Ordinal);
        var repair = PrlFuseCli.Run("check", "--repair", t.Bundle);
        Assert.True(repair.ExitCode == 0, repair.Stdout + repair.Stderr);
        Assert.Contains("finished the interrupted deletion", repair.Stdout, StringComparison.Ordinal);
        Assert.Equal(4, Directory.GetFiles(t.Bundle, "*.hds").Length);
        AssertQemuClean(t.Bundle);
    }

    private static void AssertRefused(ProcessRunner.Result r, string message)
    {
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains(message, r.Stderr, StringComparison.Ordinal);
        Assert.Single(r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.DoesNotContain("   at ", r.Stderr, StringComparison.Ordinal);
    }
}

/// <summary>A mounted disk is refused with its mountpoint named, read-write or read-only.</summary>
[Collection(FuseKernelCollection.Name)]
[Trait("Needs", "Kernel")]
[Trait("Needs", "Qemu")]
[Trait("Needs", "Installed")]
public sealed class SnapshotCommandMountedTests
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void AMountedDiskIsRefusedWithItsMountpoint(bool readOnly)
    {
        using var temp = new TempFolder();
        var t = SnapshotOperationTests.Tree(temp.Path, 221);
        string xml = File.ReadAllText(t.Descriptor);
        string mountpoint = Path.Combine(temp.Path, "mnt");
        using (var mount = readOnly ? new PrlFuseMount(t.Bundle, mountpoint, "--read-only") : new PrlFuseMount(t.Bundle, mountpoint))
        {
            foreach (var args in new[] { new[] { "snapshot", "delete", t.Bundle, t["A"].ToString("B") }, ["merge", t.Bundle], ["snapshot", "switch", t.Bundle, t["C"].ToString("B")] })
            {
                var r = PrlFuseCli.Run(args);
                Assert.NotEqual(0, r.ExitCode);
                Assert.Contains($"at {mountpoint} by prlfuse", r.Stderr, StringComparison.Ordinal);
                Assert.Contains("unmount it first", r.Stderr, StringComparison.Ordinal);
            }
        }

        Assert.Equal(xml, File.ReadAllText(t.Descriptor));
        Assert.Equal(5, Directory.GetFiles(t.Bundle, "*.hds").Length);
    }

    /// <summary>'snapshot list' reads only the descriptor and the image headers and tables: a mounted disk is listed without -U, as it is offline.</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void SnapshotListOfAMountedDiskNeedsNoForceShare(bool readOnly)
    {
        using var temp = new TempFolder();
        var t = SnapshotOperationTests.Tree(temp.Path, 222);
        var offline = PrlFuseCli.Run("snapshot", "list", "--json", t.Bundle);
        Assert.True(offline.ExitCode == 0, offline.Stderr);
        string mountpoint = Path.Combine(temp.Path, "mnt");
        using (var mount = readOnly ? new PrlFuseMount(t.Bundle, mountpoint, "--read-only") : new PrlFuseMount(t.Bundle, mountpoint))
        {
            var json = PrlFuseCli.Run("snapshot", "list", "--json", t.Bundle);
            Assert.True(json.ExitCode == 0, json.Stderr);
            Assert.Equal(offline.Stdout, json.Stdout);
            var text = PrlFuseCli.Run("snapshot", "list", t.Bundle);
            Assert.True(text.ExitCode == 0, text.Stderr);
            Assert.Equal(5, text.Stdout.Split('\n').Count(l => l.TrimStart().StartsWith('{')));
            Assert.Equal(0, mount.Unmount().ExitCode);
        }
    }
}
