using System.Security.Cryptography;
using PrlFuse.Tests.Core.Descriptor;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.EndToEnd;

/// <summary>The installed binary takes a VM bundle (NAME.pvm) where it takes a disk, with --disk N among several.</summary>
[Trait("Needs", "Installed")]
public sealed class VmBundleCommandTests
{
    /// <summary>sha256 of expanding.hdd's 100 MiB raw content (../shared/samples/README.md).</summary>
    private const string ExpandingSha256 = "7906281f7a25f13df78c907d7bc4e9313d9a26fa86386c6e2a737a784fe80b8f";

    [Fact]
    public void InfoListsTheDisksAndExportTakesTheOneChosen()
    {
        using var temp = new TempFolder();
        string vm = temp.Combine("Two.pvm");
        VmBundleTests.WriteConfig(vm, ("/Users/someone/Parallels/Two.pvm/expanding.hdd", "1", "1"), ("second.hdd", "1", "1"));
        string first = Samples.Extract("expanding", vm);
        var created = PrlFuseCli.Run("create", Path.Combine(vm, "second.hdd"), "--size", "1M");
        Assert.True(created.ExitCode == 0, created.Stderr);

        var info = PrlFuseCli.Run("info", vm);
        Assert.True(info.ExitCode == 0, info.Stderr);
        Assert.Contains($"disk 0  expanding.hdd  {first}", info.Stdout, StringComparison.Ordinal);
        Assert.Contains($"disk 1  second.hdd  {Path.Combine(vm, "second.hdd")}", info.Stdout, StringComparison.Ordinal);
        Assert.Contains("--disk N", info.Stdout, StringComparison.Ordinal);

        var chosenInfo = PrlFuseCli.Run("info", vm, "--disk", "1");
        Assert.True(chosenInfo.ExitCode == 0, chosenInfo.Stderr);
        Assert.Contains("size      1048576 bytes", chosenInfo.Stdout, StringComparison.Ordinal);

        var refused = PrlFuseCli.Run("export", vm, "-o", temp.Combine("none.raw"));
        Assert.Equal(1, refused.ExitCode);
        Assert.Single(refused.Stderr.TrimEnd().Split('\n'));
        Assert.Contains("has 2 disks: 0 expanding.hdd", refused.Stderr, StringComparison.Ordinal);

        string raw0 = temp.Combine("disk0.raw");
        var export0 = PrlFuseCli.Run("export", vm, "--disk", "0", "-o", raw0);
        Assert.True(export0.ExitCode == 0, export0.Stderr);
        using (var stream = File.OpenRead(raw0))
        {
            Assert.Equal(ExpandingSha256, Convert.ToHexStringLower(SHA256.HashData(stream)));
        }

        string raw1 = temp.Combine("disk1.raw");
        var export1 = PrlFuseCli.Run("export", vm, "--disk", "1", "-o", raw1);
        Assert.True(export1.ExitCode == 0, export1.Stderr);
        Assert.Equal(1L << 20, new FileInfo(raw1).Length);

        var notVm = PrlFuseCli.Run("info", first, "--disk", "0");
        Assert.Equal(1, notVm.ExitCode);
        Assert.Contains("not one; drop --disk", notVm.Stderr, StringComparison.Ordinal);
    }
}
