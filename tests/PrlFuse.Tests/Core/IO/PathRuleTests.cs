using PrlFuse.Core;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Engine;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.IO;

/// <summary>A hostile descriptor cannot make PrlFuse open a file the user did not mean.</summary>
public sealed class PathRuleTests
{
    private static string Bundle(TempFolder temp, string file)
    {
        string bundle = temp.Combine("disk.hdd");
        Directory.CreateDirectory(bundle);
        new DescriptorBuilder(2048) { Cylinders = 2, Heads = 16, SectorsPerTrack = 64 }
            .SingleStorage(2048, (DescriptorBuilder.PredefinedTop, "Plain", file))
            .Shot(DescriptorBuilder.PredefinedTop, Guid.Empty)
            .WriteTo(bundle);
        return bundle;
    }

    [Fact]
    public void ARelativePathLeadingOutOfTheBundleIsRefused()
    {
        using var temp = new TempFolder();
        File.WriteAllBytes(temp.Combine("secret.raw"), new byte[1 << 20]);
        var e = Assert.Throws<ImagePathException>(() => VirtualDisk.Open(Bundle(temp, "../secret.raw")).Dispose());
        Assert.Contains("outside the bundle folder", e.Message, StringComparison.Ordinal);
        Assert.Contains("DiskDescriptor.xml", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ASymlinkInsideTheBundlePointingOutIsRefusedUnlessAllowed()
    {
        using var temp = new TempFolder();
        File.WriteAllBytes(temp.Combine("secret.raw"), new byte[1 << 20]);
        string bundle = Bundle(temp, "image.raw");
        File.CreateSymbolicLink(Path.Combine(bundle, "image.raw"), temp.Combine("secret.raw"));
        Assert.Throws<ImagePathException>(() => VirtualDisk.Open(bundle).Dispose());
        using var disk = VirtualDisk.Open(bundle, new DiskOpenOptions { AllowImagesOutsideBundle = true });
        Assert.Equal(1 << 20, disk.Size);
    }

    [Fact]
    public void AnAbsolutePathToARegularFileIsAllowed()
    {
        using var temp = new TempFolder();
        File.WriteAllBytes(temp.Combine("elsewhere.raw"), new byte[1 << 20]);
        using var disk = VirtualDisk.Open(Bundle(temp, temp.Combine("elsewhere.raw")));
        Assert.Equal(1 << 20, disk.Size);
    }

    [Theory]
    [InlineData("/dev/zero", "character device")]
    [InlineData("/dev/null", "character device")]
    public void DeviceNodesAreAlwaysRefused(string device, string kind)
    {
        using var temp = new TempFolder();
        var e = Assert.Throws<ImagePathException>(() => VirtualDisk.Open(Bundle(temp, device), new DiskOpenOptions { AllowImagesOutsideBundle = true }).Dispose());
        Assert.Contains(kind, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void AFifoIsRefusedWithoutBeingOpened()
    {
        using var temp = new TempFolder();
        string bundle = Bundle(temp, "image.raw");
        ProcessRunner.Run("mkfifo", Path.Combine(bundle, "image.raw"));
        var e = Assert.Throws<ImagePathException>(() => VirtualDisk.Open(bundle).Dispose());
        Assert.Contains("FIFO", e.Message, StringComparison.Ordinal);

        // A FIFO as the descriptor itself is refused too (reading it would block forever).
        string fifoXml = temp.Combine("fifo.xml");
        ProcessRunner.Run("mkfifo", fifoXml);
        Assert.Contains("FIFO", Assert.Throws<PrlFuseException>(() => VirtualDisk.Open(fifoXml).Dispose()).Message, StringComparison.Ordinal);
    }
}
