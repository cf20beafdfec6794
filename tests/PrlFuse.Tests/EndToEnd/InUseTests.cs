using System.Text.Json.Nodes;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.EndToEnd;

/// <summary>
/// A disk in use, through the installed binary and real QEMU, both ways: our read-write mount keeps QEMU writers out
/// with QEMU's own messages, every command knows the disk is mounted and where, and a disk QEMU holds is refused as
/// in use (never "not closed cleanly", never a --repair advice).
/// </summary>
[Collection(FuseKernelCollection.Name)]
[Trait("Needs", "Kernel")]
[Trait("Needs", "Qemu")]
[Trait("Needs", "Installed")]
public sealed class InUseTests
{
    private static string Image(string bundle) => Directory.GetFiles(bundle, "*.hds").Single();

    [Fact]
    public void AReadWriteMountKeepsQemuOutAndEveryCommandSaysWhereItIsMounted()
    {
        using var temp = new TempFolder();
        string bundle = Samples.Extract("expanding", temp.Path);
        string image = Image(bundle);
        using var mount = new PrlFuseMount(bundle, temp.Combine("mnt"));
        using (var f = new FileStream(mount.Current, FileMode.Open, FileAccess.Write, FileShare.ReadWrite))
        {
            f.Position = 5 << 20;
            f.Write(new byte[1 << 20].Select((_, i) => (byte)(i * 7)).ToArray());
            f.Flush(flushToDisk: true);
        }

        // QEMU honours our locks, in its own words.
        var info = Qemu.Info(image);
        Assert.NotEqual(0, info.ExitCode);
        Assert.Contains("Failed to get shared \"write\" lock", info.Stderr, StringComparison.Ordinal);
        Assert.Equal(0, Qemu.Info("-U", image).ExitCode);
        var qemuRead = Qemu.Io("-r", "-c", "read 0 512", image);
        Assert.Contains("Failed to get shared \"write\" lock", qemuRead.Stderr + qemuRead.Stdout, StringComparison.Ordinal);
        Assert.Equal(0, Qemu.Io("-r", "-U", "-c", "read 0 512", image).ExitCode);
        var qemuWrite = Qemu.Io("-c", "write 0 512", image);
        Assert.Contains("Failed to get \"write\" lock", qemuWrite.Stderr + qemuWrite.Stdout, StringComparison.Ordinal);
        var qemuRepair = Qemu.Img("check", "-r", "all", image);
        Assert.NotEqual(0, qemuRepair.ExitCode);
        Assert.Contains("lock", qemuRepair.Stderr, StringComparison.Ordinal);

        // info and check say in use and where, and report what they read.
        var ours = PrlFuseCli.Run("info", bundle);
        Assert.True(ours.ExitCode == 0, ours.Stderr);
        Assert.Contains($"in use    mounted read-write at {mount.Mountpoint} by prlfuse", ours.Stdout, StringComparison.Ordinal);
        Assert.DoesNotContain("not closed", ours.Stdout + ours.Stderr, StringComparison.OrdinalIgnoreCase);
        var json = JsonNode.Parse(PrlFuseCli.Run("info", "--json", bundle).Stdout)!;
        Assert.Contains(mount.Mountpoint, json["inUse"]![0]!.GetValue<string>(), StringComparison.Ordinal);
        var check = PrlFuseCli.Run("check", bundle);
        Assert.Equal(1, check.ExitCode);
        Assert.Contains($"in use, mounted read-write at {mount.Mountpoint}", check.Stdout, StringComparison.Ordinal);
        Assert.DoesNotContain("not closed", check.Stdout, StringComparison.OrdinalIgnoreCase);

        // Writing commands refuse; nothing is written.
        string before = TestImage.Hash(image);
        var repair = PrlFuseCli.Run("check", "--repair", bundle);
        Assert.NotEqual(0, repair.ExitCode);
        Assert.Contains("Repair refused", repair.Stdout, StringComparison.Ordinal);
        Assert.DoesNotContain("Repaired", repair.Stdout, StringComparison.Ordinal);
        Assert.Equal(before, TestImage.Hash(image));

        // export refuses unless --force-share, and then says the copy may be inconsistent.
        var export = PrlFuseCli.Run("export", bundle, "-o", temp.Combine("copy.raw"));
        Assert.Equal(1, export.ExitCode);
        Assert.Contains($"mounted read-write at {mount.Mountpoint}", export.Stderr, StringComparison.Ordinal);
        Assert.False(File.Exists(temp.Combine("copy.raw")));
        var forced = PrlFuseCli.Run("export", "--force-share", bundle, "-o", temp.Combine("copy.raw"));
        Assert.True(forced.ExitCode == 0, forced.Stderr);
        Assert.Contains("may be inconsistent", forced.Stderr, StringComparison.Ordinal);

        // A second read-write mount and a read-only one are refused, naming the mount; a force-share one is served.
        Directory.CreateDirectory(temp.Combine("b"));
        var second = PrlFuseCli.Run("mount", bundle, temp.Combine("b"));
        Assert.Equal(1, second.ExitCode);
        Assert.Contains($"disk is in use: mounted read-write at {mount.Mountpoint}", second.Stderr, StringComparison.Ordinal);
        Assert.Equal(1, PrlFuseCli.Run("mount", "--read-only", bundle, temp.Combine("b")).ExitCode);
        Assert.Contains("goes with --read-only only", PrlFuseCli.Run("mount", "--force-share", bundle, temp.Combine("b")).Stderr, StringComparison.Ordinal);
        using (var peek = new PrlFuseMount(bundle, temp.Combine("b"), "--read-only", "--force-share"))
        {
            Assert.Equal(-1, Hashing.FirstDifference(mount.Current, peek.Current));
            Assert.Equal(0, peek.Unmount().ExitCode);
        }

        Assert.Equal(0, mount.Unmount().ExitCode);
        Assert.Equal(0, Qemu.Check(image).ExitCode);
    }

