using PrlFuse.Tests.Support;
using static PrlFuse.Tests.Core.Formats.Qcow2.Qcow2Oracle;

namespace PrlFuse.Tests.EndToEnd;

/// <summary>
/// `prlfuse mount img.qcow2 MNT` through the installed binary: a qcow2 chain (qcow2 over qcow2 over a Parallels image,
/// zero and compressed clusters) is served read-only with a notice, current.raw equals QEMU's view byte for byte, and
/// SEEK_DATA/SEEK_HOLE on it find qemu-img map's data ranges.
/// </summary>
[Collection(FuseKernelCollection.Name)]
[Trait("Needs", "Kernel")]
[Trait("Needs", "Qemu")]
[Trait("Needs", "Installed")]
public sealed class Qcow2MountTests
{
    [Fact]
    public void MountedQcow2ChainEqualsQemusView()
    {
        using var temp = new TempFolder();
        Img(temp.Path, "create", "-q", "-f", "parallels", "base.hds", "24M");
        Io(temp.Path, "parallels", "base.hds", "write -P 40 0 24M");
        Img(temp.Path, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b", "base.hds", "-F", "parallels", "mid.qcow2", "24M");
        Io(temp.Path, "qcow2", "mid.qcow2", "write -P 41 10000 100000", "write -z 1M 1M", "write -c -P 42 4M 4k");
        Img(temp.Path, "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2", "24M");
        Io(temp.Path, "qcow2", "top.qcow2", "write -P 43 6M 3M", "write -z 12M 4M", "write -c -P 44 20M 64k");
        byte[] expected = QemuView(temp.Path, "top.qcow2");
        var ranges = QemuDataRanges(temp.Path, "top.qcow2");

        string mnt = temp.Combine("mnt");
        Directory.CreateDirectory(mnt);
        var mount = PrlFuseCli.Run("mount", temp.Combine("top.qcow2"), mnt);
        try
        {
            Assert.True(mount.ExitCode == 0, mount.Stderr);
            Assert.Contains("qcow2 images are served read-only", mount.Stderr, StringComparison.Ordinal);
            string current = Path.Combine(mnt, "current.raw");
            Assert.Equal(expected, File.ReadAllBytes(current));
            Assert.Equal(ranges, SparseFile.DataRanges(current));
            Assert.ThrowsAny<Exception>(() =>
            {
                using var f = new FileStream(current, FileMode.Open, FileAccess.Write);
                f.Write(new byte[4096]);
                f.Flush(flushToDisk: true);
            });
        }
        finally
        {
            Assert.Equal(0, PrlFuseCli.Run("unmount", mnt).ExitCode);
        }
    }
}
