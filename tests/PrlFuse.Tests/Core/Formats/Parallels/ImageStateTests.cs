using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.Images;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.Formats.Parallels;

/// <summary>The in_use field and the empty-image flag.</summary>
public sealed class ImageStateTests : IDisposable
{
    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    private (ParallelsImageBuilder Builder, BuiltImage Image) Build(uint inUse, uint flags = 0, string name = "img.hds")
    {
        var b = new ParallelsImageBuilder(2048 * 4, 512) { InUse = inUse, Flags = flags };
        b.AllocateEvery(3);
        return (b, b.Build(_temp.Combine(name)));
    }

    [Fact]
    public void Ynot_image_opens_read_only_with_a_warning_even_when_writing_was_asked()
    {
        var (b, image) = Build(ParallelsImageBuilder.InUseOpen);
        using var disk = VirtualDisk.Open(image.Path, new DiskOpenOptions { ReadOnly = false });
        Assert.False(disk.Top.IsWritable);
        var layer = (ExpandableImage)disk.Storages[0].Images.Values.Single();
        Assert.True(layer.WasUnclean);
        Assert.False(layer.File.Writable);
        Assert.True(layer.IsImmutable);
        var warning = Assert.Single(disk.Warnings);
        Assert.Contains("img.hds", warning, StringComparison.Ordinal);
        Assert.Contains("not closed cleanly", warning, StringComparison.Ordinal);
        Assert.Contains("read-only", warning, StringComparison.Ordinal);
        CoreTestSupport.AssertReadsLike(disk.Top, (span, offset) => b.FillExpected(span, offset), seed: 1, count: 50);

        // Nothing was written to the image.
        Assert.Equal(ParallelsImageBuilder.InUseOpen, BitConverter.ToUInt32(image.ReadBytes(44, 4)));
    }

    [Fact]
    public void Ynot_image_in_a_bundle_top_is_not_writable()
    {
        string folder = _temp.Folder("b.hdd");
        var b = new ParallelsImageBuilder(2048 * 2, 2048) { InUse = ParallelsImageBuilder.InUseOpen };
        b.Allocate(1);
        b.Build(Path.Combine(folder, "top.hds"));
        new DescriptorBuilder(4096).SingleStorage(2048, (DescriptorBuilder.PredefinedTop, "Compressed", "top.hds"))
            .Shot(DescriptorBuilder.PredefinedTop, Guid.Empty).WriteTo(folder);
        using var disk = VirtualDisk.Open(folder, new DiskOpenOptions { ReadOnly = false });
        Assert.False(disk.Top.IsWritable);
        Assert.Contains(disk.Warnings, w => w.Contains("not closed cleanly", StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("pd17")]
    [InlineData("pd22")]
    [InlineData("v2.1")]
    [InlineData(null)]
    public void Other_in_use_values_are_clean(string? tag)
    {
        uint value = tag is null ? 0 : ParallelsImageBuilder.Tag(tag);
        var (b, image) = Build(value);
        using (var disk = VirtualDisk.Open(image.Path, new DiskOpenOptions { ReadOnly = false }))
        {
            Assert.True(disk.Top.IsWritable);
            Assert.Empty(disk.Warnings);
            var layer = (ExpandableImage)disk.Storages[0].Images.Values.Single();
            Assert.False(layer.WasUnclean);
            Assert.Equal(tag ?? "0x00000000", layer.Header.InUseText);
            CoreTestSupport.AssertReadsLike(disk.Top, (span, offset) => b.FillExpected(span, offset), seed: 2, count: 30);
        }

        // Reopened right after our close: a child another test forked may hold our locks for a moment (see Reopen).
        using var readOnly = Reopen.Retrying(() => VirtualDisk.Open(image.Path));
        Assert.False(readOnly.Top.IsWritable);
    }

    [Fact]
    public void Empty_image_flag_reads_as_zeros()
    {
        var (b, image) = Build(0, flags: 1);
        Assert.NotEmpty(b.AllocatedClusters);
        using var disk = VirtualDisk.Open(image.Path);
        var layer = (ExpandableImage)disk.Storages[0].Images.Values.Single();
        Assert.True(layer.Header.IsEmpty);
        Assert.Equal(0, layer.CountAllocatedClusters());
        Assert.Equal(0, disk.Top.CountAllocatedBytes());
        Assert.Contains(disk.Warnings, w => w.Contains("empty-image flag", StringComparison.Ordinal));
        CoreTestSupport.AssertReadsLike(disk.Top, (span, _) => span.Clear(), seed: 3, count: 50);
    }

    [Fact]
    public void Unused_flag_bits_change_nothing()
    {
        var (b, image) = Build(0, flags: 0xFFFF_FFFE);
        using var disk = VirtualDisk.Open(image.Path);
        Assert.Equal(b.AllocatedClusters.Count, disk.Storages[0].Images.Values.Single().CountAllocatedClusters());
        CoreTestSupport.AssertReadsLike(disk.Top, (span, offset) => b.FillExpected(span, offset), seed: 4, count: 30);
    }
}
