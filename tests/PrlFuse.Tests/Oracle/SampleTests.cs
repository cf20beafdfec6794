using System.Security.Cryptography;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.Images;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Oracle;

/// <summary>The real Parallels Desktop bundles give the content their README states.</summary>
public sealed class SampleTests
{
    private const string HundredMiBSha256 = "7906281f7a25f13df78c907d7bc4e9313d9a26fa86386c6e2a737a784fe80b8f";
    private const string SplitSha256 = "035f643ace2bbca90762a1318e865ec456c44cfd578e65ed32a9363d6348efa1";

    [Theory]
    [InlineData("expanding", HundredMiBSha256)]
    [InlineData("plain", HundredMiBSha256)]
    [InlineData("split", SplitSha256)]
    public void SampleHasTheStatedSha256(string name, string sha256)
    {
        using var temp = new TempFolder();
        string bundle = Samples.Extract(name, temp.Path);
        using var disk = VirtualDisk.Open(bundle);
        Assert.Equal(sha256, Sha256Of(disk.Top));
    }

    [Fact]
    public void ExpandingSampleMiBiHoldsByteI()
    {
        using var temp = new TempFolder();
        using var disk = VirtualDisk.Open(Samples.Extract("expanding", temp.Path));
        var image = Assert.IsType<ExpandableImage>(disk.Storages[0].Images[disk.Top.Id]);
        Assert.Equal(PrlFuse.Core.Formats.Parallels.ParallelsMagic.WithoutFreeSpace, image.Header.Magic);
        Assert.Equal("pd17", image.Header.InUseText);
        Assert.False(image.Header.IsUnclean);
        Assert.Equal(99, image.CountAllocatedClusters());
        var buffer = new byte[4096];
        for (int i = 0; i < 100; i++)
        {
            disk.Top.Read(buffer, (i << 20) + 12345);
            Assert.All(buffer, b => Assert.Equal((byte)i, b));
        }
    }

    [Fact]
    public void SplitSampleBoundariesHoldTheirMarkers()
    {
        using var temp = new TempFolder();
        using var disk = VirtualDisk.Open(Samples.Extract("split", temp.Path));
        Assert.Equal(6, disk.Storages.Count);
        var buffer = new byte[1024];
        for (int k = 1; k <= 5; k++)
        {
            long boundary = disk.Storages[k].Descriptor.StartSector * 512;
            Assert.Equal(1024, disk.Top.Read(buffer, boundary - 512));
            Assert.All(buffer.AsSpan(0, 512).ToArray(), b => Assert.Equal((byte)k, b));
            Assert.All(buffer.AsSpan(512).ToArray(), b => Assert.Equal((byte)(k + 1), b));
        }
    }

    [Fact]
    public void MovedBundleWithStaleAbsolutePathsStillOpens()
    {
        using var temp = new TempFolder();
        string bundle = Samples.Extract("expanding", temp.Path);
        string xml = Path.Combine(bundle, "DiskDescriptor.xml");
        File.SetAttributes(xml, FileAttributes.Normal);
        string text = File.ReadAllText(xml);
        text = text.Replace("<File>expanding.hdd.0.", "<File>/Users/someone/Parallels/old.pvm/expanding.hdd/expanding.hdd.0.", StringComparison.Ordinal);
        File.WriteAllText(xml, text);
        using var disk = VirtualDisk.Open(bundle);
        Assert.Equal(HundredMiBSha256, Sha256Of(disk.Top));
        Assert.Contains(disk.Warnings, w => w.Contains("does not exist", StringComparison.Ordinal));
    }

    private static string Sha256Of(SnapshotView view)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[1 << 20];
        for (long off = 0; off < view.Size; off += buffer.Length)
        {
            int n = view.Read(buffer, off);
            sha.AppendData(buffer, 0, n);
        }

        return Convert.ToHexStringLower(sha.GetHashAndReset());
    }
}
