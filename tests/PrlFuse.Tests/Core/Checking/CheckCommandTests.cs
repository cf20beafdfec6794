using PrlFuse.Cli.Commands;
using PrlFuse.Core.Checking;
using PrlFuse.Core.Engine;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.Checking;

/// <summary>
/// Each class of corruption made on purpose in a qemu-built image: 'prlfuse check' finds exactly it with qemu-img's
/// exit code and leaves the file byte-identical; --repair fixes it so that qemu-img check and prlfuse check are both
/// clean and every intact cluster still holds what it held before the corruption.
/// </summary>
[Trait("Needs", "Qemu")]
public sealed class CheckCommandTests
{
    public enum Corruption
    {
        Unclean,
        DataOffZero,
        DataOffPastEnd,
        OutsideImage,
        OutsideImageAllocated,
        Leak,
        DuplicateOfUnallocated,
        DuplicateOfAllocated,
        MisalignedOldMagic,
        BeforeDataAreaOldMagic,
    }

    private const int C = TestImage.ClusterBytes;

    private sealed record Case(CheckProblemKind Kind, int Exit, Action<string> Corrupt, Action<byte[], byte[]> Expect);

    private static Case Describe(Corruption corruption) => corruption switch
    {
        Corruption.Unclean => new(CheckProblemKind.NotClosedCleanly, 2, p => TestImage.SetInUse(p, TestImage.Ynot), (_, _) => { }),
        Corruption.DataOffZero => new(CheckProblemKind.DataOffset, 2, p => TestImage.WriteU32(p, 48, 0), (_, _) => { }),
        Corruption.DataOffPastEnd => new(CheckProblemKind.DataOffset, 2, p => TestImage.WriteU32(p, 48, 1_000_000), (_, _) => { }),
        Corruption.OutsideImage => new(CheckProblemKind.ClusterOutsideImage, 2, p => TestImage.SetEntry(p, 20, 500), (_, _) => { }),
        // An allocated entry that now points past the end: its data is lost, the cluster reads as zeros.
        Corruption.OutsideImageAllocated => new(CheckProblemKind.ClusterOutsideImage, 2, p => TestImage.SetEntry(p, 4, 500), (e, _) => Array.Clear(e, 4 * C, C)),
        Corruption.Leak => new(CheckProblemKind.LeakedSpace, 3, p => File.AppendAllText(p, new string('x', 100_000)), (_, _) => { }),
        // The later entry gets its own copy of the shared cluster: cluster 21 reads what cluster 2 holds.
        Corruption.DuplicateOfUnallocated => new(CheckProblemKind.DuplicateOffset, 2, p => TestImage.SetEntry(p, 21, TestImage.Entry(p, 2)), (e, r) => Array.Copy(r, 2 * C, e, 21 * C, C)),
        Corruption.DuplicateOfAllocated => new(CheckProblemKind.DuplicateOffset, 2, p => TestImage.SetEntry(p, 5, TestImage.Entry(p, 1)), (e, r) => Array.Copy(r, 1 * C, e, 5 * C, C)),
        Corruption.MisalignedOldMagic => new(CheckProblemKind.ClusterMisaligned, 2, p =>
        {
            TestImage.ToOldMagic(p);
            TestImage.SetEntry(p, 22, TestImage.Entry(p, 2) + 1);
        }, (_, _) => { }),
        Corruption.BeforeDataAreaOldMagic => new(CheckProblemKind.ClusterBeforeDataArea, 2, p =>
        {
            TestImage.ToOldMagic(p);
            TestImage.SetEntry(p, 3, 1);
        }, (e, _) => Array.Clear(e, 3 * C, C)),
        _ => throw new ArgumentOutOfRangeException(nameof(corruption)),
    };

    [Fact]
    public void CleanImageIsClean()
    {
        using var temp = new TempFolder();
        string image = TestImage.Create(temp.Path);
        string hash = TestImage.Hash(image);
        var (exit, output) = RunCheck(image, repair: false);
        Assert.Equal(0, exit);
        Assert.Contains("No errors were found", output, StringComparison.Ordinal);
        Assert.Equal(hash, TestImage.Hash(image));
        Assert.Empty(ImageChecker.Check(image).Problems);
    }

