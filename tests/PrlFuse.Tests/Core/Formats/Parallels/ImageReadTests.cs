using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.Images;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.Formats.Parallels;

/// <summary>Expandable images of both magics and several cluster sizes read byte for byte right.</summary>
public sealed class ImageReadTests : IDisposable
{
    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    public static TheoryData<ParallelsMagic, uint, bool> Layouts()
    {
        var data = new TheoryData<ParallelsMagic, uint, bool>();
        foreach (var magic in new[] { ParallelsMagic.WithoutFreeSpace, ParallelsMagic.WithouFreSpacExt })
        {
            foreach (uint cluster in new uint[] { 63, 512, 2048 })
            {
                data.Add(magic, cluster, false);
                data.Add(magic, cluster, true);
            }
        }

        return data;
    }

    /// <summary>About ten clusters and a partial one; every other cluster allocated, plus the last.</summary>
    private static ParallelsImageBuilder PartlyAllocated(ParallelsMagic magic, uint clusterSectors, int seed)
    {
        long sectors = (clusterSectors * 9L) + 100;
        var b = new ParallelsImageBuilder(sectors, clusterSectors, magic) { Content = ParallelsImageBuilder.Pattern(seed), Seed = seed };
        b.AllocateEvery(2, 1);
        b.Allocate(b.ClusterCount - 1);
        return b;
    }

    [Theory]
    [MemberData(nameof(Layouts))]
    public void Partly_allocated_image_reads_right(ParallelsMagic magic, uint clusterSectors, bool inBundle)
    {
        var b = PartlyAllocated(magic, clusterSectors, seed: (int)clusterSectors);
        b.LeadingFreeClusters = 1;
        string path;
        if (inBundle)
        {
            string folder = _temp.Folder("disk.hdd");
            path = folder;
            b.Build(Path.Combine(folder, "disk.hdd.0.{5fbaabe3-6958-40ff-92a7-860e329aab41}.hds"));
            new DescriptorBuilder(b.DiskSectors)
                .SingleStorage(clusterSectors, (DescriptorBuilder.PredefinedTop, "Compressed", "disk.hdd.0.{5fbaabe3-6958-40ff-92a7-860e329aab41}.hds"))
                .Shot(DescriptorBuilder.PredefinedTop, Guid.Empty)
                .WriteTo(folder);
        }
        else
        {
            path = _temp.Combine("bare.hds");
            b.Build(path);
        }

        using var disk = VirtualDisk.Open(path);
        Assert.Equal(!inBundle, disk.IsBareImage);
        Assert.Equal(b.DiskSectors * 512, disk.Size);
        var image = Assert.IsType<ExpandableImage>(Assert.Single(disk.Storages).Images.Values.Single());
        Assert.Equal(magic, image.Header.Magic);
        Assert.Equal(b.AllocatedClusters.Count, image.CountAllocatedClusters());
        Assert.Empty(disk.Warnings);
        CoreTestSupport.AssertReadsLike(disk.Top, (span, offset) => b.FillExpected(span, offset), seed: 7);

        // The same through a disk without a block cache (straight file reads).
        using var uncached = VirtualDisk.Open(path, new DiskOpenOptions { CacheBytes = 0 });
        CoreTestSupport.AssertReadsLike(uncached.Top, (span, offset) => b.FillExpected(span, offset), seed: 8, count: 100);
    }

    [Fact]
    public void Old_magic_data_off_zero_means_the_minimum()
    {
        var b = PartlyAllocated(ParallelsMagic.WithoutFreeSpace, 63, seed: 3);
        b.DataOffsetSectors = 0;
        var built = b.Build(_temp.Combine("zero.hds"));
        Assert.Equal(0u, BitConverter.ToUInt32(built.ReadBytes(48, 4)));

        using var disk = VirtualDisk.Open(built.Path);
        var image = (ExpandableImage)disk.Storages[0].Images.Values.Single();
        Assert.Equal(b.MinimumDataOffsetSectors((uint)b.ClusterCount) * 512, image.DataOffsetBytes);
        CoreTestSupport.AssertReadsLike(disk.Top, (span, offset) => b.FillExpected(span, offset), seed: 9);
    }

    [Fact]
    public void Old_magic_data_off_not_cluster_aligned_reads_right()
    {
        // The old magic only needs sector alignment; clusters then sit at data_off + k * cluster size.
        var b = PartlyAllocated(ParallelsMagic.WithoutFreeSpace, 512, seed: 4);
        b.DataOffsetSectors = 5;
        var built = b.Build(_temp.Combine("odd.hds"));
        Assert.Equal(5 * 512, built.DataOffsetBytes);
        using var disk = VirtualDisk.Open(built.Path);
        CoreTestSupport.AssertReadsLike(disk.Top, (span, offset) => b.FillExpected(span, offset), seed: 10);
    }

