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
