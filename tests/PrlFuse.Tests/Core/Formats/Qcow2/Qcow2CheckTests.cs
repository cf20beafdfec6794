using System.Buffers.Binary;
using System.Text.RegularExpressions;
using PrlFuse.Core.Checking;
using PrlFuse.Tests.Support;
using static PrlFuse.Tests.Core.Formats.Qcow2.Qcow2Oracle;

namespace PrlFuse.Tests.Core.Formats.Qcow2;

/// <summary>
/// `check` of qcow2 images damaged by hand (a leaked cluster, a refcount too low, an L2 entry past the end of the file,
/// two L2 entries sharing a cluster) finds what `qemu-img check` finds: the same number of leaks and of errors, the same
/// exit code; `--repair` then leaves an image `qemu-img check` finds clean.
/// </summary>
[Trait("Needs", "Qemu")]
public sealed partial class Qcow2CheckTests
{
    private const long Cluster = 64 * 1024;

    /// <summary>A default qcow2 (64 KiB clusters, 16-bit refcounts) with data in its first clusters.</summary>
    private static string Image(TempFolder temp)
    {
        Img(temp.Path, "create", "-q", "-f", "qcow2", "a.qcow2", "16M");
        Io(temp.Path, "qcow2", "a.qcow2", "write -P 1 0 256k", "write -P 2 5M 64k");
        return temp.Combine("a.qcow2");
    }

    /// <summary>
    /// Fuzz seed 4 case 120 (qcow2): a refcount table of more clusters than the file holds is an error QEMU cannot open
    /// the image for (exit code 1 of both), never an exception from allocating it.
    /// </summary>
    [Fact]
    public void RefcountTableLargerThanTheFileIsAnErrorNotACrash()
    {
        using var temp = new TempFolder();
        string image = Image(temp);
        using (var f = new FileStream(image, FileMode.Open, FileAccess.ReadWrite))
        {
            byte[] clusters = new byte[4];
            BinaryPrimitives.WriteUInt32BigEndian(clusters, 0x7562384a);
            f.Position = PrlFuse.Core.Formats.Qcow2.FieldLocations.RefcountTableClusters;
            f.Write(clusters);
        }

        var report = Qcow2Checker.Check(image);
        Assert.Equal(ProcessRunner.Run("qemu-img", ["check", "-f", "qcow2", image], check: false).ExitCode, report.ExitCode);
        Assert.Contains(report.Problems, p => p.Kind == CheckProblemKind.BadImage && p.What.Contains("refcount table", StringComparison.Ordinal));
    }

    /// <summary>
    /// Fuzz seed 4 case 2794 (qcow2): bitmap directory entries of hostile sizes and offsets (an extra data size of
    /// 2 GiB, a bitmap table offset with the top bit set) give a report, never an exception.
    /// </summary>
    [Theory]
    [InlineData(20, 4, 0x8000_0000UL)]
    [InlineData(0, 8, 0x8000_0000_0000_0000UL)]
    public void HostileBitmapDirectoryEntriesGiveAReport(int field, int width, ulong value)
    {
        using var temp = new TempFolder();
        Img(temp.Path, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "b.qcow2", "2M");
        Io(temp.Path, "qcow2", "b.qcow2", "write -P 1 0 64k");
        string image = temp.Combine("b.qcow2");
        Img(temp.Path, "bitmap", "--add", image, "first");
        Img(temp.Path, "bitmap", "--add", image, "second");
        Assert.True(PrlFuse.Core.Formats.Qcow2.Qcow2Header.TryRead(File.ReadAllBytes(image).AsSpan(0, 4096), out var header, out string error), error);
        using (var f = new FileStream(image, FileMode.Open, FileAccess.ReadWrite))
        {
            long at = (long)header.Bitmaps!.Value.DirectoryOffset + field;
            if (width == 8)
            {
                PutU64(f, at, value);
            }
            else
            {
                byte[] b = new byte[4];
                BinaryPrimitives.WriteUInt32BigEndian(b, (uint)value);
                f.Position = at;
                f.Write(b);
            }
        }

        var report = Qcow2Checker.Check(image);
        Assert.InRange(report.ExitCode, 0, 3);
    }