    [Fact]
    public void Old_magic_ignores_the_high_half_of_nb_sectors()
    {
        var b = PartlyAllocated(ParallelsMagic.WithoutFreeSpace, 63, seed: 5);
        b.SectorCountField = (1UL << 40) | (ulong)b.DiskSectors;
        var built = b.Build(_temp.Combine("high.hds"));
        using var disk = VirtualDisk.Open(built.Path);
        Assert.Equal(b.DiskSectors * 512, disk.Size);
        CoreTestSupport.AssertReadsLike(disk.Top, (span, offset) => b.FillExpected(span, offset), seed: 11, count: 50);
    }

    [Fact]
    public void Ext_magic_with_a_data_off_beyond_the_minimum_reads_right()
    {
        var b = PartlyAllocated(ParallelsMagic.WithouFreSpacExt, 63, seed: 6);
        b.DataOffsetSectors = 63 * 3;
        var built = b.Build(_temp.Combine("far.hds"));
        using var disk = VirtualDisk.Open(built.Path);
        CoreTestSupport.AssertReadsLike(disk.Top, (span, offset) => b.FillExpected(span, offset), seed: 12, count: 100);
    }

    [Fact]
    public void Bat_larger_than_the_disk_and_unallocated_tail_read_as_zeros()
    {
        var b = new ParallelsImageBuilder(2048 * 3, 2048) { BatEntries = 10 };
        b.Allocate(0).Allocate(2);
        var built = b.Build(_temp.Combine("bigbat.hds"));
        using var disk = VirtualDisk.Open(built.Path);
        Assert.Equal(3L << 20, disk.Size);
        CoreTestSupport.AssertReadsLike(disk.Top, (span, offset) => b.FillExpected(span, offset), seed: 13, count: 50);
    }

    [Fact]
    public void Chain_with_different_cluster_sizes_reads_overlay_first()
    {
        const long sectors = 2048 * 6;
        var root = new ParallelsImageBuilder(sectors, 63, ParallelsMagic.WithouFreSpacExt) { Content = ParallelsImageBuilder.Pattern(100), Seed = 1 };
        root.AllocateEvery(2);
        var top = new ParallelsImageBuilder(sectors, 2048, ParallelsMagic.WithoutFreeSpace) { Content = ParallelsImageBuilder.Pattern(200), Seed = 2 };
        top.Allocate(1).Allocate(4);

        string folder = _temp.Folder("chain.hdd");
        var rootGuid = new Guid("11111111-2222-3333-4444-555555555555");
        root.Build(Path.Combine(folder, "root.hds"));
        top.Build(Path.Combine(folder, "top.hds"));
        new DescriptorBuilder(sectors)
            .SingleStorage(2048, (rootGuid, "Compressed", "root.hds"), (DescriptorBuilder.PredefinedTop, "Compressed", "top.hds"))
            .Chain(rootGuid, DescriptorBuilder.PredefinedTop)
            .WriteTo(folder);

        using var disk = VirtualDisk.Open(folder);
        Assert.Equal(DescriptorBuilder.PredefinedTop, disk.Tree.Top);
        Assert.Contains(disk.Warnings, w => w.Contains("root.hds", StringComparison.Ordinal) && w.Contains("Blocksize", StringComparison.Ordinal) && w.Contains("63", StringComparison.Ordinal));
        Assert.DoesNotContain(disk.Warnings, w => w.Contains("top.hds", StringComparison.Ordinal));

        void Expected(Span<byte> span, long offset)
        {
            for (int i = 0; i < span.Length; i++)
            {
                long o = offset + i;
                span[i] = top.IsAllocated(o / top.ClusterBytes) ? top.ExpectedByte(o) : root.ExpectedByte(o);
            }
        }

        CoreTestSupport.AssertReadsLike(disk.Top, Expected, seed: 14);
        CoreTestSupport.AssertReadsLike(disk.Views[rootGuid], (span, offset) => root.FillExpected(span, offset), seed: 15, count: 100);

        // Allocation status follows the union of the layers, split at the finer cluster size.
        long status = disk.Top.GetAllocationStatus(2048L * 512, 1 << 20, out bool allocated);
        Assert.True(allocated);
        Assert.Equal(1 << 20, status);
        long clusterBytes = 63 * 512;
        long firstFreeRootCluster = ((2L << 20) + clusterBytes - 1) / clusterBytes;
        firstFreeRootCluster += firstFreeRootCluster % 2 == 0 ? 1 : 0;
        disk.Top.GetAllocationStatus(firstFreeRootCluster * clusterBytes, 512, out allocated);
        Assert.False(allocated);
    }

    [Fact]
    public void Real_expanding_sample_reads_its_known_content()
    {
        using var temp = new TempFolder();
        string bundle = Samples.Extract("expanding", temp.Path);
        using var disk = VirtualDisk.Open(bundle);
        Assert.Equal(100L << 20, disk.Size);
        var image = (ExpandableImage)disk.Storages[0].Images.Values.Single();
        Assert.Equal("pd17", image.Header.InUseText);
        Assert.False(image.WasUnclean);
        Assert.Equal(99, image.CountAllocatedClusters());
        CoreTestSupport.AssertReadsLike(disk.Top, (span, offset) =>
        {
            for (int i = 0; i < span.Length; i++)
            {
                span[i] = (byte)((offset + i) >> 20);
            }
        }, seed: 16, count: 200);
    }
}
