using PrlFuse.Core.Engine;
using PrlFuse.Core.Management;
using PrlFuse.Tests.Support;
using static PrlFuse.Tests.Core.Management.ManagementTestSupport;

namespace PrlFuse.Tests.Core.Management;

/// <summary>
/// 'compact' against QEMU as the oracle: zero clusters and leaked space are released, files shrink, every image passes
/// qemu-img check, and every view stays what QEMU read before.
/// </summary>
[Trait("Needs", "Qemu")]
public sealed class CompactTests
{
    [Fact]
    public void CompactingAfterZeroingDataShrinksTheFilesAndKeepsEveryView()
    {
        using var temp = new TempFolder();
        var chain = ResizeTests.SmallClusterChain(temp.Path, 16 << 20);
        string root = Path.Combine(chain.Bundle, chain.Levels[0].Files[0]);
        string top = Path.Combine(chain.Bundle, chain.Levels[1].Files[0]);

        // The root's first 128 KiB become zeros (written, so allocated); the top zeros clusters over both zeros below
        // (droppable) and data below (which it must keep hiding).
        Qemu.Write(root, "write -P 0 0 128k");
        Qemu.Write(top, "write -P 0 8M 16k", "write -P 0 128k 8k");
        var before = OracleViews(chain, temp.Path);
        long rootBefore = new FileInfo(root).Length;
        long topBefore = new FileInfo(top).Length;

        var result = DiskCompactor.Compact(chain.Bundle);

        Assert.True(new FileInfo(root).Length <= rootBefore - (128 << 10), $"root {rootBefore} -> {new FileInfo(root).Length}");
        Assert.True(new FileInfo(top).Length < topBefore, $"top {topBefore} -> {new FileInfo(top).Length}");
        var rootResult = result.Images.Single(i => i.Path.EndsWith(chain.Levels[0].Files[0], StringComparison.Ordinal));
        Assert.True(rootResult.ClustersDropped >= 32);
        Assert.True(rootResult.ClustersMoved > 0, "nothing moved down: the test shows nothing about moving");
        AssertQemuCleanAndSized(chain, 16 << 20);
        AssertViews(chain, before, 16 << 20, temp.Path, "compacted");

        // The top's zero cluster over the root's data still hides it.
        using var disk = VirtualDisk.Open(chain.Bundle);
        byte[] hidden = new byte[8192];
        disk.Views[chain.Levels[1].Guid].Read(hidden, 128 << 10);
        Assert.False(hidden.AsSpan().ContainsAnyExcept((byte)0));
    }

    [Theory]
    [InlineData(511)]
    [InlineData(512)]
    public void CompactingAQemuChainKeepsEveryView(int seed)
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 3, [16 * 2048], seed);
        var before = OracleViews(chain, temp.Path);

        DiskCompactor.Compact(chain.Bundle);

        AssertQemuCleanAndSized(chain, 16 << 20);
        AssertViews(chain, before, 16 << 20, temp.Path, "compacted");
    }

    [Fact]
    public void CompactingReleasesLeakedSpaceAndWhatDiscardFreed()
    {
        using var temp = new TempFolder();
        var chain = ResizeTests.SmallClusterChain(temp.Path, 16 << 20);
        string top = Path.Combine(chain.Bundle, chain.Levels[1].Files[0]);

        // Discard through our write path (a mount's fstrim does this): a whole top cluster over zeros below loses its
        // entry and its place is punched, leaving a hole in the middle of the file; then junk after the last cluster.
        using (var disk = VirtualDisk.Open(chain.Bundle, new DiskOpenOptions { ReadOnly = false }))
        {
            disk.Top.Write(Enumerable.Repeat((byte)6, 64 << 10).ToArray(), 12L << 20);
            disk.Flush();
            disk.Top.Discard((12L << 20) + 4096, 5 * 4096);
        }

        var before = OracleViews(chain, temp.Path);
        using (var f = new FileStream(top, FileMode.Append))
        {
            f.Write(Enumerable.Repeat((byte)0x55, 3 * 4096).ToArray());
        }

        long length = new FileInfo(top).Length;
        Assert.Equal(3, Qemu.Check(top).ExitCode);

        DiskCompactor.Compact(chain.Bundle);

        Assert.True(new FileInfo(top).Length <= length - (8 * 4096), $"top {length} -> {new FileInfo(top).Length}");
        AssertQemuCleanAndSized(chain, 16 << 20);
        AssertViews(chain, before, 16 << 20, temp.Path, "compacted after discard");
    }
}
