using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Nbd;

/// <summary>
/// The image locks hold between the two front ends: a disk served read-write is not served or mounted read-write a
/// second time, and a disk mounted read-write is not served; read-only beside read-only is fine.
/// </summary>
[Collection(FuseKernelCollection.Name)]
[Trait("Needs", "Kernel")]
[Trait("Needs", "Qemu")]
[Trait("Needs", "Installed")]
public sealed class NbdLockTests
{
    [Fact]
    public void ServingReadWriteRefusesAnotherServerAndAMount()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [8 * 2048], 77);
        using var serve = new PrlFuseServe(chain.Bundle, temp.Combine("nbd.sock"));

        var second = PrlFuseCli.Run("serve", chain.Bundle, "--socket", temp.Combine("second.sock"));
        Assert.Equal(1, second.ExitCode);
        Assert.Contains("in use", second.Stderr, StringComparison.Ordinal);
        Assert.Single(second.Stderr.Trim().Split('\n'));
        Assert.False(File.Exists(temp.Combine("second.sock")), "the refused server left a socket");

        string mountpoint = temp.Folder("mnt");
        try
        {
            var mount = PrlFuseCli.Run("mount", chain.Bundle, mountpoint);
            Assert.NotEqual(0, mount.ExitCode);
            Assert.Contains("in use", mount.Stderr, StringComparison.Ordinal);
            Assert.Null(PrlFuse.Fuse.MountTable.FileSystemTypeAt(mountpoint));
        }
        finally
        {
            if (PrlFuse.Fuse.MountTable.FileSystemTypeAt(mountpoint) is not null)
            {
                ProcessRunner.Run("fusermount3", ["-uz", mountpoint], check: false);
            }
        }

        Assert.Equal(0, serve.Stop());
    }

    [Fact]
    public void MountedReadWriteRefusesServingButReadOnlyGoesBesideReadOnly()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [8 * 2048], 81);
        using (var mount = new PrlFuseMount(chain.Bundle, temp.Combine("mnt")))
        {
            var refused = PrlFuseCli.Run("serve", chain.Bundle, "--socket", temp.Combine("nbd.sock"));
            Assert.Equal(1, refused.ExitCode);
            Assert.Contains("in use", refused.Stderr, StringComparison.Ordinal);
            Assert.Equal(0, mount.Unmount().ExitCode);
        }

        using var readOnlyMount = new PrlFuseMount(chain.Bundle, temp.Combine("mnt2"), "--read-only");
        using var serve = new PrlFuseServe(chain.Bundle, temp.Combine("nbd.sock"), "--read-only");
        var compare = Qemu.Img("compare", "-f", "raw", "-F", "raw", serve.Uri("current"), readOnlyMount.Current);
        Assert.True(compare.ExitCode == 0, compare.Stdout + compare.Stderr);
        Assert.Equal(0, serve.Stop());
        Assert.Equal(0, readOnlyMount.Unmount().ExitCode);
    }
}
