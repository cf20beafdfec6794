using PrlFuse.Core.Engine;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.Engine;

/// <summary>
/// Deep chains resolve through a merged map (the layer that answers for each granule) instead of walking their layers:
/// every view reads as QEMU reads it, every offset resolves as the walk resolves it, and writes and discards to the
/// top change the map.
/// </summary>
public sealed class MergedMapTests
{
    public static TheoryData<int, int, long[]> Chains => new()
    {
        { 1601, 6, [16 * 2048] },
        { 1602, 5, [6 * 2048, 5 * 2048 + 24, 9 * 2048] },
    };

    [Theory]
    [MemberData(nameof(Chains))]
    [Trait("Needs", "Qemu")]
    public void Every_view_of_a_deep_chain_reads_as_qemu_and_resolves_as_the_walk(int seed, int depth, long[] storages)
    {
        Assert.True(depth >= StorageChain.MergedMapMinDepth);
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, depth, storages, seed);
        using var disk = VirtualDisk.Open(chain.Bundle);
        var allocated = disk.CountAllocatedBytesOfEveryView();
        for (int level = 0; level < depth; level++)
        {
            var view = disk.Views[chain.Levels[level].Guid];
            Assert.Equal(chain.OracleView(level, temp.Path), ReadAll(view));
            AssertResolvesAsWalk(view, new Random(seed + level));
            Assert.Equal(chain.DataRanges(level).Sum(r => r.End - r.Start), allocated[view.Id]);
        }
    }

    /// <summary>A tree: base, a, then two branches of three each; every view against QEMU's view of its own chain.</summary>
    [Fact]
    [Trait("Needs", "Qemu")]
    public void Every_view_of_a_branched_tree_reads_as_qemu()
    {
        using var temp = new TempFolder();
        string bundle = Path.Combine(temp.Path, "tree.hdd");
        Directory.CreateDirectory(bundle);
        const long Sectors = 12 * 2048;
        var random = new Random(1603);
        var parents = new Dictionary<Guid, Guid>();
        var names = new Dictionary<Guid, string>();
        Guid Add(Guid parent, int clusterKiB)
        {
            var guid = Guid.NewGuid();
            string name = $"tree.hdd.0.{guid:B}.hds";
            Qemu.Create(Path.Combine(bundle, name), (Sectors * 512).ToString(System.Globalization.CultureInfo.InvariantCulture), clusterSize: $"{clusterKiB}k");
            var writes = Enumerable.Range(0, 8).Select(_ => $"write -P {1 + random.Next(255)} {random.NextInt64(Sectors * 512 - 300_000)} {1 + random.Next(300_000)}");
            Qemu.Write(Path.Combine(bundle, name), writes);
            parents[guid] = parent;
            names[guid] = name;
            return guid;
        }

        var root = Add(Guid.Empty, 64);
        var a = Add(root, 256);
        var left = a;
        var right = a;
        for (int i = 0; i < 3; i++)
        {
            left = Add(left, i == 1 ? 1024 : 64);
            right = Add(right, 256);
        }

        var d = new DescriptorBuilder(Sectors) { TopGuid = left };
        var storage = d.Storage(0, Sectors);
        foreach (var (guid, name) in names)
        {
            storage.Image(guid, "Compressed", name);
            d.Shot(guid, parents[guid]);
        }

        d.WriteTo(bundle);
        using var disk = VirtualDisk.Open(bundle);
        foreach (var guid in names.Keys)
        {
            var topFirst = new List<string>();
            for (var g = guid; g != Guid.Empty; g = parents[g])
            {
                topFirst.Add(Path.Combine(bundle, names[g]));
            }

            string raw = Path.Combine(temp.Path, "oracle.raw");
            Qemu.ConvertChain(topFirst, raw);
            Assert.Equal(File.ReadAllBytes(raw), ReadAll(disk.Views[guid]));
            AssertResolvesAsWalk(disk.Views[guid], random);
        }
    }

    /// <summary>Writes and discards to the top after its map is built: reads follow them, and QEMU reads the result.</summary>
    [Fact]
    [Trait("Needs", "Qemu")]
    public void Writes_and_discards_to_the_top_of_a_deep_chain_change_its_map()
    {
        using var temp = new TempFolder();
        const int Depth = 6;
        var chain = QemuChain.Build(temp.Path, Depth, [16 * 2048], seed: 1604);
        byte[] expected = chain.OracleView(Depth - 1, temp.Path);
        var random = new Random(1604);
        using (var disk = VirtualDisk.Open(chain.Bundle, new DiskOpenOptions { ReadOnly = false }))
        {
            var top = disk.Top;
            Assert.Equal(expected, ReadAll(top)); // every chunk of the map is built now
            for (int round = 0; round < 40; round++)
            {
                long length = random.Next(3) switch { 0 => 4096, 1 => 64 * 1024, _ => 1 + random.Next(400_000) };
                long offset = random.NextInt64(top.Size - length);
                if (random.Next(3) == 0)
                {
                    top.Discard(offset, length);
                    Array.Clear(expected, (int)offset, (int)length);
                }
                else
                {
                    var data = new byte[length];
                    random.NextBytes(data);
                    top.Write(data, offset);
                    data.CopyTo(expected, offset);
                }

                if (round % 8 == 7)
                {
                    Assert.Equal(expected, ReadAll(top));
                    AssertResolvesAsWalk(top, random);
                }
            }
        }

        Assert.Equal(expected, chain.OracleView(Depth - 1, temp.Path));
    }

    /// <summary>A chain of a thousand snapshots opens, every level reads what the levels up to it wrote, and info draws every snapshot.</summary>
    [Fact]
    public void A_thousand_deep_chain_opens_reads_and_is_described()
    {
        using var temp = new TempFolder();
        const int Depth = 1000;
        var bundle = DeepChain.Build(temp.Path, Depth, clusters: 512);
        using (var disk = VirtualDisk.Open(bundle.Path, new DiskOpenOptions { CacheBytes = 0 }))
        {
            Assert.Equal(Depth, disk.Views.Count);
            var allocated = disk.CountAllocatedBytesOfEveryView();
            Assert.Equal(disk.Top.CountAllocatedBytes(), allocated[disk.Top.Id]);
            Assert.Equal(bundle.Expected(Depth - 1).Chunk(64 * 1024).Count(c => c[0] != 0) * 64L * 1024, allocated[disk.Top.Id]);
            foreach (int level in new[] { Depth - 1, Depth / 2, 0 })
            {
                var view = disk.Views[bundle.Guids[level]];
                Assert.Equal(bundle.Expected(level), ReadAll(view));
                AssertResolvesAsWalk(view, new Random(level));
            }
        }

        var output = new StringWriter();
        Assert.Equal(0, PrlFuse.Cli.Commands.InfoCommand.Run(bundle.Path, json: false, allowOutsideImages: false, output));
        string text = output.ToString();
        Assert.All(bundle.Guids, g => Assert.Contains(g.ToString("D"), text, StringComparison.OrdinalIgnoreCase));
    }

    private static byte[] ReadAll(SnapshotView view)
    {
        var bytes = new byte[view.Size];
        for (long at = 0; at < bytes.Length;)
        {
            int n = view.Read(bytes.AsSpan((int)at, (int)Math.Min(1 << 20, bytes.Length - at)), at);
            Assert.True(n > 0);
            at += n;
        }

        return bytes;
    }

    /// <summary>The map's answer for cluster starts, cluster middles and random offsets is the walk's: same layer, same host offset, a run no longer.</summary>
    private static void AssertResolvesAsWalk(SnapshotView view, Random random)
    {
        foreach (var storage in view.Storages)
        {
            var offsets = Enumerable.Range(0, (int)(storage.LengthBytes / 32768)).Select(i => i * 32768L)
                .Concat(Enumerable.Range(0, 300).Select(_ => random.NextInt64(storage.LengthBytes)));
            foreach (long offset in offsets)
            {
                long limit = storage.LengthBytes - offset;
                int mapped = storage.Resolve(offset, limit, out long host, out long run);
                int walked = storage.Walk(0, offset, limit, out long walkedHost, out long walkedRun);
                Assert.True(mapped == walked, $"offset {offset}: the map says layer {mapped}, the walk {walked}");
                if (walked >= 0)
                {
                    Assert.Equal(walkedHost, host);
                }

                // The answer holds through the map's run: the walk gives it at the run's last byte too.
                Assert.InRange(run, 1, limit);
                long last = offset + run - 1;
                Assert.Equal(walked, storage.Walk(0, last, 1, out long lastHost, out _));
                if (walked >= 0 && walkedHost >= 0)
                {
                    Assert.Equal(walkedHost + run - 1, lastHost);
                }

                _ = walkedRun;
            }
        }
    }
}