    /// <summary>Fuzz seed 6 case 10462 (qcow2): a snapshot's L1 table offset with the top bit set is a corruption the report names, not an ArgumentOutOfRangeException.</summary>
    [Fact]
    public void SnapshotL1TableAtANegativeOffsetIsReported()
    {
        using var temp = new TempFolder();
        string image = Image(temp);
        Img(temp.Path, "snapshot", "-c", "one", image);
        using (var f = new FileStream(image, FileMode.Open, FileAccess.ReadWrite))
        {
            PutU64(f, (long)U64(f, PrlFuse.Core.Formats.Qcow2.FieldLocations.SnapshotsOffset), 0x8000_0000_0000_0000UL);
        }

        var report = Qcow2Checker.Check(image);
        Assert.Contains(report.Problems, p => p.Where.Contains("snapshot", StringComparison.Ordinal) && p.Kind == CheckProblemKind.ClusterOutsideImage);
    }

    private static ulong U64(FileStream f, long at)
    {
        byte[] b = new byte[8];
        f.Position = at;
        f.ReadExactly(b);
        return BinaryPrimitives.ReadUInt64BigEndian(b);
    }

    private static void PutU64(FileStream f, long at, ulong value)
    {
        byte[] b = new byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(b, value);
        f.Position = at;
        f.Write(b);
    }

    private static void PutU16(FileStream f, long at, ushort value)
    {
        byte[] b = new byte[2];
        BinaryPrimitives.WriteUInt16BigEndian(b, value);
        f.Position = at;
        f.Write(b);
    }

    private static long RefcountBlock(FileStream f) => (long)(U64(f, (long)U64(f, 48)) & ~511UL);

    private static long L2Table(FileStream f) => (long)(U64(f, (long)U64(f, 40)) & 0x00FF_FFFF_FFFF_FE00UL);

    private static void Damage(string path, string how)
    {
        using var f = new FileStream(path, FileMode.Open, FileAccess.ReadWrite);
        long block = RefcountBlock(f);
        long l2 = L2Table(f);
        switch (how)
        {
            case "leak":
                // One more cluster at the end, counted and used by nothing.
                long end = (f.Length + Cluster - 1) / Cluster * Cluster;
                f.SetLength(end + Cluster);
                PutU16(f, block + (2 * (end / Cluster)), 1);
                break;
            case "refcount-too-low":
                long data = (long)(U64(f, l2) & 0x00FF_FFFF_FFFF_FE00UL);
                PutU16(f, block + (2 * (data / Cluster)), 0);
                break;
            case "l2-past-end":
                long past = ((f.Length + Cluster - 1) / Cluster * Cluster) + (10 * Cluster);
                PutU64(f, l2 + (8 * 40), (ulong)past | (1UL << 63));
                break;
            case "overlap":
                PutU64(f, l2 + 8, U64(f, l2));
                break;
            default:
                throw new ArgumentException(how);
        }
    }

