using PrlFuse.Core.Engine;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.Formats.Parallels;

internal static class WriteTestSupport
{
    /// <summary>A random write: whole clusters, sectors, unaligned bytes, partial clusters, ranges spanning clusters.</summary>
    public static (long Offset, int Length) RandomWrite(Random random, long size, long cluster)
    {
        long clusters = size / cluster;
        (long offset, long length) = random.Next(6) switch
        {
            0 => (random.NextInt64(clusters) * cluster, cluster),
            1 => (random.NextInt64(size / 512) * 512, 512L * (1 + random.Next(16))),
            2 => (random.NextInt64(size), 1 + random.Next(3000)),
            3 => ((random.NextInt64(clusters) * cluster) + random.Next((int)cluster - 600), 1 + random.Next(512)),
            4 => ((random.NextInt64(clusters) * cluster) - random.Next(1, 5000), random.Next(5001, (int)cluster * 3)),
            _ => (random.NextInt64(size), random.Next(1, 300_000)),
        };
        offset = Math.Clamp(offset, 0, size - 1);
        length = Math.Min(length, size - offset);
        return (offset, (int)length);
    }

    public static byte[] Fill(Random random, int length)
    {
        var data = new byte[length];
        if (random.Next(6) == 0)
        {
            return data;
        }

        random.NextBytes(data);
        return data;
    }

    public static void AssertReadsEqual(SnapshotView view, byte[] model, long offset, int length, string what)
    {
        var buffer = new byte[length];
        Assert.Equal(length, view.Read(buffer, offset));
        int diff = buffer.AsSpan().CommonPrefixLength(model.AsSpan((int)offset, length));
        if (diff != length)
        {
            Assert.Fail($"{what}: read at {offset}+{length} differs at guest offset {offset + diff}: expected {model[offset + diff]}, got {buffer[diff]}");
        }
    }

    public static void AssertWholeViewEquals(SnapshotView view, byte[] model, string what)
    {
        for (long off = 0; off < model.Length; off += 4 << 20)
        {
            AssertReadsEqual(view, model, off, (int)Math.Min(4 << 20, model.Length - off), what);
        }
    }

    public static string TopPath(QemuChain chain, int storage = 0) => Path.Combine(chain.Bundle, chain.Levels[^1].Files[storage]);

    /// <summary>qemu-img check of every image of the top level is clean (no corruption, no leak).</summary>
    public static void AssertQemuClean(QemuChain chain)
    {
        for (int s = 0; s < chain.Storages.Count; s++)
        {
            var result = Qemu.Check(TopPath(chain, s));
            Assert.True(result.ExitCode == 0, $"qemu-img check {chain.Levels[^1].Files[s]}: exit {result.ExitCode}\n{result.Stdout}{result.Stderr}");
        }
    }
}
