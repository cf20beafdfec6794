using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.EndToEnd;

/// <summary>
/// A damaged image through the installed binary: a read-write mount is refused naming the repair and --read-only;
/// `mount --read-only` serves every sound cluster as qemu reads it, answers EIO for the damaged ones, and says so once
/// in the --log file (which keeps receiving the daemon's lines after it detached).
/// </summary>
[Collection(FuseKernelCollection.Name)]
[Trait("Needs", "Kernel")]
[Trait("Needs", "Qemu")]
[Trait("Needs", "Installed")]
public sealed class DamagedMountTests
{
    private const int C = TestImage.ClusterBytes;

    [Fact]
    public void ReadOnlyMountServesTheSoundClustersAndFailsTheDamagedOnes()
    {
        using var temp = new TempFolder();
        string image = TestImage.Create(temp.Path);
        TestImage.SetEntry(image, 4, 500); // guest cluster 4 now points far past the end of the file
        byte[] qemu = TestImage.Raw(image, temp.Path);
        string hash = TestImage.Hash(image);
        string mnt = temp.Combine("mnt");
        Directory.CreateDirectory(mnt);

        var plain = PrlFuseCli.Run("mount", image, mnt);
        Assert.Equal(1, plain.ExitCode);
        Assert.Contains("damaged BAT entr", plain.Stderr, StringComparison.Ordinal);
        Assert.Contains("prlfuse check --repair", plain.Stderr, StringComparison.Ordinal);
        Assert.Contains("read-only", plain.Stderr, StringComparison.Ordinal);

        string log = temp.Combine("daemon.log");
        using (var mount = new PrlFuseMount(image, mnt, "--read-only", "--log", log))
        {
            ReadEveryCluster(mount.Current, qemu, damaged: 4);
            var unmount = mount.Unmount();
            Assert.True(unmount.ExitCode == 0, unmount.Stderr);
        }

        // Logged once, though the kernel may have retried the read.
        var lines = File.ReadAllLines(log).Where(l => l.Contains("guest cluster 4 cannot be read", StringComparison.Ordinal)).ToList();
        Assert.Single(lines);
        Assert.Contains("current.raw", lines[0], StringComparison.Ordinal);
        Assert.Equal(hash, TestImage.Hash(image));
    }

    private static void ReadEveryCluster(string current, byte[] qemu, long damaged)
    {
        using var file = File.OpenHandle(current);
        var buffer = new byte[C];
        for (long c = 0; c * C < TestImage.SizeBytes; c++)
        {
            if (c == damaged)
            {
                // A small read and a large (spliced) one across the cluster both fail as a disk's bad sector does.
                var small = Assert.ThrowsAny<IOException>(() => RandomAccess.Read(file, buffer.AsSpan(0, 512), (c * C) + 512));
                Assert.Contains("Input/output error", small.Message, StringComparison.Ordinal);
                Assert.ThrowsAny<IOException>(() => RandomAccess.Read(file, new byte[3 * C], (c - 1) * C));
                continue;
            }

            Assert.Equal(C, RandomAccess.Read(file, buffer, c * C));
            Assert.True(qemu.AsSpan((int)(c * C), C).SequenceEqual(buffer), $"cluster {c} differs from qemu's view");
        }
    }
}
