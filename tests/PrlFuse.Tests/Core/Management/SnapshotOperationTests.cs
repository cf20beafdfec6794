using PrlFuse.Core;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.IO;
using PrlFuse.Core.Management;
using PrlFuse.Tests.Support;
using static PrlFuse.Tests.Core.Management.SnapshotTreeBundle;

namespace PrlFuse.Tests.Core.Management;

/// <summary>
/// Snapshot delete, merge and switch against QEMU as the oracle: after each operation every image passes 'qemu-img
/// check' clean, and every remaining snapshot reads, through QEMU's chain and through ours, what it read before.
/// </summary>
[Trait("Needs", "Qemu")]
public sealed class SnapshotOperationTests
{
    private const long Size = 4L << 20;

    /// <summary>R - A - {B - T (top), C}: A has two children, C is a leaf, clusters of three sizes.</summary>
    internal static SnapshotTreeBundle Tree(string folder, int seed) =>
        SnapshotTreeBundle.Build(folder, seed, Size, ("R", null, 64), ("A", "R", 256), ("B", "A", 64), ("C", "A", 1024), ("T", "B", 64));

    [Theory]
    [InlineData(11)]
    [InlineData(12)]
    public void DeletingASnapshotWithTwoChildrenKeepsEveryOtherView(int seed)
    {
        using var temp = new TempFolder();
        var t = Tree(temp.Path, seed);
        var before = OracleViews(t.Bundle, temp.Path);
        string doomedFile = FileOf(t, "A");

        SnapshotMerger.Delete(t.Bundle, t["A"]);

        AssertAfter(t, before, temp.Path, expectedCount: 4);
        Assert.False(File.Exists(Path.Combine(t.Bundle, doomedFile)));
        var tree = TreeOf(t);
        Assert.Equal(t["R"], tree.ParentOf(t["B"]));
        Assert.Equal(t["R"], tree.ParentOf(t["C"]));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void DeletingASnapshotWithOneChildMergesTheCheaperWay(bool childSmall)
    {
        using var temp = new TempFolder();
        var t = Tree(temp.Path, childSmall ? 21 : 22);

        // The cost decides: the doomed B much larger than its child T merges down (T's clusters into B's file), and
        // the other way round up (B's clusters into T's file).
        string big = childSmall ? FileOf(t, "B") : FileOf(t, "T");
        Qemu.Write(Path.Combine(t.Bundle, big), "write -P 77 0 3M");
        var before = OracleViews(t.Bundle, temp.Path);
        string bFile = FileOf(t, "B");
        string tFile = FileOf(t, "T");

        SnapshotMerger.Delete(t.Bundle, t["B"]);

        AssertAfter(t, before, temp.Path, expectedCount: 4);
        Assert.Equal(childSmall ? bFile : tFile, FileOf(t, "T"));
        Assert.False(File.Exists(Path.Combine(t.Bundle, childSmall ? tFile : bFile)));
        Assert.Equal(t["A"], TreeOf(t).ParentOf(t["T"]));
    }

    [Fact]
    public void DeletingTheRootAndALeaf()
    {
        using var temp = new TempFolder();
        var t = Tree(temp.Path, 31);
        var before = OracleViews(t.Bundle, temp.Path);
        string leaf = FileOf(t, "C");

        SnapshotMerger.Delete(t.Bundle, t["C"]);
        AssertAfter(t, before, temp.Path, expectedCount: 4);
        Assert.False(File.Exists(Path.Combine(t.Bundle, leaf)));

        SnapshotMerger.Delete(t.Bundle, t["R"]);
        AssertAfter(t, before, temp.Path, expectedCount: 3);
        Assert.Equal(t["A"], TreeOf(t).Root);
    }

    [Theory]
    [InlineData(41)]
    [InlineData(42)]
    public void MergeLeavesOneImageThatReadsAsTheCurrentState(int seed)
    {
        using var temp = new TempFolder();
        var t = Tree(temp.Path, seed);
        var before = OracleViews(t.Bundle, temp.Path);

        Assert.Equal(4, SnapshotMerger.Merge(t.Bundle));

        AssertAfter(t, before, temp.Path, expectedCount: 1);
        Assert.Equal(DescriptorBuilder.PredefinedTop, TreeOf(t).Top);
        var named = NamedFiles(t.Bundle);
        Assert.Equal(named, Directory.GetFiles(t.Bundle, "*.hds").Select(f => Path.GetFileName(f)).ToHashSet());
        Assert.Equal(0, SnapshotMerger.Merge(t.Bundle));
    }

    [Fact]
    public void MergeOfASplitDiskKeepsTheCurrentState()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 3, [6 * 2048, 4 * 2048], 51);
        byte[] top = chain.OracleView(2, temp.Path);

        SnapshotMerger.Merge(chain.Bundle);

