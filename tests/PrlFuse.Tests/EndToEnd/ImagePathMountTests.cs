using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.EndToEnd;

/// <summary>
/// The disk's own image files, as its descriptor names them, decide what a mount uses and what 'check' reports in
/// use: never the other files that happen to lie in the same folder.
/// </summary>
[Collection(FuseKernelCollection.Name)]
[Trait("Needs", "Kernel")]
[Trait("Needs", "Qemu")]
[Trait("Needs", "Installed")]
public sealed class ImagePathMountTests
{
    [Fact]
    public void CheckOfAnImageSaysInUseOnlyWhenThatImageIsMounted()
    {
        using var temp = new TempFolder();
        string mounted = TestImage.Create(temp.Path, "mounted.hds");
        string other = TestImage.Create(temp.Path, "other.hds");
        using var mount = new PrlFuseMount(mounted, temp.Combine("mnt"), "--read-only");

        var check = PrlFuseCli.Run("check", other);
        Assert.True(check.ExitCode == 0, check.Stdout + check.Stderr);
        Assert.DoesNotContain("in use", check.Stdout, StringComparison.Ordinal);

        var ours = PrlFuseCli.Run("check", mounted);
        Assert.Contains($"in use, mounted read-only at {mount.Mountpoint}", ours.Stdout, StringComparison.Ordinal);
        Assert.Equal(0, mount.Unmount().ExitCode);
    }

    [Fact]
    public void MountRepairFollowsAnImageOutsideTheBundleOnlyWithAllowOutsideImages()
    {
        using var temp = new TempFolder();
        string bundle = temp.Combine("disk.hdd");
        Directory.CreateDirectory(bundle);
        string outside = TestImage.Create(temp.Path, "outside.hds");
        TestImage.SetInUse(outside, TestImage.Ynot);
        string hash = TestImage.Hash(outside);
        new DescriptorBuilder(TestImage.SizeBytes / 512)
            .SingleStorage(TestImage.ClusterBytes / 512, (DescriptorBuilder.PredefinedTop, "Compressed", "../outside.hds"))
            .Shot(DescriptorBuilder.PredefinedTop, Guid.Empty)
            .WriteTo(bundle);
        string mnt = temp.Combine("mnt");
        Directory.CreateDirectory(mnt);

        var refused = PrlFuseCli.Run("mount", "--repair", bundle, mnt);
        Assert.Equal(1, refused.ExitCode);
        Assert.Contains("outside the bundle folder", refused.Stderr, StringComparison.Ordinal);
        Assert.Equal(hash, TestImage.Hash(outside));

        using var mount = new PrlFuseMount(bundle, mnt, "--repair", "--allow-outside-images");
        Assert.Equal(0, mount.Unmount().ExitCode);
        Assert.Equal(0, Qemu.Check(outside).ExitCode);
    }
}
