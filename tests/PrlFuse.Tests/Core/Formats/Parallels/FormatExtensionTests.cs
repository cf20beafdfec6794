using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.Images;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.Formats.Parallels;

/// <summary>The format extension cluster: checksum, dirty bitmap, unknown features, garbage.</summary>
public sealed class FormatExtensionTests : IDisposable
{
    private static readonly Guid BitmapId = new("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0");

    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    private static ExpandableImage Image(VirtualDisk disk) => (ExpandableImage)disk.Storages[0].Images.Values.Single();

    /// <summary>4 KiB clusters, 40 MiB: the bitmap at one sector per bit needs three L1 entries.</summary>
    private static ParallelsImageBuilder SmallClusters()
    {
        var b = new ParallelsImageBuilder(81920, 8);
        b.Allocate([0, 1, 2, 100, 5000, 10239]);
        return b;
    }

    [Fact]
    public void Dirty_bitmap_with_correct_checksum_is_decoded()
    {
        var b = SmallClusters();
        var bits = new byte[4096];
        bits[0] = 0b0000_0001; // sector 0 -> cluster 0
        bits[1] = 0b0000_0010; // sector 9 -> cluster 1
        bits[2] = 0b1111_1110; // sectors 17..23 -> cluster 2
        bits[4095] = 0b1000_0000; // sector 32767 -> cluster 4095
        b.Extension = new FormatExtensionSpec
        {
            DirtyBitmap = new DirtyBitmapSpec(BitmapId, 1, [L1Entry.Cluster(bits), L1Entry.AllDirty, L1Entry.AllClean]),
            Features = [new ExtensionFeatureSpec(0x1122334455667788, ExtensionFeatureSpec.Transit, [1, 2, 3, 4, 5])],
        };
        var built = b.Build(_temp.Combine("bitmap.hds"));

        using var disk = VirtualDisk.Open(built.Path);
        Assert.Empty(disk.Warnings);
        var image = Image(disk);
        Assert.Null(image.ExtensionError);
        var ext = Assert.IsType<FormatExtension>(image.Extension);
        Assert.True(ext.ChecksumValid);
        Assert.Equal(2, ext.Features.Count);
        Assert.True(ext.Features[0].IsDirtyBitmap);
        Assert.Equal("dirty-bitmap", ext.Features[0].Name);
        Assert.Equal("unknown-0x1122334455667788", ext.Features[1].Name);
        Assert.Equal(ExtensionFeature.FlagTransit, ext.Features[1].Flags);
        Assert.Equal(5u, ext.Features[1].DataSize);

        var bitmap = Assert.IsType<DirtyBitmapFeature>(ext.DirtyBitmap);
        Assert.Equal(BitmapId, bitmap.Id);
        Assert.Equal(1u, bitmap.GranularitySectors);
        Assert.Equal(81920ul, bitmap.SizeSectors);
        Assert.Equal(3, bitmap.L1Table.Length);
        Assert.Equal((ulong)(built.BitmapClusterOffsets[0] / 512), bitmap.L1Table[0]);
        Assert.Equal([1ul, 0ul], bitmap.L1Table[1..]);

        var dirty = image.DecodeDirtyClusters()!;
        Assert.Equal(10240, dirty.Length);
        var expected = new[] { 0, 1, 2, 4095 }.Concat(Enumerable.Range(4096, 4096)).ToArray();
        Assert.Equal(expected, Enumerable.Range(0, dirty.Length).Where(i => dirty[i]).ToArray());

        CoreTestSupport.AssertReadsLike(disk.Top, (span, offset) => b.FillExpected(span, offset), seed: 1, count: 50);
    }

