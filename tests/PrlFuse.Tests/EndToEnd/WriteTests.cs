using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.EndToEnd;

/// <summary>The read-write top snapshot through the real mount: guest filesystems made, filled, remounted, verified.</summary>
[Collection(FuseKernelCollection.Name)]
[Trait("Needs", "Kernel")]
[Trait("Needs", "Qemu")]
[Trait("Needs", "Installed")]
public sealed class WriteTests
{
    [Theory]
    [InlineData("ext4")]
    [InlineData("xfs")]
    public void AFilesystemMadeOnCurrentRawSurvivesRemountAndQemuAgrees(string fs)
    {
        using var temp = new TempFolder();
        // 512 MiB: mkfs.xfs wants at least 300 MiB. Random content in both layers, so fills from below matter.
        var chain = QemuChain.Build(temp.Path, 2, [1024 * 1024], seed: 5);
        string baseRaw = temp.Combine("base-before.raw");
        File.WriteAllBytes(baseRaw, chain.OracleView(0, temp.Path));

        var tree = GuestFilesystem.MakeTree(temp.Combine("tree"), seed: 9);
        string mountpoint = temp.Combine("mnt");
        using (var mount = new PrlFuseMount(chain.Bundle, mountpoint))
        {
            GuestFilesystem.Make(mount.Current, fs, temp.Combine("guest"), tree);
            Assert.Equal(0, mount.Unmount().ExitCode);
        }

        // The image was closed cleanly and is consistent for QEMU too.
        string top = Path.Combine(chain.Bundle, chain.Levels[1].Files[0]);
        var check = Qemu.Check(top);
        Assert.True(check.ExitCode == 0, check.Stdout + check.Stderr);

        // Remount: every file is there with its checksum.
        using (var mount = new PrlFuseMount(chain.Bundle, mountpoint, "--read-only"))
        {
            using var loop = mount.Loop(mount.Current, temp.Combine("guest2"), readOnly: true);
            foreach (var (path, sha) in tree.Files)
            {
                Assert.Equal(sha, Hashing.Sha256File(loop.At + path));
            }

            loop.Dispose();

            // QEMU's view of the chain equals ours, byte for byte; the older snapshot did not change.
            string oracle = temp.Combine("qemu-top.raw");
            File.WriteAllBytes(oracle, chain.OracleView(1, temp.Path));
            Assert.Equal(-1, Hashing.FirstDifference(oracle, mount.Current));
            Assert.Equal(-1, Hashing.FirstDifference(baseRaw, mount.Snapshot(chain.Levels[0].Guid)));
            Assert.Equal(0, mount.Unmount().ExitCode);
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void LargeWritesIntoGrownSpaceGoPastThePageCacheUnlessBufferedWritesIsAsked(bool buffered)
    {
        using var temp = new TempFolder();
        string image = temp.Combine("disk.hds");
        Qemu.Create(image, "256M", clusterSize: "1M");
        string mountpoint = temp.Combine("mnt");
        var expected = new byte[256 << 20];
        var random = new Random(buffered ? 3 : 4);
        string expectedPath = temp.Combine("expected.raw");
        using (var mount = new PrlFuseMount(image, mountpoint, buffered ? ["--buffered-writes"] : []))
        {
            // Through the mount's direct_io these reach the daemon as 512 KiB requests: halves of new clusters, the
            // second half into a cluster the first allocated; then a partial and an unaligned write into new clusters.
            using (var handle = File.OpenHandle(mount.Current, FileMode.Open, FileAccess.Write, FileShare.ReadWrite))
            {
                foreach (var (offset, length) in new (long, int)[] { (0, 8 << 20), (20L << 20, 1 << 20), ((40L << 20) + (256 << 10), 512 << 10), ((60L << 20) + 1000, 300_000) })
                {
                    var data = new byte[length];
                    random.NextBytes(data);
                    RandomAccess.Write(handle, data, offset);
                    data.CopyTo(expected, offset);
                }
            }

            File.WriteAllBytes(expectedPath, expected);

            Assert.Equal(!buffered, DaemonHasDirectHandle(mount.DaemonPid(), image));
            Assert.Equal(-1, Hashing.FirstDifference(expectedPath, mount.Current));
            Assert.Equal(0, mount.Unmount().ExitCode);
        }

        var check = Qemu.Check(image);
        Assert.True(check.ExitCode == 0, check.Stdout + check.Stderr);
        string raw = temp.Combine("qemu.raw");
        Qemu.Convert(image, raw);
        Assert.Equal(-1, Hashing.FirstDifference(expectedPath, raw));
    }

    /// <summary>Whether the process has <paramref name="path"/> open with O_DIRECT (from /proc/PID/fdinfo).</summary>
    private static bool DaemonHasDirectHandle(int pid, string path)
    {
        int direct = System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture
            is System.Runtime.InteropServices.Architecture.Arm64 or System.Runtime.InteropServices.Architecture.Arm ? 0x10000 : 0x4000;
        foreach (string fd in Directory.GetFiles($"/proc/{pid}/fd"))
        {
            if (new FileInfo(fd).LinkTarget != path)
            {
                continue;
            }

            string flags = File.ReadAllLines($"/proc/{pid}/fdinfo/{Path.GetFileName(fd)}").First(l => l.StartsWith("flags:", StringComparison.Ordinal));
            if ((Convert.ToInt32(flags["flags:".Length..].Trim(), 8) & direct) != 0)
            {
                return true;
            }
        }

        return false;
    }
}
