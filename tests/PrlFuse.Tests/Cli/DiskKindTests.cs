using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Cli;

/// <summary>Disks that are not what they seem, through the installed binary: a file is a raw disk only when it looks like one or --format raw says so.</summary>
[Trait("Needs", "Installed")]
public sealed class DiskKindTests
{
    [Fact]
    public void AFileWithNoFormatAndAnOddSizeIsRefusedUnlessFormatRaw()
    {
        using var temp = new TempFolder();
        string text = temp.Combine("passwd");
        File.WriteAllText(text, string.Concat(Enumerable.Repeat("root:x:0:0:root:/root:/bin/bash\n", 38)) + "x"); // 1217 bytes
        var refused = PrlFuseCli.Run("info", text);
        Assert.Equal(1, refused.ExitCode);
        Assert.Contains("is not a disk image", refused.Stderr, StringComparison.Ordinal);
        Assert.Contains("--format raw", refused.Stderr, StringComparison.Ordinal);
        Assert.Single(refused.Stderr.Trim().Split('\n'));
        Assert.Equal(1, PrlFuseCli.Run("export", text, "-o", temp.Combine("x.raw")).ExitCode);
        Assert.False(File.Exists(temp.Combine("x.raw")));

        var forced = PrlFuseCli.Run("info", "--format", "raw", text);
        Assert.True(forced.ExitCode == 0, forced.Stderr);
        Assert.Contains("1024 bytes", forced.Stdout, StringComparison.Ordinal);
        Assert.Contains("last 193 bytes are not a whole sector", forced.Stdout, StringComparison.Ordinal);
        Assert.DoesNotContain("no format recognised", forced.Stdout, StringComparison.Ordinal);
    }

    [Fact]
    public void AWholeNumberOfSectorsWithNoKnownMagicIsRawAndInfoSaysSo()
    {
        using var temp = new TempFolder();
        string raw = temp.Combine("disk.img");
        File.WriteAllBytes(raw, new byte[4096]);
        var info = PrlFuseCli.Run("info", raw);
        Assert.True(info.ExitCode == 0, info.Stderr);
        Assert.Contains("raw (no format recognised)", info.Stdout, StringComparison.Ordinal);
    }

    [Trait("Needs", "Qemu")]
    [Fact]
    public void ForeignFormatsAreNamed()
    {
        using var temp = new TempFolder();
        // qcow2 and QED are read now (issue 12); VMDK is not yet.
        string vmdk = temp.Combine("d.vmdk");
        Qemu.Create(vmdk, "64M", format: "vmdk");
        var v = PrlFuseCli.Run("info", vmdk);
        Assert.Equal(1, v.ExitCode);
        Assert.Contains("is a VMDK image, which prlfuse does not read yet", v.Stderr, StringComparison.Ordinal);
        string qcow2 = temp.Combine("d.qcow2");
        Qemu.Create(qcow2, "64M", format: "qcow2");
        var parallels = PrlFuseCli.Run("info", "--format", "parallels", qcow2);
        Assert.Contains("is not a Parallels image", parallels.Stderr, StringComparison.Ordinal);
    }

    [Trait("Needs", "Qemu")]
    [Fact]
    public void AnOverlayOpenedAloneWarnsThatItsParentsAreMissing()
    {
        using var temp = new TempFolder();
        var baseGuid = Guid.NewGuid();
        var topGuid = DescriptorBuilder.PredefinedTop;
        Qemu.Create(temp.Combine("base.hds"), "64M");
        Qemu.Create(temp.Combine("top.hds"), "64M");
        new DescriptorBuilder(131072)
            .SingleStorage(2048, (baseGuid, "Compressed", "base.hds"), (topGuid, "Compressed", "top.hds"))
            .Chain(baseGuid, topGuid)
            .WriteTo(temp.Path);
        var top = PrlFuseCli.Run("info", temp.Combine("top.hds"));
        Assert.True(top.ExitCode == 0, top.Stderr);
        Assert.Contains("overlay-without-parents", top.Stdout, StringComparison.Ordinal);
        Assert.Contains("parent snapshots are not included", top.Stdout, StringComparison.Ordinal);
        var baseAlone = PrlFuseCli.Run("info", temp.Combine("base.hds"));
        Assert.DoesNotContain("overlay-without-parents", baseAlone.Stdout, StringComparison.Ordinal);
    }
}
