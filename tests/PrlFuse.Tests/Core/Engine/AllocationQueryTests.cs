using PrlFuse.Core.Engine;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.Engine;

/// <summary>
/// SEEK_DATA/SEEK_HOLE, the allocation map and allocated-byte counts of every view of oracle chains, against QEMU's own
/// map of the same chain (`qemu-img map --output=json`).
/// </summary>
[Trait("Needs", "Qemu")]
public sealed class AllocationQueryTests
{
    public static TheoryData<int, int, long[]> Chains => new()
    {
        { 601, 1, [16 * 2048] },
        { 602, 3, [16 * 2048] },
        { 603, 3, [6 * 2048, 5 * 2048 + 24, 9 * 2048] },
    };

    [Theory]
    [MemberData(nameof(Chains))]
    public void Seeking_walks_the_data_ranges_qemu_maps(int seed, int depth, long[] storages)
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, depth, storages, seed);
        using var disk = VirtualDisk.Open(chain.Bundle);
        for (int level = 0; level < depth; level++)
        {
            var view = disk.Views[chain.Levels[level].Guid];
            var expected = QemuMap.DataRanges(QemuMap.Of(chain, level));
            Assert.NotEmpty(expected);
            var walked = new List<(long Start, long End)>();
            for (long data = view.SeekData(0); data >= 0;)
            {
                long hole = view.SeekHole(data);
                Assert.True(hole > data, $"level {level}: SEEK_HOLE({data}) = {hole}");
                walked.Add((data, hole));
                data = view.SeekData(hole);
            }

            Assert.Equal(expected, walked);
            Assert.Equal(expected.Sum(r => r.End - r.Start), view.CountAllocatedBytes());

            // From inside ranges and gaps too, and past the end.
            var random = new Random(seed + level);
            for (int i = 0; i < 200; i++)
            {
                long at = random.NextInt64(view.Size);
                var next = expected.FirstOrDefault(r => r.End > at, (Start: view.Size, End: view.Size));
                long wantData = next.Start >= view.Size ? -1 : Math.Max(at, next.Start);
                long wantHole = next.Start <= at ? next.End : at;
                Assert.Equal(wantData, view.SeekData(at));
                Assert.Equal(wantHole, view.SeekHole(at));
            }

            Assert.Equal(-1, view.SeekData(view.Size));
            Assert.Equal(-1, view.SeekHole(view.Size));
        }
    }

    [Theory]
    [MemberData(nameof(Chains))]
    public void Extents_name_the_layer_and_host_offset_qemu_maps(int seed, int depth, long[] storages)
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, depth, storages, seed);
        using var disk = VirtualDisk.Open(chain.Bundle);
        for (int level = 0; level < depth; level++)
        {
            var view = disk.Views[chain.Levels[level].Guid];
            var expected = QemuMap.Of(chain, level).Select(e => e.Data ? e : e with { Depth = -1 }).ToList();
            var ours = new List<QemuMap.Entry>();
            StorageChain? storage = null;
            for (long at = 0; at < view.Size;)
            {
                var extent = view.GetExtent(at, view.Size - at);
                Assert.True(extent.Length > 0);
                if (extent.Layer is { } layer)
                {
                    Assert.Equal(chain.Levels[level - extent.Depth].Files[extent.Storage.StorageIndex], Path.GetFileName(layer.Path));
                }

                // qemu maps each storage's chain on its own: entries never join across a storage boundary.
                var entry = new QemuMap.Entry(at, extent.Length, extent.Depth, extent.Layer is not null, extent.Layer is null ? null : extent.HostOffset);
                if (extent.Storage == storage)
                {
                    QemuMap.Add(ours, entry);
                }
                else
                {
                    ours.Add(entry);
                }

                storage = extent.Storage;
                at += extent.Length;
            }

            Assert.Equal(expected, ours);
        }
    }

    [Fact]
    public void A_sparse_raw_disk_has_the_holes_of_its_file()
    {
        using var temp = new TempFolder();
        string raw = temp.Combine("disk.raw");
        using (var f = File.Create(raw))
        {
            f.SetLength(64 << 20);
            f.Position = 8 << 20;
            f.Write(Enumerable.Repeat((byte)7, 4096).ToArray());
            f.Position = 40 << 20;
            f.Write(Enumerable.Repeat((byte)9, 1 << 20).ToArray());
        }

        using var disk = VirtualDisk.Open(raw);
        var view = disk.Top;
        Assert.Equal(8 << 20, view.SeekData(0));
        Assert.Equal((8 << 20) + 4096, view.SeekHole(8 << 20));
        Assert.Equal(40 << 20, view.SeekData((8 << 20) + 4096));
        Assert.Equal(41 << 20, view.SeekHole(40 << 20));
        Assert.Equal(-1, view.SeekData(41 << 20));
        Assert.Equal(4096 + (1 << 20), view.CountAllocatedBytes());

        // The extent map agrees: zeros, the 4 KiB, zeros, the 1 MiB, zeros.
        var extents = new List<(long Start, long Length, bool Data)>();
        for (long at = 0; at < view.Size;)
        {
            var e = view.GetExtent(at, view.Size - at);
            extents.Add((e.Start, e.Length, e.Layer is not null));
            at += e.Length;
        }

        Assert.Equal([(0, 8 << 20, false), (8 << 20, 4096, true), ((8 << 20) + 4096, (32 << 20) - 4096, false), (40 << 20, 1 << 20, true), (41 << 20, 23 << 20, false)], extents);
    }
}
