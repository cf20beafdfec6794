using PrlFuse.Tests.Support;
using static PrlFuse.Tests.Core.Formats.Qcow2.Qcow2Oracle;

namespace PrlFuse.Tests.Core.Formats.Qcow2;

/// <summary>
/// qcow2 images built by qemu-img and qemu-io, read by us: every byte equals `qemu-img convert -O raw` and the data
/// ranges equal `qemu-img map`'s. Versions 2 and 3, clusters of 512 B, 64 KiB and 2 MiB, zero clusters with and without
/// a cluster behind them, compressed clusters (zlib, zstd), extended L2 entries, external data files, mixed chains.
/// </summary>
[Trait("Needs", "Qemu")]
public sealed class Qcow2ReadTests
{
    [Fact]
    public void Version2With512ByteClusters()
    {
        using var temp = new TempFolder();
        Img(temp.Path, "create", "-q", "-f", "qcow2", "-o", "compat=0.10,cluster_size=512", "a.qcow2", "4M");
        Io(temp.Path, "qcow2", "a.qcow2", "write -P 1 1000 70000", "write -P 2 1M 3000", "write -P 3 3000000 512", "write -z 1001k 1k");
        AssertSameAsQemu(temp.Path, "a.qcow2", 1);
    }

    [Fact]
    public void Version3With64KiBClustersZeroAndCompressedClusters()
    {
        using var temp = new TempFolder();
        Img(temp.Path, "create", "-q", "-f", "qcow2", "-o", "compat=1.1,cluster_size=64k", "a.qcow2", "64M");
        Io(
            temp.Path,
            "qcow2",
            "a.qcow2",
            "write -P 3 0 320k",
            "write -z 64k 128k", // over allocated clusters: zero clusters that keep their host cluster
            "write -z -u 192k 64k", // a zero cluster without one
            "write -P 4 5000000 12345",
            "write -c -P 5 8M 64k",
            "write -c -P 6 8320k 64k",
            "write -z 16M 1M");
        AssertSameAsQemu(temp.Path, "a.qcow2", 2);
    }

    [Fact]
    public void Version3With2MiBClusters()
    {
        using var temp = new TempFolder();
        Img(temp.Path, "create", "-q", "-f", "qcow2", "-o", "cluster_size=2M", "a.qcow2", "64M");
        Io(temp.Path, "qcow2", "a.qcow2", "write -P 6 3M 5M", "write -z 4M 2M", "write -z 10M 4M", "write -c -P 7 20M 2M", "write -P 8 63M 1M");
        AssertSameAsQemu(temp.Path, "a.qcow2", 3);
    }

    [Fact]
    public void ExtendedL2EntriesWithSubclusters()
    {
        using var temp = new TempFolder();
        Img(temp.Path, "create", "-q", "-f", "qcow2", "-o", "cluster_size=64k,extended_l2=on", "a.qcow2", "16M");
        Io(
            temp.Path,
            "qcow2",
            "a.qcow2",
            "write -P 8 1000 3000",
            "write -z 8k 4k",
            "write -P 9 70000 100",
            "write -z 128k 64k",
            "write -P 10 300k 6k",
            "write -z -u 302k 2k",
            "write -c -P 11 1M 64k");
        AssertSameAsQemu(temp.Path, "a.qcow2", 4);
    }

    [Theory]
    [InlineData("zlib", "4096")]
    [InlineData("zlib", "65536")]
    [InlineData("zstd", "65536")]
    [InlineData("zstd", "2M")]
    public void CompressedImageFromConvert(string compression, string clusterSize)
    {
        using var temp = new TempFolder();
        File.WriteAllBytes(temp.Combine("src.raw"), MixedContent(12 << 20, 5));
        Img(temp.Path, "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", $"compression_type={compression},cluster_size={clusterSize}", "src.raw", "c.qcow2");
        AssertSameAsQemu(temp.Path, "c.qcow2", 5);
        Assert.Equal(File.ReadAllBytes(temp.Combine("src.raw")), QemuView(temp.Path, "c.qcow2"));
    }