    [Fact]
    public void ADiskQemuWritesIsRefusedAsInUseNeverAsUnclean()
    {
        using var temp = new TempFolder();
        string bundle = Samples.Extract("expanding", temp.Path);
        string image = Image(bundle);
        string mnt = temp.Combine("mnt");
        Directory.CreateDirectory(mnt);
        using (var writer = QemuHolder.Start(image))
        {
            foreach (var args in new[] { new[] { "mount", bundle, mnt }, ["mount", "--read-only", bundle, mnt], ["mount", "--repair", bundle, mnt] })
            {
                var r = PrlFuseCli.Run(args);
                Assert.Equal(1, r.ExitCode);
                Assert.Contains(image, r.Stderr, StringComparison.Ordinal);
                Assert.Contains("\"write\" lock", r.Stderr, StringComparison.Ordinal);
                Assert.DoesNotContain("--repair", r.Stderr, StringComparison.Ordinal);
                Assert.DoesNotContain("not closed", r.Stderr, StringComparison.Ordinal);
                Assert.DoesNotContain(" " + mnt + " ", File.ReadAllText("/proc/self/mountinfo"), StringComparison.Ordinal);
            }

            using var peek = new PrlFuseMount(bundle, mnt, "--read-only", "--force-share");
            Assert.Equal(100L << 20, new FileInfo(peek.Current).Length);
            Assert.Equal(0, peek.Unmount().ExitCode);
        }

        using (var reader = QemuHolder.Start(image, readOnly: true))
        {
            var rw = PrlFuseCli.Run("mount", bundle, mnt);
            Assert.Equal(1, rw.ExitCode);
            Assert.Contains("\"write\" lock", rw.Stderr, StringComparison.Ordinal);
            using var shared = new PrlFuseMount(bundle, mnt, "--read-only");
            Assert.Equal("7906281f7a25f13df78c907d7bc4e9313d9a26fa86386c6e2a737a784fe80b8f", Hashing.Sha256File(shared.Current));
            Assert.Equal(0, shared.Unmount().ExitCode);
        }
    }
}