        var after = OracleViews(chain.Bundle, temp.Path);
        Assert.Single(after);
        AssertSame(top, after.Values.Single(), "merged split disk, QEMU");
        AssertSame(top, OurViews(chain.Bundle).Values.Single(), "merged split disk, ours");
        AssertQemuClean(chain.Bundle);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void SwitchMakesASnapshotTheCurrentState(bool keepCurrent)
    {
        using var temp = new TempFolder();
        var t = Tree(temp.Path, keepCurrent ? 61 : 62);
        var before = OracleViews(t.Bundle, temp.Path);
        string oldTop = FileOf(t, "T");

        var result = SnapshotSwitcher.Switch(t.Bundle, t["C"], keepCurrent);

        Assert.Equal(t["T"], result.Top);
        var after = OracleViews(t.Bundle, temp.Path);
        Assert.Equal(keepCurrent ? 6 : 5, after.Count);
        AssertSame(before[t["C"]], after[t["T"]], "new current state");
        if (keepCurrent)
        {
            AssertSame(before[t["T"]], after[result.Kept!.Value], "kept old current state");
            Assert.Equal(oldTop, TreeFile(t, result.Kept.Value));
        }
        else
        {
            Assert.Null(result.Kept);
            Assert.False(File.Exists(Path.Combine(t.Bundle, oldTop)));
        }

        foreach (var name in new[] { "R", "A", "B", "C" })
        {
            AssertSame(before[t[name]], after[t[name]], name);
        }

        var ours = OurViews(t.Bundle);
        foreach (var (guid, bytes) in after)
        {
            AssertSame(bytes, ours[guid], $"ours {guid:B}");
        }

        Assert.Equal(t["C"], TreeOf(t).ParentOf(t["T"]));
        AssertQemuClean(t.Bundle);
        Assert.True(File.Exists(Path.Combine(t.Bundle, "DiskDescriptor.xml.Backup")));
    }

    [Fact]
    public void TheCurrentStateIsNeverDeletedNorSwitchedTo()
    {
        using var temp = new TempFolder();
        var t = Tree(temp.Path, 71);
        string xml = File.ReadAllText(t.Descriptor);

        var e = Assert.Throws<PrlFuseException>(() => SnapshotMerger.Delete(t.Bundle, t["T"]));
        Assert.Contains("is the current state, which cannot be deleted", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<PrlFuseException>(() => SnapshotSwitcher.Switch(t.Bundle, t["T"], keepCurrent: false));
        Assert.Contains("is already the current state", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<PrlFuseException>(() => SnapshotMerger.Delete(t.Bundle, Guid.NewGuid()));
        Assert.Contains("no snapshot", e.Message, StringComparison.Ordinal);
        Assert.Equal(xml, File.ReadAllText(t.Descriptor));
    }

    [Theory]
    [InlineData(ImageLockMode.ReadOnly)]
    [InlineData(ImageLockMode.ReadWrite)]
    public void ABusyDiskIsRefusedAndLeftAsItWas(ImageLockMode holder)
    {
        using var temp = new TempFolder();
        var t = Tree(temp.Path, 81);
        string xml = File.ReadAllText(t.Descriptor);
        byte[] image = File.ReadAllBytes(Path.Combine(t.Bundle, FileOf(t, "B")));
        using (var held = PositionalImageFile.Open(Path.Combine(t.Bundle, FileOf(t, "B")), holder == ImageLockMode.ReadWrite))
        {
            ImageLock.Acquire(held, holder);
            var e = Assert.Throws<ImageInUseException>(() => SnapshotMerger.Delete(t.Bundle, t["B"]));
            Assert.Contains("image is in use", e.Message, StringComparison.Ordinal);
            Assert.Throws<ImageInUseException>(() => SnapshotMerger.Merge(t.Bundle));
            Assert.Throws<ImageInUseException>(() => SnapshotSwitcher.Switch(t.Bundle, t["A"], keepCurrent: true));
        }

        Assert.Equal(xml, File.ReadAllText(t.Descriptor));
        Assert.Equal(image, File.ReadAllBytes(Path.Combine(t.Bundle, FileOf(t, "B"))));
        Assert.Single(Directory.GetFiles(t.Bundle, "*.hds"), f => f.EndsWith(FileOf(t, "B"), StringComparison.Ordinal));
        Assert.Equal(5, Directory.GetFiles(t.Bundle, "*.hds").Length);
    }

    [Fact]
    public void AnInterruptedDeleteIsFinishedByTheNextCommand()
    {
        using var temp = new TempFolder();
        var t = Tree(temp.Path, 91);
        var before = OracleViews(t.Bundle, temp.Path);

        // What a crash right after the intent mark leaves: A marked, nothing merged yet.
        var d = DescriptorParser.ParseFile(t.Descriptor);
        DescriptorStore.Write(t.Descriptor, IntentMark.Mark(d, [t["A"]]));
        Assert.Contains("<Temporary />", File.ReadAllText(t.Descriptor), StringComparison.Ordinal);

        SnapshotSwitcher.Switch(t.Bundle, t["C"], keepCurrent: true);
        var tree = TreeOf(t);
        Assert.False(tree.Contains(t["A"]));
        Assert.Empty(IntentMark.Marked(DescriptorParser.ParseFile(t.Descriptor)));
        var after = OracleViews(t.Bundle, temp.Path);
        AssertSame(before[t["R"]], after[t["R"]], "R");
        AssertSame(before[t["B"]], after[t["B"]], "B");
        AssertQemuClean(t.Bundle);

        AssertQemuClean(t.Bundle);
    }

    private static void AssertAfter(SnapshotTreeBundle t, Dictionary<Guid, byte[]> before, string scratch, int expectedCount)
    {
        var oracle = OracleViews(t.Bundle, scratch);
        Assert.Equal(expectedCount, oracle.Count);
        AssertViewsEqual(before, oracle, "QEMU's view after the operation");
        AssertViewsEqual(before, OurViews(t.Bundle), "our view after the operation");
        AssertQemuClean(t.Bundle);
        Assert.Empty(IntentMark.Marked(DescriptorParser.ParseFile(t.Descriptor)));
    }

    internal static SnapshotTree TreeOf(SnapshotTreeBundle t) => SnapshotTree.Build(DescriptorParser.ParseFile(t.Descriptor), t.Descriptor);

    internal static string FileOf(SnapshotTreeBundle t, string name) => TreeFile(t, t[name]);

    private static string TreeFile(SnapshotTreeBundle t, Guid guid) => DescriptorParser.ParseFile(t.Descriptor).Storages[0].FindImage(guid)!.File;
}
