using PrlFuse.Core;
using PrlFuse.Core.Checking;
using PrlFuse.Core.Engine;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.Checking;

/// <summary>
/// check and repair beside other users of the images (real qemu-io holders and our own writer): a check of an image
/// being written is not refused but reports that it is in use (and not "not closed cleanly"), with what it could read;
/// a repair of an image anyone else has open is refused and writes nothing.
/// </summary>
[Trait("Needs", "Qemu")]
public sealed class CheckLockTests : IDisposable
{
    private readonly TempFolder _temp = new("prlfuse-checklock");

    public void Dispose() => _temp.Dispose();

    [Fact]
    public void Check_of_an_image_a_qemu_writer_holds_reports_in_use_and_repair_is_refused()
    {
        string image = TestImage.Create(_temp.Path);
        using (QemuHolder.Start(image))
        {
            Assert.Equal(TestImage.Ynot, TestImage.ReadU32(image, 44)); // the live writer's mark
            string hash = TestImage.Hash(image);

            var report = DiskChecker.Check(image);
            var checkedImage = Assert.Single(report.Images);
            var inUse = checkedImage.Problems[0];
            Assert.Equal(CheckProblemKind.InUse, inUse.Kind);
            Assert.Equal(CheckSeverity.Error, inUse.Severity);
            Assert.Contains("image is in use: another process holds the \"write\" lock (a QEMU or prlfuse writer)", inUse.What, StringComparison.Ordinal);
            Assert.DoesNotContain(checkedImage.Problems, p => p.Kind == CheckProblemKind.NotClosedCleanly);
            Assert.Equal(128, checkedImage.TotalClusters); // what it could read: the whole BAT
            Assert.Equal(7, checkedImage.AllocatedClusters);
            Assert.Equal(CheckExit.CheckError, report.ExitCode);

            var forced = DiskChecker.Check(image, options: new ImageCheckOptions { ForceShare = true });
            Assert.Equal(CheckProblemKind.InUse, forced.Images.Single().Problems[0].Kind);

            var repair = DiskChecker.Check(image, repair: true);
            var refused = Assert.Single(Assert.Single(repair.Images).Problems);
            Assert.Equal(CheckProblemKind.InUse, refused.Kind);
            Assert.Contains("repair refused", refused.What, StringComparison.Ordinal);
            Assert.Equal(0, repair.RepairedCount);
            Assert.Equal(CheckExit.CheckError, repair.ExitCode);
            Assert.Equal(hash, TestImage.Hash(image));

            Assert.ThrowsAny<PrlFuseException>(() => DiskChecker.Check(image, repair: true, new ImageCheckOptions { ForceShare = true }));
        }

        // The writer was killed: nobody holds the image now, and its "Ynot" is a crash's.
        var after = DiskChecker.Check(image);
        Assert.DoesNotContain(after.Images.Single().Problems, p => p.Kind == CheckProblemKind.InUse);
        Assert.Contains(after.Images.Single().Problems, p => p.Kind == CheckProblemKind.NotClosedCleanly);
    }

    [Fact]
    public void Check_beside_a_qemu_reader_is_a_plain_check_and_repair_is_refused()
    {
        string image = TestImage.Create(_temp.Path);
        using var holder = QemuHolder.Start(image, readOnly: true);
        var report = DiskChecker.Check(image);
        Assert.Empty(report.Images.Single().Problems);
        Assert.Equal(CheckExit.Clean, report.ExitCode);

        var repair = DiskChecker.Check(image, repair: true);
        var refused = Assert.Single(repair.Images.Single().Problems);
        Assert.Equal(CheckProblemKind.InUse, refused.Kind);
        Assert.Contains("does not share the \"write\" lock", refused.What, StringComparison.Ordinal);
    }

    [Fact]
    public void Check_of_a_disk_our_writer_holds_reports_the_top_in_use_and_repair_is_refused()
    {
        var chain = QemuChain.Build(_temp.Path, 2, [8 * 2048], 811);
        string basePath = Path.Combine(chain.Bundle, chain.Levels[0].Files[0]);
        string top = Path.Combine(chain.Bundle, chain.Levels[1].Files[0]);
        using var disk = VirtualDisk.Open(chain.Bundle, new DiskOpenOptions { ReadOnly = false });
        disk.Top.Write(new byte[4096], 0); // marks the top "Ynot"
        disk.Flush();

        var report = DiskChecker.Check(chain.Bundle);
        var topReport = report.Images.Single(i => i.Path == top);
        Assert.Equal(CheckProblemKind.InUse, topReport.Problems[0].Kind);
        Assert.DoesNotContain(topReport.Problems, p => p.Kind == CheckProblemKind.NotClosedCleanly);
        Assert.Empty(report.Images.Single(i => i.Path == basePath).Problems); // held read-only: checked as usual
        Assert.Equal(CheckExit.CheckError, report.ExitCode);

        // The top may still grow in the background (growth ahead), so what a repair writes is compared: header and BAT.
        byte[] topHead = Head(top);
        string baseHash = TestImage.Hash(basePath);
        var repair = DiskChecker.Check(chain.Bundle, repair: true);
        foreach (var image in repair.Images)
        {
            var refused = Assert.Single(image.Problems);
            Assert.Equal(CheckProblemKind.InUse, refused.Kind);
            Assert.Contains("repair refused", refused.What, StringComparison.Ordinal);
        }

        Assert.Contains("holds the \"write\" lock", repair.Images.Single(i => i.Path == top).Problems[0].What, StringComparison.Ordinal);
        Assert.Equal(topHead, Head(top));
        Assert.Equal(baseHash, TestImage.Hash(basePath));
    }

    private static byte[] Head(string path)
    {
        using var f = File.OpenHandle(path);
        var head = new byte[64 + (4 * 1024)];
        RandomAccess.Read(f, head, 0);
        return head;
    }
}
