using PrlFuse.Core;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.Images;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.Engine;

/// <summary>Whole bundles on disk: image paths, Plain roots, split disks, real samples.</summary>
public sealed class BundleTests : IDisposable
{
    private static readonly Guid Root = new("aaaaaaaa-1111-4111-8111-111111111111");
    private static readonly Guid Top = DescriptorBuilder.PredefinedTop;

    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    private static ParallelsImageBuilder Image(long sectors, uint cluster, int seed)
    {
        var b = new ParallelsImageBuilder(sectors, cluster) { Content = ParallelsImageBuilder.Pattern(seed), Seed = seed };
        b.AllocateEvery(2, seed % 2);
        return b;
    }

    [Fact]
    public void Relative_and_absolute_file_paths()
    {
        string folder = _temp.Folder("paths.hdd");
        string elsewhere = _temp.Folder("elsewhere");
        Directory.CreateDirectory(Path.Combine(folder, "sub"));
        var root = Image(4096, 512, 1);
        var top = Image(4096, 2048, 2);
        root.Build(Path.Combine(folder, "sub", "root.hds"));
        string topPath = Path.Combine(elsewhere, "top.hds");
        top.Build(topPath);
        new DescriptorBuilder(4096)
            .SingleStorage(2048, (Root, "Compressed", "sub/root.hds"), (Top, "Compressed", topPath))
            .Chain(Root, Top)
            .WriteTo(folder);

        using var disk = VirtualDisk.Open(folder);
        Assert.Equal(Path.Combine(folder, "sub", "root.hds"), disk.Storages[0].Images[Root].Path);
        Assert.Equal(topPath, disk.Storages[0].Images[Top].Path);
        Assert.DoesNotContain(disk.Warnings, w => w.Contains("does not exist", StringComparison.Ordinal));
        CoreTestSupport.AssertReadsLike(disk.Top, (span, offset) =>
        {
            for (int i = 0; i < span.Length; i++)
            {
                long o = offset + i;
                span[i] = top.IsAllocated(o / top.ClusterBytes) ? top.ExpectedByte(o) : root.ExpectedByte(o);
            }
        }, seed: 1, count: 100);

        // Opening the descriptor path itself works the same as the folder.
        using var byFile = VirtualDisk.Open(Path.Combine(folder, "DiskDescriptor.xml"));
        Assert.Equal(Top, byFile.Tree.Top);
    }

    [Fact]
    public void Stale_absolute_path_falls_back_to_the_bundle_folder_with_a_warning()
    {
        string folder = _temp.Folder("moved.hdd");
        var img = Image(2048, 2048, 3);
        img.Build(Path.Combine(folder, "disk.hds"));
        const string stale = "/Users/someone/Parallels/Old VM.pvm/moved.hdd/disk.hds";
        new DescriptorBuilder(2048).SingleStorage(2048, (Top, "Compressed", stale)).Shot(Top, Guid.Empty).WriteTo(folder);

        using var disk = VirtualDisk.Open(folder);
        Assert.Equal(Path.Combine(folder, "disk.hds"), disk.Storages[0].Images[Top].Path);
        var warning = Assert.Single(disk.Warnings);
        Assert.Contains(stale, warning, StringComparison.Ordinal);
        Assert.Contains("bundle folder", warning, StringComparison.Ordinal);
        CoreTestSupport.AssertReadsLike(disk.Top, (span, offset) => img.FillExpected(span, offset), seed: 2, count: 30);
    }