    [Theory]
    [InlineData(Corruption.Unclean)]
    [InlineData(Corruption.DataOffZero)]
    [InlineData(Corruption.DataOffPastEnd)]
    [InlineData(Corruption.OutsideImage)]
    [InlineData(Corruption.OutsideImageAllocated)]
    [InlineData(Corruption.Leak)]
    [InlineData(Corruption.DuplicateOfUnallocated)]
    [InlineData(Corruption.DuplicateOfAllocated)]
    [InlineData(Corruption.MisalignedOldMagic)]
    [InlineData(Corruption.BeforeDataAreaOldMagic)]
    public void FindsExactlyTheCorruptionAndRepairsIt(Corruption corruption)
    {
        using var temp = new TempFolder();
        string image = TestImage.Create(temp.Path);
        byte[] reference = TestImage.Raw(image, temp.Path);
        var c = Describe(corruption);
        c.Corrupt(image);

        // A plain check finds exactly it, and changes nothing.
        string hash = TestImage.Hash(image);
        var report = ImageChecker.Check(image);
        var problem = Assert.Single(report.Problems);
        Assert.Equal(c.Kind, problem.Kind);
        Assert.Equal(c.Exit, report.ExitCode);
        var (exit, output) = RunCheck(image, repair: false);
        Assert.Equal(c.Exit, exit);
        Assert.Contains(problem.ToLine(), output, StringComparison.Ordinal);
        Assert.Contains("a.hds:", output, StringComparison.Ordinal);
        Assert.Equal(hash, TestImage.Hash(image));

        // The repair fixes it, and the result is clean for both checkers.
        (exit, output) = RunCheck(image, repair: true);
        Assert.True(exit == 0, output);
        Assert.Contains("Repaired 1 problem", output, StringComparison.Ordinal);
        var qemu = Qemu.Check(image);
        Assert.True(qemu.ExitCode == 0, qemu.Stdout + qemu.Stderr);
        Assert.Empty(ImageChecker.Check(image).Problems);
        Assert.Equal(0, RunCheck(image, repair: false).Exit);

        // Every intact cluster holds what it held before; the damaged ones read as the repair defines.
        byte[] expected = (byte[])reference.Clone();
        c.Expect(expected, reference);
        AssertSameData(expected, TestImage.Raw(image, temp.Path));

        // And our reader opens it read-write again.
        using (var disk = VirtualDisk.Open(image, new DiskOpenOptions { ReadOnly = false }))
        {
            Assert.True(disk.Top.IsWritable);
        }
    }

    [Fact]
    public void EverythingAtOnceIsFoundInQemuOrderAndRepaired()
    {
        using var temp = new TempFolder();
        string image = TestImage.Create(temp.Path);
        byte[] reference = TestImage.Raw(image, temp.Path);
        TestImage.SetInUse(image, TestImage.Ynot);
        TestImage.WriteU32(image, 48, 0);
        TestImage.SetEntry(image, 30, 900);
        TestImage.SetEntry(image, 31, TestImage.Entry(image, 0));
        TestImage.SetEntry(image, 32, TestImage.Entry(image, 0));
        File.AppendAllText(image, new string('y', 3 * C));

        var report = ImageChecker.Check(image);
        Assert.Equal(
            [CheckProblemKind.NotClosedCleanly, CheckProblemKind.DataOffset, CheckProblemKind.ClusterOutsideImage, CheckProblemKind.LeakedSpace, CheckProblemKind.DuplicateOffset, CheckProblemKind.DuplicateOffset],
            report.Problems.Select(p => p.Kind).ToArray());
        Assert.Equal(2, report.ExitCode);
        Assert.Equal(3, report.LeakedClusters);

        var result = ImageChecker.Repair(image);
        Assert.Equal(6, result.Repair.RepairedCount);
        Assert.Equal(0, result.ExitCode);
        Assert.Empty(result.After.Problems);
        Assert.Equal(0, Qemu.Check(image).ExitCode);

        byte[] expected = (byte[])reference.Clone();
        Array.Copy(reference, 0, expected, 31 * C, C);
        Array.Copy(reference, 0, expected, 32 * C, C);
        AssertSameData(expected, TestImage.Raw(image, temp.Path));
        Assert.Equal(TestImage.Entry(image, 31) + 1, TestImage.Entry(image, 32));
    }