    [Theory]
    [InlineData(128u)] // a granule spans two or three 63-sector clusters
    [InlineData(64u)] // a granule straddles a cluster boundary
    public void Dirty_bitmap_granule_marks_every_cluster_it_touches(uint granularity)
    {
        // 40 clusters of 63 sectors = 2520 sectors.
        var b = new ParallelsImageBuilder(63 * 40, 63);
        b.Allocate([2, 3]);
        var bits = new byte[1];
        bits[0] = 0b0000_0010; // granule 1
        var bitsArray = new byte[8];
        bitsArray[0] = bits[0];
        int lastGranule = (int)((2520 + granularity - 1) / granularity) - 1;
        bitsArray[lastGranule / 8] |= (byte)(1 << (lastGranule % 8));
        b.Extension = new FormatExtensionSpec { DirtyBitmap = new DirtyBitmapSpec(BitmapId, granularity, [L1Entry.Cluster(bitsArray)]) };
        var built = b.Build(_temp.Combine($"gran{granularity}.hds"));

        using var disk = VirtualDisk.Open(built.Path);
        var dirty = Image(disk).DecodeDirtyClusters()!;

        var expected = new SortedSet<int>();
        foreach (int g in new[] { 1, lastGranule })
        {
            long first = g * granularity;
            long last = Math.Min(((g + 1) * granularity) - 1, 2519);
            for (long c = first / 63; c <= last / 63; c++)
            {
                expected.Add((int)c);
            }
        }

        Assert.Equal(expected.ToArray(), Enumerable.Range(0, dirty.Length).Where(i => dirty[i]).ToArray());
    }

    [Fact]
    public void Wrong_checksum_is_a_warning_and_reading_works()
    {
        var b = SmallClusters();
        b.Extension = new FormatExtensionSpec { WrongChecksum = true, DirtyBitmap = new DirtyBitmapSpec(BitmapId, 8, [L1Entry.AllDirty]) };
        var built = b.Build(_temp.Combine("md5.hds"));
        using var disk = VirtualDisk.Open(built.Path);
        var image = Image(disk);
        Assert.NotNull(image.Extension);
        Assert.False(image.Extension!.ChecksumValid);
        Assert.Contains("MD5", image.ExtensionError, StringComparison.Ordinal);
        var warning = Assert.Single(disk.Warnings);
        Assert.Contains("md5.hds", warning, StringComparison.Ordinal);
        Assert.Contains("MD5 checksum does not match", warning, StringComparison.Ordinal);
        CoreTestSupport.AssertReadsLike(disk.Top, (span, offset) => b.FillExpected(span, offset), seed: 2, count: 50);
    }

    public static TheoryData<string, string> Garbage() => new()
    {
        { "random", "wrong magic" },
        { "no-end", "no end-of-features marker" },
        { "feature-too-big", "past the end of the cluster" },
        { "granularity", "not a power of 2" },
        { "l1-too-long", "does not fit its feature" },
        { "bitmap-too-small", "dirty bitmap feature is too small" },
    };

    [Theory]
    [MemberData(nameof(Garbage))]
    public void Broken_extension_is_a_warning_not_fatal(string kind, string message)
    {
        var b = SmallClusters();
        var random = new byte[4096];
        new Random(5).NextBytes(random);
        var tooBig = new byte[48];
        BitConverter.TryWriteBytes(tooBig.AsSpan(0), FormatExtensionSpec.Magic);
        BitConverter.TryWriteBytes(tooBig.AsSpan(24), 0x42ul);
        BitConverter.TryWriteBytes(tooBig.AsSpan(40), 100_000u);
        b.Extension = kind switch
        {
            "random" => new FormatExtensionSpec { Raw = random },
            "no-end" => new FormatExtensionSpec { NoEndMarker = true, Features = [new ExtensionFeatureSpec(7, 0, new byte[16])] },
            "feature-too-big" => new FormatExtensionSpec { Raw = tooBig },
            "granularity" => new FormatExtensionSpec { DirtyBitmap = new DirtyBitmapSpec(BitmapId, 3, [L1Entry.AllDirty]) },
            "l1-too-long" => new FormatExtensionSpec { DirtyBitmap = new DirtyBitmapSpec(BitmapId, 8, [L1Entry.AllDirty]) { L1SizeField = 1000 } },
            _ => new FormatExtensionSpec { Features = [new ExtensionFeatureSpec(FormatExtensionSpec.DirtyBitmapMagic, 0, new byte[16])] },
        };
        var built = b.Build(_temp.Combine($"{kind}.hds"));
        using var disk = VirtualDisk.Open(built.Path);
        var image = Image(disk);
        Assert.Null(image.Extension);
        Assert.Contains(message, image.ExtensionError, StringComparison.Ordinal);
        Assert.Contains(disk.Warnings, w => w.Contains(message, StringComparison.Ordinal) && w.Contains($"{kind}.hds", StringComparison.Ordinal));
        Assert.Null(image.DecodeDirtyClusters());
        CoreTestSupport.AssertReadsLike(disk.Top, (span, offset) => b.FillExpected(span, offset), seed: 3, count: 30);
    }