    [Fact]
    public void ConsecutiveCompressedClustersAnswerOneRunReadTogether()
    {
        // A large read of compressed clusters is handed to ReadOwn as one run and decompressed side by side: the run
        // must cover the compressed clusters that follow (up to 32) and every byte of an unaligned read across it be right.
        using var temp = new TempFolder();
        byte[] source = new byte[4 << 20];
        for (int i = 0; i < source.Length; i++)
        {
            source[i] = (byte)"compressible text "[(i * 7 / 5) % 18];
        }

        File.WriteAllBytes(temp.Combine("src.raw"), source);
        Img(temp.Path, "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=65536", "src.raw", "c.qcow2");
        using var file = PrlFuse.Core.IO.PositionalImageFile.Open(temp.Combine("c.qcow2"), writable: false);
        using var image = PrlFuse.Core.Formats.Qcow2.Qcow2Image.Open(file);
        Assert.True(image.TryMap(65536 + 100, out long host, out long run));
        Assert.Equal(PrlFuse.Core.Images.ImageLayer.OwnReadHostOffset, host);
        Assert.Equal((32 * 65536) - 100, run);
        byte[] read = new byte[run - 5000];
        image.ReadOwn(read, 65536 + 100);
        Assert.True(source.AsSpan(65536 + 100, read.Length).SequenceEqual(read), "an unaligned read across a run of compressed clusters differs from the source");
        Assert.Equal(source, QemuView(temp.Path, "c.qcow2"));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ExternalDataFile(bool raw)
    {
        using var temp = new TempFolder();
        Img(temp.Path, "create", "-q", "-f", "qcow2", "-o", $"data_file=data.bin,data_file_raw={(raw ? "on" : "off")}", "a.qcow2", "16M");
        Io(temp.Path, "qcow2", "a.qcow2", "write -P 11 0 5000", "write -P 12 100k 300k", "write -z 128k 64k", "write -P 13 15M 1M");
        AssertSameAsQemu(temp.Path, "a.qcow2", 6, compareDataRanges: !raw);
    }

    [Fact]
    public void ChainOfQcow2OverQcow2OverParallels()
    {
        using var temp = new TempFolder();
        Img(temp.Path, "create", "-q", "-f", "parallels", "base.hds", "32M");
        Io(temp.Path, "parallels", "base.hds", "write -P 20 0 32M");
        Img(temp.Path, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b", "base.hds", "-F", "parallels", "mid.qcow2", "32M");
        Io(temp.Path, "qcow2", "mid.qcow2", "write -P 21 10000 100000", "write -z 1M 1M", "write -c -P 22 4M 4k");
        Img(temp.Path, "create", "-q", "-f", "qcow2", "-o", "cluster_size=2M", "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2", "32M");
        Io(temp.Path, "qcow2", "top.qcow2", "write -P 23 6M 3M", "write -z 12M 4M", "write -z -u 16M 2M");
        AssertSameAsQemu(temp.Path, "top.qcow2", 7);
    }

    [Fact]
    public void ChainOverRawProbedWithoutBackingFormatAndSmallerBacking()
    {
        using var temp = new TempFolder();
        byte[] baseBytes = MixedContent(3 << 20, 8);
        File.WriteAllBytes(temp.Combine("base.img"), baseBytes);
        Img(temp.Path, "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", "-b", "base.img", "-F", "raw", "mid.qcow2", "8M");
        Io(temp.Path, "qcow2", "mid.qcow2", "write -P 30 1M 64k", "write -z 2M 256k");
        Img(temp.Path, "create", "-q", "-f", "qcow2", "-o", "extended_l2=on", "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2", "8M");
        Io(temp.Path, "qcow2", "top.qcow2", "write -P 31 500k 5k", "write -z 1030k 4k");

        // Without backing_fmt the format is probed: raw here. The extension becomes one no reader knows (and skips).
        RenameExtension(temp.Combine("mid.qcow2"), 0xE2792ACA, 0x0BADCAFE);
        AssertSameAsQemu(temp.Path, "top.qcow2", 8);
    }

    /// <summary>Gives the header extension of type <paramref name="from"/> the type <paramref name="to"/>, in place.</summary>
    internal static void RenameExtension(string image, uint from, uint to)
    {
        byte[] head = new byte[4096];
        using var stream = new FileStream(image, FileMode.Open, FileAccess.ReadWrite);
        stream.ReadExactly(head);
        byte[] type = new byte[4];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(type, from);
        int at = head.AsSpan(72).IndexOf(type) + 72;
        Assert.True(at >= 72, "no such header extension");
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(head.AsSpan(at), to);
        stream.Position = 0;
        stream.Write(head);
    }

    /// <summary>Runs of random bytes (which do not compress), text (which does) and zeros.</summary>
    internal static byte[] MixedContent(int length, int seed)
    {
        var random = new Random(seed);
        byte[] data = new byte[length];
        for (int at = 0; at < length;)
        {
            int n = Math.Min(length - at, random.Next(1000, 300_000));
            switch (random.Next(3))
            {
                case 0:
                    random.NextBytes(data.AsSpan(at, n));
                    break;
                case 1:
                    for (int i = 0; i < n; i++)
                    {
                        data[at + i] = (byte)"the quick brown fox "[(i + at) % 20];
                    }

                    break;
            }

            at += n;
        }

        return data;
    }
}
