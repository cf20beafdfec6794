using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Qed;
using PrlFuse.Tests.Support;
using static PrlFuse.Tests.Core.Formats.Qcow2.Qcow2Oracle;

namespace PrlFuse.Tests.Core.Formats.Qed;

/// <summary>
/// QED images built by qemu-img and qemu-io, read by us: every byte equals `qemu-img convert -O raw`, in random
/// unaligned pieces too, and the data ranges equal `qemu-img map`'s. Cluster sizes 4 KiB to 64 KiB, table sizes 2 to
/// 16 clusters (QEMU itself refuses table_size=1 images it creates), zero clusters, QED chains, QED over Parallels and
/// raw, qcow2 over QED.
/// </summary>
[Trait("Needs", "Qemu")]
public sealed class QedReadTests
{
    [Theory]
    [InlineData(4096, 2, 1)]
    [InlineData(4096, 16, 2)]
    [InlineData(16384, 4, 3)]
    [InlineData(65536, 4, 4)]
    [InlineData(65536, 2, 5)]
    public void ImagesOfEveryClusterAndTableSize(int clusterSize, int tableSize, int seed)
    {
        using var temp = new TempFolder();
        Img(temp.Path, "create", "-q", "-f", "qed", "-o", $"cluster_size={clusterSize},table_size={tableSize}", "a.qed", "48M");
        Io(
            temp.Path,
            "qed",
            "a.qed",
            "write -P 1 1000 70000",
            "write -P 2 1M 3000",
            "write -z 1M 64k", // over an allocated cluster: zeroed in place
            "write -z 8M 1M", // over nothing: zero clusters
            "write -P 3 30000000 512",
            "write -P 4 47M 1M");
        AssertSameAsQemu(temp.Path, "a.qed", seed);
    }

    [Fact]
    public void QedChainOverQedOverRawWithZeroClustersHidingBackingData()
    {
        using var temp = new TempFolder();
        File.WriteAllBytes(temp.Combine("base.img"), Qcow2.Qcow2ReadTests.MixedContent(20 << 20, 9));
        Img(temp.Path, "create", "-q", "-f", "qed", "-o", "cluster_size=16384", "-b", "base.img", "-F", "raw", "mid.qed", "32M");
        Io(temp.Path, "qed", "mid.qed", "write -P 50 100000 200000", "write -z 2M 1M", "write -P 51 19M 2M");
        Img(temp.Path, "create", "-q", "-f", "qed", "-b", "mid.qed", "-F", "qed", "top.qed", "32M");
        Io(temp.Path, "qed", "top.qed", "write -P 52 150000 5000", "write -z 4M 2M", "write -P 53 31M 100k");
        AssertSameAsQemu(temp.Path, "top.qed", 10);
    }

    [Fact]
    public void QedOverParallelsWithoutBackingFormatIsProbed()
    {
        using var temp = new TempFolder();
        Img(temp.Path, "create", "-q", "-f", "parallels", "base.hds", "16M");
        Io(temp.Path, "parallels", "base.hds", "write -P 60 0 16M");
        Img(temp.Path, "create", "-q", "-f", "qed", "-o", "cluster_size=4096", "-b", "base.hds", "-F", "parallels", "top.qed", "16M");
        Io(temp.Path, "qed", "top.qed", "write -P 61 5000 10000", "write -z 3M 1M");
        AssertSameAsQemu(temp.Path, "top.qed", 11);
    }

    [Fact]
    public void Qcow2OverQed()
    {
        using var temp = new TempFolder();
        Img(temp.Path, "create", "-q", "-f", "qed", "base.qed", "16M");
        Io(temp.Path, "qed", "base.qed", "write -P 70 0 10M", "write -z 2M 1M");
        Img(temp.Path, "create", "-q", "-f", "qcow2", "-b", "base.qed", "-F", "qed", "top.qcow2", "16M");
        Io(temp.Path, "qcow2", "top.qcow2", "write -P 71 1M 100k", "write -z 5M 64k");
        AssertSameAsQemu(temp.Path, "top.qcow2", 12);
    }

    [Fact]
    public void FormatIsDecidedByMagicNotName()
    {
        using var temp = new TempFolder();
        Img(temp.Path, "create", "-q", "-f", "qed", "disk.qcow2", "8M");
        Io(temp.Path, "qed", "disk.qcow2", "write -P 9 0 1M");
        Assert.Equal(DiskSourceKind.QedImage, DiskSource.Resolve(temp.Combine("disk.qcow2")).Kind);
        AssertSameAsQemu(temp.Path, "disk.qcow2", 13);
    }

    [Fact]
    public void ImageLeftWithNeedCheckOpensReadOnlyWithAWarning()
    {
        using var temp = new TempFolder();
        Img(temp.Path, "create", "-q", "-f", "qed", "a.qed", "8M");
        Io(temp.Path, "qed", "a.qed", "write -P 9 0 1M");
        QedTestImage.SetFeatures(temp.Combine("a.qed"), FieldLocations.FeatureNeedCheck);
        using var disk = VirtualDisk.Open(temp.Combine("a.qed"));
        Assert.Contains(disk.Warnings, w => w.Contains("need-check", StringComparison.Ordinal));
    }
}
