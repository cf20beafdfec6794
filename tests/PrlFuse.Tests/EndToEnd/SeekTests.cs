using PrlFuse.Core.IO;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.EndToEnd;

/// <summary>
/// lseek SEEK_DATA/SEEK_HOLE through the real mount, on every file (current.raw and each snapshot), against QEMU's own
/// map of the same chains (`qemu-img map`): the walk cp --sparse and qemu-img convert make, and single seeks.
/// </summary>
[Collection(FuseKernelCollection.Name)]
[Trait("Needs", "Kernel")]
[Trait("Needs", "Qemu")]
[Trait("Needs", "Installed")]
public sealed class SeekTests
{
    [Theory]
    [InlineData(3, false)]
    [InlineData(8, false)]
    [InlineData(4, true)]
    [InlineData(21, true)]
    public void SeekDataAndSeekHoleOnEveryFileFollowQemusMap(int seed, bool split)
    {
        using var temp = new TempFolder();
        // Split: storage boundaries fall inside clusters of every cluster size the chain picks.
        var chain = QemuChain.Build(temp.Path, 3, split ? [40_000, 51_072] : [96 * 2048], seed);
        var models = Enumerable.Range(0, chain.Levels.Count).Select(chain.DataRanges).ToList();
        long size = chain.SizeBytes;
        var random = new Random(seed);
        using var mount = new PrlFuseMount(chain.Bundle, temp.Combine("mnt"), "--read-only");
        for (int level = 0; level < chain.Levels.Count; level++)
        {
            string file = level == chain.Levels.Count - 1 ? mount.Current : mount.Snapshot(chain.Levels[level].Guid);
            var model = models[level];
            Assert.True(model.Count >= 2 && model.Sum(r => r.End - r.Start) < size, $"level {level}: the chain has no holes between data to find");
            Assert.Equal(model, SparseFile.DataRanges(file));

            // Single seeks: at each range's edges, at the end and past it, and anywhere.
            using var handle = File.OpenHandle(file);
            var offsets = model.SelectMany(r => new[] { r.Start - 1, r.Start, r.End - 1, r.End })
                .Concat([0, size - 1, size, size + 4096])
                .Concat(Enumerable.Range(0, 40).Select(_ => random.NextInt64(size)))
                .Where(o => o >= 0);
            foreach (long offset in offsets)
            {
                Assert.True(Expected(model, size, offset, SparseFile.SeekData) == SparseFile.Seek(handle, offset, SparseFile.SeekData), $"level {level}: SEEK_DATA at {offset}");
                Assert.True(Expected(model, size, offset, SparseFile.SeekHole) == SparseFile.Seek(handle, offset, SparseFile.SeekHole), $"level {level}: SEEK_HOLE at {offset}");
            }

            // Past the last data there is none to find.
            if (model[^1].End < size)
            {
                Assert.Equal(-Errno.ENXIO, SparseFile.Seek(handle, model[^1].End, SparseFile.SeekData));
            }
        }

        Assert.Equal(0, mount.Unmount().ExitCode);
    }

    /// <summary>What lseek answers on a file whose data ranges are <paramref name="model"/> (ext4's rules: the end is a hole).</summary>
    private static long Expected(List<(long Start, long End)> model, long size, long offset, int whence)
    {
        if (offset >= size)
        {
            return -Errno.ENXIO;
        }

        foreach (var (start, end) in model)
        {
            if (offset < start)
            {
                return whence == SparseFile.SeekData ? start : offset;
            }

            if (offset < end)
            {
                return whence == SparseFile.SeekData ? offset : end;
            }
        }

        return whence == SparseFile.SeekData ? -Errno.ENXIO : offset;
    }
}