    [Fact]
    public void Missing_image_is_refused_naming_both_paths()
    {
        string folder = _temp.Folder("missing.hdd");
        new DescriptorBuilder(2048).SingleStorage(2048, (Top, "Compressed", "/nowhere/x.hds")).Shot(Top, Guid.Empty).WriteTo(folder);
        var e = Assert.Throws<ImagePathException>(() => VirtualDisk.Open(folder).Dispose());
        Assert.Contains("/nowhere/x.hds", e.Message, StringComparison.Ordinal);
        Assert.Contains(Path.Combine(folder, "x.hds"), e.Message, StringComparison.Ordinal);

        string folder2 = _temp.Folder("missing2.hdd");
        new DescriptorBuilder(2048).SingleStorage(2048, (Top, "Compressed", "gone.hds")).Shot(Top, Guid.Empty).WriteTo(folder2);
        e = Assert.Throws<ImagePathException>(() => VirtualDisk.Open(folder2).Dispose());
        Assert.Contains("gone.hds", e.Message, StringComparison.Ordinal);
        Assert.Contains("does not exist", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Folder_without_descriptor_is_refused()
    {
        string folder = _temp.Folder("empty.hdd");
        var e = Assert.Throws<PrlFuseException>(() => VirtualDisk.Open(folder).Dispose());
        Assert.Contains("no DiskDescriptor.xml", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Plain_root_under_compressed_overlays()
    {
        const long sectors = 2048 * 4;
        string folder = _temp.Folder("plain.hdd");
        var rootContent = ParallelsImageBuilder.Pattern(50);
        var raw = new byte[sectors * 512];
        for (int i = 0; i < raw.Length; i++)
        {
            raw[i] = rootContent(i);
        }

        File.WriteAllBytes(Path.Combine(folder, "root.hds"), raw);
        var mid = new ParallelsImageBuilder(sectors, 63, ParallelsMagic.WithouFreSpacExt) { Content = ParallelsImageBuilder.Pattern(51) };
        mid.Allocate([0, 5, 70, 129]);
        var top = new ParallelsImageBuilder(sectors, 2048) { Content = ParallelsImageBuilder.Pattern(52) };
        top.Allocate(2);
        mid.Build(Path.Combine(folder, "mid.hds"));
        top.Build(Path.Combine(folder, "top.hds"));
        var midGuid = new Guid("bbbbbbbb-2222-4222-8222-222222222222");
        new DescriptorBuilder(sectors)
            .SingleStorage(2048, (Root, "Plain", "root.hds"), (midGuid, "Compressed", "mid.hds"), (Top, "Compressed", "top.hds"))
            .Chain(Root, midGuid, Top)
            .WriteTo(folder);

        using var disk = VirtualDisk.Open(folder);
        Assert.IsType<PlainImage>(disk.Storages[0].Images[Root]);
        Assert.Equal(3, disk.Views.Count);
        Assert.Equal(sectors * 512, disk.Top.CountAllocatedBytes());

        byte MidOrRoot(long o) => mid.IsAllocated(o / mid.ClusterBytes) ? mid.ExpectedByte(o) : raw[o];
        CoreTestSupport.AssertReadsLike(disk.Top, (span, offset) =>
        {
            for (int i = 0; i < span.Length; i++)
            {
                long o = offset + i;
                span[i] = top.IsAllocated(o / top.ClusterBytes) ? top.ExpectedByte(o) : MidOrRoot(o);
            }
        }, seed: 3);
        CoreTestSupport.AssertReadsLike(disk.Views[midGuid], (span, offset) =>
        {
            for (int i = 0; i < span.Length; i++)
            {
                span[i] = MidOrRoot(offset + i);
            }
        }, seed: 4, count: 100);
        CoreTestSupport.AssertReadsLike(disk.Views[Root], (span, offset) => raw.AsSpan((int)offset, span.Length).CopyTo(span), seed: 5, count: 100);
    }

    [Fact]
    public void Plain_image_smaller_than_its_storage_is_refused()
    {
        string folder = _temp.Folder("short.hdd");
        File.WriteAllBytes(Path.Combine(folder, "root.hds"), new byte[1000 * 512]);
        new DescriptorBuilder(2048).SingleStorage(2048, (Root, "Plain", "root.hds")).Shot(Root, Guid.Empty).WriteTo(folder);
        var e = Assert.Throws<ImageFormatException>(() => VirtualDisk.Open(folder).Dispose());
        Assert.Contains("smaller than its storage", e.Problem, StringComparison.Ordinal);
    }

    /// <summary>Three storages: expandable (63-sector clusters), plain, expandable (Ext, 1 MiB clusters).</summary>
    private (string Folder, Action<Span<byte>, long> Expected) SplitDisk(bool reversedOrder)
    {
        long[] bounds = [0, 63 * 37 + 5, (63 * 37) + 5 + 3000, (63 * 37) + 5 + 3000 + 4096 + 17];
        string folder = _temp.Folder(reversedOrder ? "split-rev.hdd" : "split.hdd");
        var s0 = new ParallelsImageBuilder(bounds[1], 63) { Content = ParallelsImageBuilder.Pattern(60) };
        s0.AllocateEvery(3, 1).Allocate(s0.ClusterCount - 1);
        s0.Build(Path.Combine(folder, "s0.hds"));
        var raw = new byte[(bounds[2] - bounds[1]) * 512];
        new Random(61).NextBytes(raw);
        File.WriteAllBytes(Path.Combine(folder, "s1.hds"), raw);
        var s2 = new ParallelsImageBuilder(bounds[3] - bounds[2], 2048, ParallelsMagic.WithouFreSpacExt) { Content = ParallelsImageBuilder.Pattern(62) };
        s2.Allocate(0).Allocate(2);
        s2.Build(Path.Combine(folder, "s2.hds"));

        var d = new DescriptorBuilder(bounds[3]);
        var specs = new List<(long, long, long, string, string)>
        {
            (bounds[0], bounds[1], 63, "Compressed", "s0.hds"),
            (bounds[1], bounds[2], 2048, "Plain", "s1.hds"),
            (bounds[2], bounds[3], 2048, "Compressed", "s2.hds"),
        };
        if (reversedOrder)
        {
            specs.Reverse();
        }

        foreach (var (start, end, bs, type, file) in specs)
        {
            d.Storage(start, end, bs).Image(Top, type, file);
        }

        d.Shot(Top, Guid.Empty).WriteTo(folder);

        void Expected(Span<byte> span, long offset)
        {
            for (int i = 0; i < span.Length; i++)
            {
                long o = offset + i;
                if (o < bounds[1] * 512)
                {
                    span[i] = s0.ExpectedByte(o);
                }
                else if (o < bounds[2] * 512)
                {
                    span[i] = raw[o - (bounds[1] * 512)];
                }
                else
                {
                    span[i] = s2.ExpectedByte(o - (bounds[2] * 512));
                }
            }
        }

        return (folder, Expected);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Split_disk_reads_across_storage_boundaries(bool reversedOrder)
    {
        var (folder, expected) = SplitDisk(reversedOrder);
        using var disk = VirtualDisk.Open(folder);
        Assert.Equal(3, disk.Storages.Count);
        long b1 = ((63 * 37) + 5) * 512L;
        long b2 = b1 + (3000 * 512L);
        var buffer = new byte[300_000];
        var want = new byte[buffer.Length];
        // Reads that straddle each boundary, and one over all three storages.
        foreach (var (offset, length) in new[] { (b1 - 7, 20), (b2 - 513, 1029), (b1 - 100_000, 300_000), (b2 - 1, 2), (b1 - 1000, 1000), (b1, 1000) })
        {
            Assert.Equal(length, disk.Top.Read(buffer.AsSpan(0, length), offset));
            expected(want.AsSpan(0, length), offset);
            Assert.True(buffer.AsSpan(0, length).SequenceEqual(want.AsSpan(0, length)), $"read of {length} at {offset}");
        }

        var all = new byte[disk.Size];
        Assert.Equal(all.Length, disk.Top.Read(all, 0));
        var allWant = new byte[disk.Size];
        expected(allWant, 0);
        Assert.True(all.AsSpan().SequenceEqual(allWant));
        CoreTestSupport.AssertReadsLike(disk.Top, expected, seed: 6);
    }

    [Fact]
    public void Image_smaller_than_its_storage_reads_zeros_past_its_end_with_a_warning()
    {
        string folder = _temp.Folder("small.hdd");
        var img = new ParallelsImageBuilder(2048, 512) { Content = ParallelsImageBuilder.Pattern(70) };
        img.AllocateAll();
        img.Build(Path.Combine(folder, "a.hds"));
        new DescriptorBuilder(4096).SingleStorage(512, (Top, "Compressed", "a.hds")).Shot(Top, Guid.Empty).WriteTo(folder);
        using var disk = VirtualDisk.Open(folder);
        Assert.Equal(4096L * 512, disk.Size);
        Assert.Contains(disk.Warnings, w => w.Contains("less than its storage", StringComparison.Ordinal));
        CoreTestSupport.AssertReadsLike(disk.Top, (span, offset) =>
        {
            for (int i = 0; i < span.Length; i++)
            {
                long o = offset + i;
                span[i] = o < 2048 * 512 ? img.ExpectedByte(o) : (byte)0;
            }
        }, seed: 8, count: 60);
    }

    [Fact]
    public void Bare_raw_file_opens_as_a_plain_disk()
    {
        var raw = new byte[3 << 20];
        new Random(9).NextBytes(raw);
        raw.AsSpan(0, 64).Clear();
        string path = _temp.Combine("raw.img");
        File.WriteAllBytes(path, raw);
        using var disk = VirtualDisk.Open(path);
        Assert.True(disk.IsBareImage);
        Assert.IsType<PlainImage>(disk.Storages[0].Images.Values.Single());
        CoreTestSupport.AssertReadsLike(disk.Top, (span, offset) => raw.AsSpan((int)offset, span.Length).CopyTo(span), seed: 10, count: 60);
    }

    [Fact]
    public void Reads_at_and_past_the_end()
    {
        var img = Image(2048, 2048, 11);
        var built = img.Build(_temp.Combine("end.hds"));
        using var disk = VirtualDisk.Open(built.Path);
        var buffer = new byte[100];
        Assert.Equal(0, disk.Top.Read(buffer, disk.Size));
        Assert.Equal(0, disk.Top.Read(buffer, disk.Size + 12345));
        Assert.Equal(10, disk.Top.Read(buffer, disk.Size - 10));
        Assert.Throws<ArgumentOutOfRangeException>(() => disk.Top.Read(buffer, -1));
    }

    [Fact]
    public void Real_split_sample_reads_its_boundaries()
    {
        using var temp = new TempFolder();
        string bundle = Samples.Extract("split", temp.Path);
        using var disk = VirtualDisk.Open(bundle);
        Assert.Equal(6, disk.Storages.Count);
        Assert.Equal(10L << 30, disk.Size);
        Assert.Empty(disk.Warnings);
        var buffer = new byte[4096];

        // The first MiB is 0x01.
        Assert.Equal(4096, disk.Top.Read(buffer, (1 << 20) - 4096));
        Assert.All(buffer, b => Assert.Equal(1, b));
        for (int k = 1; k <= 5; k++)
        {
            long boundary = k * 3989504L * 512;
            Assert.Equal(4096, disk.Top.Read(buffer, boundary - 2048));
            Assert.All(buffer.AsSpan(0, 1536).ToArray(), b => Assert.Equal(0, b));
            Assert.All(buffer.AsSpan(1536, 512).ToArray(), b => Assert.Equal(k, b));
            Assert.All(buffer.AsSpan(2048, 512).ToArray(), b => Assert.Equal(k + 1, b));
            Assert.All(buffer.AsSpan(2560).ToArray(), b => Assert.Equal(0, b));
        }
    }
}