    /// <summary>qemu-img check's exit code and its counts of errors and leaked clusters.</summary>
    private static (int Exit, int Errors, int Leaks, string Output) QemuCheck(string folder, string image)
    {
        var r = ProcessRunner.Run("qemu-img", ["check", "-f", "qcow2", image], check: false, workingDirectory: folder);
        string text = r.Stdout + r.Stderr;
        int Count(Regex pattern) => pattern.Match(text) is { Success: true } m ? int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) : 0;
        return (r.ExitCode, Count(ErrorsPattern()), Count(LeaksPattern()), text);
    }

    [GeneratedRegex(@"(\d+) errors were found on the image")]
    private static partial Regex ErrorsPattern();

    [GeneratedRegex(@"(\d+) leaked clusters were found on the image")]
    private static partial Regex LeaksPattern();

    [Theory]
    [InlineData("leak", 3)]
    [InlineData("refcount-too-low", 2)]
    [InlineData("l2-past-end", 2)]
    [InlineData("overlap", 2)]
    public void HandDamageIsFoundAsQemuFindsItAndRepaired(string how, int exit)
    {
        using var temp = new TempFolder();
        string path = Image(temp);
        Damage(path, how);
        var qemu = QemuCheck(temp.Path, "a.qcow2");
        Assert.Equal(exit, qemu.Exit);

        var ours = DiskChecker.Check(path);
        string found = string.Join("\n", ours.Images.SelectMany(i => i.Problems).Select(p => p.ToLine()));
        Assert.True(ours.ExitCode == qemu.Exit, $"ours: exit {ours.ExitCode}\n{found}\nqemu-img:\n{qemu.Output}");
        Assert.True(ours.Corruptions == qemu.Errors, $"ours: {ours.Corruptions} corruptions\n{found}\nqemu-img:\n{qemu.Output}");
        Assert.True(ours.LeakedClusters == qemu.Leaks, $"ours: {ours.LeakedClusters} leaks\n{found}\nqemu-img:\n{qemu.Output}");

        // An entry past the end is beyond repair for QEMU too: its COPIED flag is fixed, the entry stays an error.
        int afterExit = how == "l2-past-end" ? 2 : 0;
        var repaired = DiskChecker.Check(path, repair: true);
        Assert.True(repaired.ExitCode == afterExit, string.Join("\n", repaired.After!.SelectMany(i => i.Problems).Select(p => p.ToLine())));
        Assert.True(repaired.RepairedCount > 0);
        var after = QemuCheck(temp.Path, "a.qcow2");
        Assert.True(after.Exit == afterExit && after.Errors == repaired.Corruptions, after.Output);
    }

    [Fact]
    public void CleanImagesWithSnapshotsBitmapsAndTwoBitRefcountsCheckClean()
    {
        using var temp = new TempFolder();
        Img(temp.Path, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k,refcount_bits=2", "a.qcow2", "8M");
        Io(temp.Path, "qcow2", "a.qcow2", "write -P 1 0 1M", "write -c -P 2 2M 4k");
        Img(temp.Path, "snapshot", "-c", "s1", "a.qcow2");
        Io(temp.Path, "qcow2", "a.qcow2", "write -P 3 100k 50k");
        Img(temp.Path, "bitmap", "--add", "a.qcow2", "b0");
        Assert.Equal(0, QemuCheck(temp.Path, "a.qcow2").Exit);
        var report = DiskChecker.Check(temp.Combine("a.qcow2"));
        Assert.True(report.ExitCode == 0, string.Join("\n", report.Images.SelectMany(i => i.Problems).Select(p => p.ToLine())));
    }

    [Fact]
    public void CorruptBitIsAWarningAndARepairClearsIt()
    {
        using var temp = new TempFolder();
        string path = Image(temp);
        using (var f = new FileStream(path, FileMode.Open, FileAccess.ReadWrite))
        {
            f.Position = 79;
            f.WriteByte(2);
        }

        Assert.Equal(0, QemuCheck(temp.Path, "a.qcow2").Exit);
        var report = DiskChecker.Check(path);
        Assert.Equal(0, report.ExitCode);
        Assert.Contains(report.Images[0].Problems, p => p.What.Contains("corrupt bit", StringComparison.Ordinal));
        Assert.Equal(0, DiskChecker.Check(path, repair: true).ExitCode);
        Assert.Equal(0, File.ReadAllBytes(path)[79]);
    }

    [Theory]
    [InlineData("leak")]
    [InlineData("overlap")]
    [Trait("Needs", "Installed")]
    public void TheInstalledCommandExitsAsQemuImgCheck(string how)
    {
        using var temp = new TempFolder();
        string path = Image(temp);
        Damage(path, how);
        var qemu = QemuCheck(temp.Path, "a.qcow2");
        var ours = PrlFuseCli.Run("check", path);
        Assert.True(ours.ExitCode == qemu.Exit, ours.Stdout + ours.Stderr);
        var repair = PrlFuseCli.Run("check", "--repair", path);
        Assert.True(repair.ExitCode == 0, repair.Stdout + repair.Stderr);
        Assert.Equal(0, QemuCheck(temp.Path, "a.qcow2").Exit);
    }
}
