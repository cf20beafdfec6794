using PrlFuse.Core.Checking;
using PrlFuse.Core.Formats.Qed;
using PrlFuse.Tests.Support;
using static PrlFuse.Tests.Core.Formats.Qcow2.Qcow2Oracle;

namespace PrlFuse.Tests.Core.Formats.Qed;

/// <summary>
/// `prlfuse check` of a QED image finds what 'qemu-img check -f qed' finds, with its exit code (0 clean, 2 corrupt, 3
/// leaks), through the installed binary too; a repair clears invalid entries and gives leaked space back (QEMU's does
/// not), after which QEMU finds the image clean and it reads as before.
/// </summary>
[Trait("Needs", "Qemu")]
public sealed class QedCheckTests
{
    /// <summary>An image of 4 KiB clusters and 16 KiB tables (each maps 8 MiB); the last write is at <paramref name="last"/>.</summary>
    private static string Build(TempFolder temp, string last = "15M")
    {
        Img(temp.Path, "create", "-q", "-f", "qed", "-o", "cluster_size=4096", "a.qed", "24M");
        Io(temp.Path, "qed", "a.qed", "write -P 1 0 200k", "write -z 1M 64k", "write -P 2 5M 100k", "write -P 4 9M 40k", $"write -P 3 {last} 4k");
        return temp.Combine("a.qed");
    }

    private static int QemuCheck(string image) => ProcessRunner.Run("qemu-img", ["check", "-f", "qed", image], check: false).ExitCode;

    [Fact]
    public void CleanImageChecksClean()
    {
        using var temp = new TempFolder();
        string image = Build(temp);
        Assert.Equal(0, QemuCheck(image));
        Assert.Equal(0, QedChecker.Check(image).ExitCode);
        var cli = PrlFuseCli.Run("check", image);
        Assert.True(cli.ExitCode == 0, cli.Stdout + cli.Stderr);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void LeaksAtTheEndAndInsideAreFoundAndRepaired(bool leakATable)
    {
        using var temp = new TempFolder();

        // Without a leaked table the last write goes into the first table, so a data cluster ends the file; with one,
        // a new table does (QEMU writes a table after the data it maps), and only a leaked table makes room to move it.
        string image = Build(temp, leakATable ? "20M" : "7M");
        var header = QedTestImage.Header(image);
        long leaked;
        if (leakATable)
        {
            // L1 entry 1: its table (4 clusters) and the 10 data clusters of the 40k written at 9M.
            QedTestImage.WriteUInt64(image, header.L1TableOffset + 8, 0);
            leaked = 4 + 10 + 2;
        }
        else
        {
            QedTestImage.WriteUInt64(image, QedTestImage.FirstDataEntryOffset(image), 0);
            leaked = 1 + 2;
        }

        // And two more clusters at the end.
        using (var f = new FileStream(image, FileMode.Open))
        {
            f.SetLength(f.Length + 8192);
        }

        byte[] before = QemuView(temp.Path, "a.qed");
        Assert.Equal(3, QemuCheck(image));
        var report = QedChecker.Check(image);
        Assert.Equal(3, report.ExitCode);
        Assert.Equal(leaked, report.LeakedClusters);
        var cli = PrlFuseCli.Run("check", image);
        Assert.True(cli.ExitCode == 3, cli.Stdout + cli.Stderr);

        long length = new FileInfo(image).Length;
        var repaired = PrlFuseCli.Run("check", "--repair", image);
        Assert.True(repaired.ExitCode == 0, repaired.Stdout + repaired.Stderr);
        Assert.Equal(0, QemuCheck(image));
        Assert.Equal(length - (leaked * 4096), new FileInfo(image).Length);
        Assert.Equal(before, QemuView(temp.Path, "a.qed"));
    }

    [Fact]
    public void EntriesPastTheEndAndSharedClustersAreCorruptionsAsForQemu()
    {
        using var temp = new TempFolder();
        string image = Build(temp);
        long entry = QedTestImage.FirstDataEntryOffset(image);
        QedTestImage.WriteUInt64(image, entry, 1UL << 40);
        Assert.Equal(2, QemuCheck(image));
        Assert.Equal(2, QedChecker.Check(image).ExitCode);
        Assert.Contains(QedChecker.Check(image).Problems, p => p.Kind == CheckProblemKind.ClusterOutsideImage);

        var repair = QedChecker.Repair(image);
        Assert.Equal(QemuCheck(image), repair.ExitCode);
        Assert.True(repair.ExitCode is 0 or 3);

        // Two entries sharing one cluster.
        using var temp2 = new TempFolder();
        string shared = Build(temp2);
        long first = QedTestImage.FirstDataEntryOffset(shared);
        byte[] bytes = File.ReadAllBytes(shared);
        QedTestImage.WriteUInt64(shared, first + 8, BitConverter.ToUInt64(bytes, (int)first));
        Assert.Equal(2, QemuCheck(shared));
        Assert.Equal(2, QedChecker.Check(shared).ExitCode);
        Assert.Contains(QedChecker.Check(shared).Problems, p => p.Kind == CheckProblemKind.DuplicateOffset);
    }
}