    [Fact]
    public void ARepairInterruptedAnywhereIsFinishedByTheNextOne()
    {
        using var temp = new TempFolder();
        string image = TestImage.Create(temp.Path);
        byte[] reference = TestImage.Raw(image, temp.Path);
        TestImage.SetInUse(image, TestImage.Ynot);
        TestImage.WriteU32(image, 48, 0);
        TestImage.SetEntry(image, 30, 900);
        TestImage.SetEntry(image, 31, TestImage.Entry(image, 0));
        TestImage.SetEntry(image, 4, TestImage.Entry(image, 1));
        File.AppendAllText(image, new string('y', 3 * C));
        byte[] corrupted = File.ReadAllBytes(image);
        byte[] expected = (byte[])reference.Clone();
        Array.Copy(reference, 0, expected, 31 * C, C);
        Array.Copy(reference, 1 * C, expected, 4 * C, C);

        var log = new Formats.Parallels.OpLog();
        var result = ImageChecker.Repair(image, new ImageCheckOptions { OpenFile = Formats.Parallels.RecordingImageFile.Opener(log, _ => true) });
        Assert.Equal(0, result.ExitCode);
        var ops = log.Snapshot();
        Assert.NotEmpty(ops);

        var random = new Random(5);
        string crash = Path.Combine(temp.Path, "crash.hds");
        for (int point = 1; point <= ops[^1].Seq + 1; point++)
        {
            Formats.Parallels.DurabilityTests.BuildCrashImage(corrupted, ops, point, random, crash);
            var again = ImageChecker.Repair(crash);
            Assert.True(again.ExitCode == 0, $"crash at op {point}: {string.Join("; ", again.After.Problems.Select(p => p.ToLine()))}");
            Assert.Equal(0, Qemu.Check(crash).ExitCode);
            AssertSameData(expected, TestImage.Raw(crash, temp.Path));
        }
    }

    [Theory]
    [InlineData("expanding")]
    [InlineData("plain")]
    [InlineData("split")]
    public void RealParallelsDesktopBundlesAreClean(string name)
    {
        using var temp = new TempFolder();
        string bundle = Samples.Extract(name, temp.Path);
        var report = DiskChecker.Check(bundle);
        Assert.True(report.ExitCode == 0, string.Join("; ", report.Images.SelectMany(i => i.Problems).Concat(report.DiskProblems).Select(p => p.ToLine())));
        foreach (var image in report.Images)
        {
            var qemu = Qemu.Check(image.Path);
            Assert.True(qemu.ExitCode == 0, qemu.Stdout + qemu.Stderr);
        }
    }

