using System.Globalization;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.EndToEnd;

/// <summary>
/// Resize on a mounted disk: refused, naming the mount. A guest ext4 grown: resize the disk, then resize2fs grows the
/// filesystem into the new space; every file stays.
/// </summary>
[Collection(FuseKernelCollection.Name)]
[Trait("Needs", "Kernel")]
[Trait("Needs", "Qemu")]
[Trait("Needs", "Installed")]
public sealed class ResizeKernelTests
{
    [Fact]
    public void AGuestExt4GrowsIntoTheResizedDisk()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [64 * 2048], 533);
        var tree = GuestFilesystem.MakeTree(temp.Combine("tree"), seed: 11, count: 30);
        string mountpoint = temp.Combine("mnt");
        using (var mount = new PrlFuseMount(chain.Bundle, mountpoint))
        {
            GuestFilesystem.Make(mount.Current, "ext4", temp.Combine("guest"), tree);
            Assert.Equal(0, mount.Unmount().ExitCode);
        }

        var resized = PrlFuseCli.Run("resize", chain.Bundle, "--size", "256M");
        Assert.True(resized.ExitCode == 0, resized.Stderr);

        using (var mount = new PrlFuseMount(chain.Bundle, mountpoint))
        {
            Assert.Equal(256L << 20, new FileInfo(mount.Current).Length);
            GuestFilesystem.WithLoop(mount.Current, device =>
            {
                ProcessRunner.Run("e2fsck", "-f", "-y", device);
                ProcessRunner.Run("resize2fs", device);
                GuestFilesystem.WithMounted(device, temp.Combine("guest"), guest =>
                {
                    var df = ProcessRunner.Run("df", "--output=size", "-B1", guest).Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
                    long size = long.Parse(df[^1].Trim(), CultureInfo.InvariantCulture);
                    Assert.True(size > 200L << 20, $"the filesystem is {size} bytes after resize2fs");
                    foreach (var (path, sha) in tree.Files)
                    {
                        Assert.Equal(sha, Hashing.Sha256File(guest + path));
                    }
                });
                var fsck = ProcessRunner.Run("e2fsck", ["-f", "-n", device], check: false);
                Assert.True(fsck.ExitCode == 0, fsck.Stdout + fsck.Stderr);
            });
            Assert.Equal(0, mount.Unmount().ExitCode);
        }

        foreach (var level in chain.Levels)
        {
            Qemu.AssertClean(Path.Combine(chain.Bundle, level.Files[0]));
        }
    }

    [Fact]
    public void ResizeIsRefusedWhileTheDiskIsMountedNamingTheMountpoint()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [8 * 2048], 532);
        string mountpoint = temp.Combine("mnt");
        using var mount = new PrlFuseMount(chain.Bundle, mountpoint, "--read-only");
        var r = PrlFuseCli.Run("resize", chain.Bundle, "--size", "32M");
        Assert.Equal(1, r.ExitCode);
        Assert.Contains(mountpoint, r.Stderr, StringComparison.Ordinal);
        Assert.Single(r.Stderr.TrimEnd('\n').Split('\n'));
        var c = PrlFuseCli.Run("compact", chain.Bundle);
        Assert.Equal(1, c.ExitCode);
        Assert.Contains(mountpoint, c.Stderr, StringComparison.Ordinal);
        Assert.Equal(0, mount.Unmount().ExitCode);
    }
}
