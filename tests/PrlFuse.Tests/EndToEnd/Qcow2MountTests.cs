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

    [Fact]
    public void InternalSnapshotsAreReadOnlyFilesOfTheirOwnSize()
    {
        using var temp = new TempFolder();
        Img(temp.Path, "create", "-q", "-f", "qcow2", "a.qcow2", "6M");
        Io(temp.Path, "qcow2", "a.qcow2", "write -P 21 0 6M");
        Img(temp.Path, "snapshot", "-c", "before-upgrade", "a.qcow2");
        Img(temp.Path, "resize", "-q", "a.qcow2", "8M");
        Io(temp.Path, "qcow2", "a.qcow2", "write -P 22 1M 7M");
        Img(temp.Path, "snapshot", "-c", "x/y", "a.qcow2");
        Io(temp.Path, "qcow2", "a.qcow2", "write -P 23 0 8M");
        byte[] first = new byte[6 << 20];
        Array.Fill(first, (byte)21);
        byte[] second = new byte[8 << 20];
        Array.Fill(second, (byte)21, 0, 1 << 20);
        Array.Fill(second, (byte)22, 1 << 20, 7 << 20);

        var info = PrlFuseCli.Run("info", "--json", temp.Combine("a.qcow2"));
        Assert.True(info.ExitCode == 0, info.Stderr);
        using (var json = System.Text.Json.JsonDocument.Parse(info.Stdout))
        {
            var list = json.RootElement.GetProperty("internalSnapshots").EnumerateArray().ToList();
            Assert.Equal(["before-upgrade.raw", "2.raw"], list.Select(e => e.GetProperty("file").GetString()));
            Assert.Equal(["before-upgrade", "x/y"], list.Select(e => e.GetProperty("name").GetString()));
            Assert.Equal([6L << 20, 8L << 20], list.Select(e => e.GetProperty("sizeBytes").GetInt64()));
        }

        var export = PrlFuseCli.Run("export", temp.Combine("a.qcow2"), "--snapshot", "x/y", "-o", temp.Combine("second.raw"));
        Assert.True(export.ExitCode == 0, export.Stderr);
        Assert.Equal(second, File.ReadAllBytes(temp.Combine("second.raw")));

        string mnt = temp.Combine("mnt");
        Directory.CreateDirectory(mnt);
        var mount = PrlFuseCli.Run("mount", "--read-only", temp.Combine("a.qcow2"), mnt);
        try
        {
            Assert.True(mount.ExitCode == 0, mount.Stderr);
            Assert.Equal(["2.raw", "before-upgrade.raw"], Directory.GetFiles(Path.Combine(mnt, "snapshots")).Select(Path.GetFileName).Order(StringComparer.Ordinal));
            string firstFile = Path.Combine(mnt, "snapshots", "before-upgrade.raw");
            Assert.Equal(first, File.ReadAllBytes(firstFile));
            Assert.Equal(second, File.ReadAllBytes(Path.Combine(mnt, "snapshots", "2.raw")));
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.GroupRead | UnixFileMode.OtherRead, File.GetUnixFileMode(firstFile));
            Assert.ThrowsAny<IOException>(() => new FileStream(firstFile, FileMode.Open, FileAccess.Write).Dispose());
        }
        finally
        {
            Assert.Equal(0, PrlFuseCli.Run("unmount", mnt).ExitCode);
        }
    }
}
