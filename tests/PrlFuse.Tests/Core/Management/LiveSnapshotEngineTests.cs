using PrlFuse.Core;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Management;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.Management;

/// <summary>
/// <see cref="VirtualDisk.TakeSnapshot"/>: a snapshot of a disk that stays open read-write, as a mount's daemon takes
/// it. The top view goes on (the same object) over a new image, the new view reads the moment it was taken, and after
/// closing, QEMU reads every view the same and every image checks clean.
/// </summary>
[Trait("Needs", "Qemu")]
public sealed class LiveSnapshotEngineTests
{
    [Theory]
    [InlineData(1, new long[] { 16 * 2048 }, 61)]
    [InlineData(3, new long[] { 8 * 2048, 5 * 2048 + 8 }, 62)]
    public void TheTopGoesOnOverANewImageAndTheSnapshotKeepsItsMoment(int depth, long[] storages, int seed)
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, depth, storages, seed, predefinedTop: true);
        var before = BundleOracle.AssertEveryViewMatchesQemu(chain.Bundle, temp.Path);
        Guid top = chain.Levels[^1].Guid;
        var random = new Random(seed);
        byte[] first = new byte[3 << 20];
        byte[] second = new byte[1 << 20];
        random.NextBytes(first);
        random.NextBytes(second);
        long at = chain.SizeBytes / 3;
        byte[] atSnapshot;
        byte[] atEnd;
        Guid snapshot;
        using (var disk = VirtualDisk.Open(chain.Bundle, new DiskOpenOptions { ReadOnly = false }))
        {
            var current = disk.Top;
            current.Write(first, at);
            atSnapshot = ReadAll(current);

            var view = disk.TakeSnapshot("live");
            snapshot = view.Id;
            Assert.Same(current, disk.Top);
            Assert.False(view.IsWritable);
            Assert.Equal(atSnapshot, ReadAll(view));
            Assert.Equal(atSnapshot, ReadAll(current));
            Assert.Contains(view, disk.SnapshotViews);
            Assert.Equal(snapshot, disk.Tree.ParentOf(top));

            // The current state goes on; the snapshot does not move, and every older view is as it was.
            current.Write(second, at + (1 << 20) + 512);
            current.Flush();
            atEnd = ReadAll(current);
            Assert.NotEqual(atSnapshot, atEnd);
            Assert.Equal(atSnapshot, ReadAll(view));
            foreach (var (guid, bytes) in before.Where(v => v.Key != top))
            {
                Assert.Equal(bytes, ReadAll(disk.Views[guid]));
            }

            // A second one stacks on the first.
            var again = disk.TakeSnapshot(null);
            Assert.Equal(atEnd, ReadAll(again));
            Assert.Equal(snapshot, disk.Tree.ParentOf(again.Id));
        }

        var after = BundleOracle.AssertEveryViewMatchesQemu(chain.Bundle, temp.Path);
        Assert.Equal(before.Count + 2, after.Count);
        Assert.Equal(atSnapshot, after[snapshot]);
        Assert.Equal(atEnd, after[top]);
        using var reopened = VirtualDisk.Open(chain.Bundle);
        Assert.Equal("live", SnapshotLister.List(reopened).Single(e => e.Guid == snapshot).Name);
    }

    [Fact]
    public void ADiskOpenedReadOnlyOrABareImageTakesNoLiveSnapshot()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 1, [4 * 2048], 63, predefinedTop: true);
        string xml = File.ReadAllText(Path.Combine(chain.Bundle, DescriptorStore.FileName));
        using (var disk = VirtualDisk.Open(chain.Bundle))
        {
            Assert.Contains("served read-only", Assert.Throws<PrlFuseException>(() => disk.TakeSnapshot(null)).Message, StringComparison.Ordinal);
        }

        using (var bare = VirtualDisk.Open(Path.Combine(chain.Bundle, chain.Levels[0].Files[0]), new DiskOpenOptions { ReadOnly = false }))
        {
            Assert.Contains("bare image", Assert.Throws<PrlFuseException>(() => bare.TakeSnapshot(null)).Message, StringComparison.Ordinal);
        }

        Assert.Equal(xml, File.ReadAllText(Path.Combine(chain.Bundle, DescriptorStore.FileName)));
        Assert.Single(Directory.GetFiles(chain.Bundle, "*.hds"));
    }

    private static byte[] ReadAll(SnapshotView view)
    {
        var bytes = new byte[view.Size];
        Assert.Equal(bytes.Length, view.Read(bytes, 0));
        return bytes;
    }
}