    [Theory]
    [InlineData(ExtensionFeatureSpec.Necessary)]
    [InlineData(ExtensionFeatureSpec.Transit)]
    [InlineData(ExtensionFeatureSpec.Necessary | ExtensionFeatureSpec.Transit)]
    [InlineData(0ul)]
    public void Unknown_features_are_listed_with_their_flags(ulong flags)
    {
        var b = SmallClusters();
        b.Extension = new FormatExtensionSpec
        {
            Features =
            [
                new ExtensionFeatureSpec(0xDEADBEEF, flags, new byte[13]),
                new ExtensionFeatureSpec(0xFEEDFACE, 0, new byte[8]),
            ],
        };
        var built = b.Build(_temp.Combine("unknown.hds"));
        using var disk = VirtualDisk.Open(built.Path);
        Assert.Empty(disk.Warnings);
        var ext = Image(disk).Extension!;
        Assert.True(ext.ChecksumValid);
        Assert.Null(ext.DirtyBitmap);
        Assert.Equal([(0xDEADBEEFul, flags, 13u), (0xFEEDFACEul, 0ul, 8u)], ext.Features.Select(f => (f.Magic, f.Flags, f.DataSize)).ToArray());
        CoreTestSupport.AssertReadsLike(disk.Top, (span, offset) => b.FillExpected(span, offset), seed: 4, count: 30);
    }

    [Theory]
    [InlineData("past-eof")]
    [InlineData("in-bat")]
    [InlineData("huge")]
    public void Extension_offset_outside_the_data_area_is_a_warning(string kind)
    {
        var b = SmallClusters();
        b.Extension = new FormatExtensionSpec();
        var built = b.Build(_temp.Combine("off.hds"));
        built.SetExtensionOffsetField(kind switch
        {
            "past-eof" => (ulong)(built.FileLength / 512),
            "in-bat" => 1,
            _ => ulong.MaxValue,
        });
        using var disk = VirtualDisk.Open(built.Path);
        Assert.Contains(disk.Warnings, w => w.Contains("format extension offset", StringComparison.Ordinal) && w.Contains("outside the data area", StringComparison.Ordinal));
        CoreTestSupport.AssertReadsLike(disk.Top, (span, offset) => b.FillExpected(span, offset), seed: 5, count: 30);
    }

    [Fact]
    public void Hostile_l1_entries_decode_without_throwing()
    {
        var b = SmallClusters();
        b.Extension = new FormatExtensionSpec
        {
            DirtyBitmap = new DirtyBitmapSpec(BitmapId, 1, [L1Entry.Value(ulong.MaxValue), L1Entry.Value(1UL << 62), L1Entry.Value(0x7FFF_FFFF_FFFF)]),
        };
        var built = b.Build(_temp.Combine("l1.hds"));
        using var disk = VirtualDisk.Open(built.Path);
        var dirty = Image(disk).DecodeDirtyClusters()!;
        // Bitmap clusters that lie outside the file hold no set bits.
        Assert.DoesNotContain(true, dirty);
    }

    [Fact]
    public void Parser_reads_a_rendered_cluster_directly()
    {
        var spec = new FormatExtensionSpec { DirtyBitmap = new DirtyBitmapSpec(BitmapId, 16, [L1Entry.AllClean, L1Entry.AllDirty]) };
        byte[] cluster = spec.Render(4096, 1000, []);
        Assert.True(FormatExtension.TryRead(cluster, out var ext, out string error));
        Assert.Equal(string.Empty, error);
        Assert.Equal(16u, ext!.DirtyBitmap!.GranularitySectors);
        Assert.Equal(1000ul, ext.DirtyBitmap.SizeSectors);

        cluster[4000] ^= 1; // after the end marker, but covered by the checksum
        Assert.True(FormatExtension.TryRead(cluster, out ext, out error));
        Assert.False(ext!.ChecksumValid);
        Assert.Contains("MD5", error, StringComparison.Ordinal);

        Assert.False(FormatExtension.TryRead(cluster.AsSpan(0, 40), out _, out error));
        Assert.Contains("too small", error, StringComparison.Ordinal);
    }
}