    [Fact]
    public void BundleCheckNamesTheImageAndRepairsOnlyIt()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 3, [8 * 2048], 7);
        string middle = Path.Combine(chain.Bundle, chain.Levels[1].Files[0]);
        string root = Path.Combine(chain.Bundle, chain.Levels[0].Files[0]);
        TestImage.SetInUse(middle, TestImage.Ynot);
        string rootHash = TestImage.Hash(root);

        var (exit, output) = RunCheck(chain.Bundle, repair: false);
        Assert.Equal(2, exit);
        var lines = output.Split('\n').Where(l => l.Contains("ERROR", StringComparison.Ordinal)).ToList();
        var line = Assert.Single(lines);
        Assert.StartsWith(chain.Levels[1].Files[0] + ": ERROR header in_use", line, StringComparison.Ordinal);
        Assert.Contains("Checked 3 images", output, StringComparison.Ordinal);

        (exit, output) = RunCheck(Path.Combine(chain.Bundle, "DiskDescriptor.xml"), repair: true);
        Assert.True(exit == 0, output);
        Assert.Equal(0, Qemu.Check(middle).ExitCode);
        Assert.Equal(rootHash, TestImage.Hash(root));
        Assert.Equal(0, RunCheck(chain.Bundle, repair: false).Exit);
    }

    [Fact]
    public void BrokenDescriptorIsACheckError()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [8 * 2048], 8);
        string xml = Path.Combine(chain.Bundle, "DiskDescriptor.xml");
        File.WriteAllText(xml, File.ReadAllText(xml).Replace("</Snapshots>", "", StringComparison.Ordinal));
        var (exit, output) = RunCheck(chain.Bundle, repair: false);
        Assert.Equal(1, exit);
        Assert.Contains("DiskDescriptor.xml: CHECK-ERROR descriptor:", output, StringComparison.Ordinal);
    }

    [Fact]
    public void DescriptorTheSnapshotTreeRefusesIsACheckErrorButImagesAreStillChecked()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [8 * 2048], 9);
        string xml = Path.Combine(chain.Bundle, "DiskDescriptor.xml");
        // A parent that is not listed: the tree is refused, the images are named all the same.
        File.WriteAllText(xml, File.ReadAllText(xml).Replace($"<ParentGUID>{chain.Levels[0].Guid:B}</ParentGUID>", $"<ParentGUID>{Guid.NewGuid():B}</ParentGUID>", StringComparison.Ordinal));
        TestImage.SetInUse(Path.Combine(chain.Bundle, chain.Levels[0].Files[0]), TestImage.Ynot);
        var report = DiskChecker.Check(chain.Bundle);
        Assert.Equal(1, report.ExitCode);
        Assert.Contains(report.DiskProblems, p => p.Kind == CheckProblemKind.BadDescriptor);
        Assert.Equal(2, report.Images.Count);
        Assert.Equal(1, report.Corruptions);
    }

    [Fact]
    public void MissingImageIsACheckError()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [8 * 2048], 10);
        File.Delete(Path.Combine(chain.Bundle, chain.Levels[0].Files[0]));
        var (exit, output) = RunCheck(chain.Bundle, repair: false);
        Assert.Equal(1, exit);
        Assert.Contains("does not exist", output, StringComparison.Ordinal);
    }

    [Fact]
    public void NotAnImageIsACheckError()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 1, [8 * 2048], 11);
        string image = Path.Combine(chain.Bundle, chain.Levels[0].Files[0]);
        File.WriteAllBytes(image, new byte[100]);
        var report = DiskChecker.Check(chain.Bundle, repair: true);
        Assert.Equal(1, report.ExitCode);
        Assert.Equal(new byte[100], File.ReadAllBytes(image));
    }

    [Fact]
    public void RepairIsRefusedWhileTheDiskIsOpenForWriting()
    {
        using var temp = new TempFolder();
        string image = TestImage.Create(temp.Path);
        File.AppendAllText(image, new string('z', 5000));
        string hash = TestImage.Hash(image);
        using (var disk = VirtualDisk.Open(image, new DiskOpenOptions { ReadOnly = false }))
        {
            var (exit, output) = RunCheck(image, repair: true);
            Assert.Equal(1, exit);
            Assert.Contains("image is in use: another process holds the \"write\" lock", output, StringComparison.Ordinal);
            Assert.Contains("repair refused", output, StringComparison.Ordinal);
            Assert.Equal(hash, TestImage.Hash(image));

            // A plain check still works alongside: it reports what it reads (the leak), and first that the image is in use.
            var (plainExit, plain) = RunCheck(image, repair: false);
            Assert.Equal(1, plainExit);
            Assert.Contains("CHECK-ERROR image: image is in use", plain, StringComparison.Ordinal);
            Assert.Contains("LEAK", plain, StringComparison.Ordinal);
        }
    }

    [Trait("Needs", "Installed")]
    [Fact]
    public void TheRealBinaryExitsWithQemuCodes()
    {
        using var temp = new TempFolder();
        string image = TestImage.Create(temp.Path);
        Assert.Equal(0, PrlFuseCli.Run("check", image).ExitCode);
        File.AppendAllText(image, new string('x', 1000));
        var leak = PrlFuseCli.Run("check", image);
        Assert.Equal(3, leak.ExitCode);
        Assert.Contains("a.hds: LEAK", leak.Stdout, StringComparison.Ordinal);
        TestImage.SetInUse(image, TestImage.Ynot);
        Assert.Equal(2, PrlFuseCli.Run("check", image).ExitCode);
        var repair = PrlFuseCli.Run("check", "--repair", image);
        Assert.True(repair.ExitCode == 0, repair.Stdout + repair.Stderr);
        Assert.Contains("Repaired 2 problems", repair.Stdout, StringComparison.Ordinal);
        Assert.Equal(1, PrlFuseCli.Run("check", Path.Combine(temp.Path, "nothing.hds")).ExitCode);
    }

    internal static (int Exit, string Output) RunCheck(string disk, bool repair)
    {
        var writer = new StringWriter();
        int exit;
        try
        {
            exit = CheckCommand.Run(disk, repair, writer);
        }
        catch (PrlFuse.Core.PrlFuseException e)
        {
            writer.WriteLine(e.Message);
            exit = 1;
        }

        return (exit, writer.ToString());
    }

    internal static void AssertSameData(byte[] expected, byte[] actual)
    {
        Assert.Equal(expected.Length, actual.Length);
        int diff = expected.AsSpan().CommonPrefixLength(actual);
        if (diff != expected.Length)
        {
            Assert.Fail($"first difference at guest offset {diff} (cluster {diff / C}): expected {expected[diff]}, got {actual[diff]}");
        }
    }
}
