using PrlFuse.Tests.Support;
using static PrlFuse.Tests.Core.Formats.Qcow2.Qcow2Oracle;

namespace PrlFuse.Tests.EndToEnd;

/// <summary>
/// QED images through the installed binary: `mount`, `export`, `info` and `map` take a .qed chain (QED over QED over raw,
/// zero clusters hiding backing data) and show QEMU's view byte for byte, in thousands of random unaligned reads too;
/// writes through the mount (unaligned, across clusters, over backing data) leave an image 'qemu-img check' finds clean
/// and 'qemu-img compare' finds equal to a model.
/// </summary>
[Collection(FuseKernelCollection.Name)]
[Trait("Needs", "Kernel")]
[Trait("Needs", "Qemu")]
[Trait("Needs", "Installed")]
public sealed class QedMountTests
{
    private static void BuildChain(string folder)
    {
        File.WriteAllBytes(Path.Combine(folder, "base.img"), Core.Formats.Qcow2.Qcow2ReadTests.MixedContent(12 << 20, 31));
        Img(folder, "create", "-q", "-f", "qed", "-o", "cluster_size=4096,table_size=2", "-b", "base.img", "-F", "raw", "mid.qed", "24M");
        Io(folder, "qed", "mid.qed", "write -P 41 10000 100000", "write -z 1M 1M", "write -P 42 20M 1M");
        Img(folder, "create", "-q", "-f", "qed", "-b", "mid.qed", "-F", "qed", "top.qed", "24M");
        Io(folder, "qed", "top.qed", "write -P 43 6M 3M", "write -z 3M 4M", "write -P 44 23M 64k");
    }

    [Fact]
    public void MountedExportedAndMappedQedChainEqualsQemusView()
    {
        using var temp = new TempFolder();
        BuildChain(temp.Path);
        byte[] expected = QemuView(temp.Path, "top.qed");
        var ranges = QemuDataRanges(temp.Path, "top.qed");

        var export = PrlFuseCli.Run("export", temp.Combine("top.qed"), "-o", temp.Combine("export.raw"));
        Assert.True(export.ExitCode == 0, export.Stderr);
        Assert.Equal(expected, File.ReadAllBytes(temp.Combine("export.raw")));

        var info = PrlFuseCli.Run("info", temp.Combine("top.qed"));
        Assert.True(info.ExitCode == 0, info.Stderr);
        Assert.Contains("qed", info.Stdout, StringComparison.Ordinal);
        Assert.Contains("mid.qed", info.Stdout, StringComparison.Ordinal);
        var map = PrlFuseCli.Run("map", temp.Combine("top.qed"));
        Assert.True(map.ExitCode == 0, map.Stderr);

        using var mount = new PrlFuseMount(temp.Combine("top.qed"), temp.Combine("mnt"), "--read-only");
        Assert.Equal(expected, File.ReadAllBytes(mount.Current));
        Assert.Equal(ranges, SparseFile.DataRanges(mount.Current));
        var random = new Random(41);
        byte[] piece = new byte[70_000];
        using var file = new FileStream(mount.Current, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1);
        for (int i = 0; i < 3000; i++)
        {
            long offset = random.NextInt64(expected.Length);
            int length = (int)Math.Min(random.Next(1, piece.Length), expected.Length - offset);
            file.Position = offset;
            file.ReadExactly(piece, 0, length);
            Assert.True(piece.AsSpan(0, length).SequenceEqual(expected.AsSpan((int)offset, length)), $"read {offset}+{length} differs from QEMU's view");
        }
    }

    [Fact]
    public void WritesThroughTheMountLeaveAnImageQemuFindsCleanAndEqualToTheModel()
    {
        using var temp = new TempFolder();
        BuildChain(temp.Path);
        byte[] model = QemuView(temp.Path, "top.qed");
        var random = new Random(42);
        using (var mount = new PrlFuseMount(temp.Combine("top.qed"), temp.Combine("mnt")))
        {
            using (var file = new FileStream(mount.Current, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite, 1))
            {
                for (int i = 0; i < 200; i++)
                {
                    long offset = random.NextInt64(model.Length - 1);
                    int length = (int)Math.Min(random.Next(1, 200_000), model.Length - offset);
                    byte[] data = new byte[length];
                    random.NextBytes(data);
                    file.Position = offset;
                    file.Write(data);
                    data.CopyTo(model, offset);
                    if (i % 40 == 0)
                    {
                        file.Flush(flushToDisk: true);
                    }
                }

                file.Flush(flushToDisk: true);
            }

            Assert.Equal(model, File.ReadAllBytes(mount.Current));
            Assert.Equal(0, mount.Unmount().ExitCode);
        }

        var check = ProcessRunner.Run("qemu-img", ["check", "-f", "qed", temp.Combine("top.qed")], check: false);
        Assert.True(check.ExitCode == 0, check.Stdout + check.Stderr);
        File.WriteAllBytes(temp.Combine("model.raw"), model);
        var compare = ProcessRunner.Run("qemu-img", ["compare", "-f", "raw", "-F", "qed", temp.Combine("model.raw"), temp.Combine("top.qed")], check: false, workingDirectory: temp.Path);
        Assert.True(compare.ExitCode == 0, compare.Stdout + compare.Stderr);
        Assert.Equal(0, PrlFuseCli.Run("check", temp.Combine("top.qed")).ExitCode);
    }
}
