using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.EndToEnd;

/// <summary>
/// Read-only places, through the installed binary as root: an image file with no write bits, or a bundle on a
/// read-only filesystem, is never opened for writing; a plain mount serves it read-only with a notice, and a repair
/// with nothing to repair succeeds without writing.
/// </summary>
[Collection(FuseKernelCollection.Name)]
[Trait("Needs", "Kernel")]
[Trait("Needs", "Installed")]
public sealed class ReadOnlyPlaceTests
{
    [Fact]
    public void AMode0444ImageIsServedReadOnlyAndNeverWrittenEvenByRoot()
    {
        using var temp = new TempFolder();
        string bundle = Samples.Extract("expanding", temp.Path);
        string image = Directory.GetFiles(bundle, "*.hds").Single();
        File.SetUnixFileMode(image, UnixFileMode.UserRead | UnixFileMode.GroupRead | UnixFileMode.OtherRead);
        string hash = TestImage.Hash(image);
        var mtime = File.GetLastWriteTimeUtc(image);

        var repair = PrlFuseCli.Run("check", "--repair", bundle);
        Assert.True(repair.ExitCode == 0, repair.Stdout + repair.Stderr);
        Assert.DoesNotContain("ERROR", repair.Stdout + repair.Stderr, StringComparison.Ordinal);
            Assert.Contains("No errors were found", repair.Stdout, StringComparison.Ordinal);

        string mnt = temp.Combine("mnt");
        Directory.CreateDirectory(mnt);
        var mount = PrlFuseCli.Run("mount", bundle, mnt);
        try
        {
            Assert.True(mount.ExitCode == 0, mount.Stderr);
            Assert.Contains("the image file is read-only (mode 0444); serving read-only", mount.Stderr, StringComparison.Ordinal);
            Assert.ThrowsAny<Exception>(() =>
            {
                using var f = new FileStream(Path.Combine(mnt, "current.raw"), FileMode.Open, FileAccess.Write);
                f.Write(new byte[4096]);
                f.Flush(flushToDisk: true);
            });
        }
        finally
        {
            Assert.Equal(0, PrlFuseCli.Run("unmount", mnt).ExitCode);
        }

        Assert.Equal(hash, TestImage.Hash(image));
        Assert.Equal(mtime, File.GetLastWriteTimeUtc(image));
    }

    [Fact]
    public void AnImageAnotherUserOwnsIsTreatedAsReadOnlyLikeMode0444()
    {
        // Run as "nobody" over root's 0644 files: permission to write exists, but not for this user. The binary is copied
        // where nobody can run it (the repository may sit in a folder only root enters).
        using var temp = new TempFolder();
        File.SetUnixFileMode(temp.Path, (UnixFileMode)0x1ED);
        string binary = temp.Combine("prlfuse");
        File.Copy(PrlFuseCli.Binary, binary);
        File.SetUnixFileMode(binary, (UnixFileMode)0x1ED);
        string bundle = Samples.Extract("expanding", temp.Path);
        File.SetUnixFileMode(bundle, (UnixFileMode)0x1ED);
        foreach (string file in Directory.GetFiles(bundle))
        {
            File.SetUnixFileMode(file, (UnixFileMode)0x1A4);
        }

        string image = Directory.GetFiles(bundle, "*.hds").Single();
        string hash = TestImage.Hash(image);
        var env = new Dictionary<string, string> { ["HOME"] = temp.Path };
        ProcessRunner.Result AsNobody(params string[] args) =>
            ProcessRunner.Run("runuser", ["-u", "nobody", "--", binary, .. args], TimeSpan.FromMinutes(2), check: false, env: env);

        var repair = AsNobody("check", "--repair", bundle);
        Assert.True(repair.ExitCode == 0, repair.Stdout + repair.Stderr);
        Assert.Contains("No errors were found", repair.Stdout, StringComparison.Ordinal);

        // A plain mount serves it read-only with the reason, as for mode 0444. Whether the mount itself then succeeds
        // depends on /dev/fuse's mode for other users (Debian: 0666; some machines: 0600), which is not what is tested.
        string mnt = temp.Combine("mnt");
        Directory.CreateDirectory(mnt);
        File.SetUnixFileMode(mnt, (UnixFileMode)0x1FF);
        var mount = AsNobody("mount", bundle, mnt);
        try
        {
            Assert.Contains("you may not write the image file (owner uid 0, mode 0644); serving read-only", mount.Stderr, StringComparison.Ordinal);
            Assert.DoesNotContain("permission denied opening for writing", mount.Stderr, StringComparison.Ordinal);
        }
        finally
        {
            if (mount.ExitCode == 0)
            {
                AsNobody("unmount", mnt);
            }
        }

        Assert.Equal(hash, TestImage.Hash(image));
    }

    [Fact]
    public void ABundleOnAReadOnlyFilesystemChecksRepairsNothingAndMountsReadOnly()
    {
        using var temp = new TempFolder();
        string fs = temp.Combine("ro");
        Directory.CreateDirectory(fs);
        ProcessRunner.Run("mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", fs);
        string mnt = temp.Combine("mnt");
        Directory.CreateDirectory(mnt);
        try
        {
            string bundle = Samples.Extract("expanding", fs);
            ProcessRunner.Run("mount", "-o", "remount,ro", fs);
            var repair = PrlFuseCli.Run("check", "--repair", bundle);
            Assert.True(repair.ExitCode == 0, repair.Stdout + repair.Stderr);
            Assert.DoesNotContain("ERROR", repair.Stdout + repair.Stderr, StringComparison.Ordinal);
            Assert.Contains("No errors were found", repair.Stdout, StringComparison.Ordinal);

            var mount = PrlFuseCli.Run("mount", bundle, mnt);
            try
            {
                Assert.True(mount.ExitCode == 0, mount.Stderr);
                Assert.Contains("read-only filesystem; serving read-only", mount.Stderr, StringComparison.Ordinal);
                Assert.Equal("7906281f7a25f13df78c907d7bc4e9313d9a26fa86386c6e2a737a784fe80b8f", Hashing.Sha256File(Path.Combine(mnt, "current.raw")));
            }
            finally
            {
                PrlFuseCli.Run("unmount", mnt);
            }
        }
        finally
        {
            ProcessRunner.Run("umount", [fs], check: false);
        }
    }
}
