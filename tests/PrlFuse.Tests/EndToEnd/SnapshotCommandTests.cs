using System.Diagnostics;
using System.Security.Cryptography;
using PrlFuse.Core.Descriptor;
using PrlFuse.Tests.Core.Management;
using PrlFuse.Tests.Support;
using static PrlFuse.Tests.Core.Management.SnapshotTreeBundle;

namespace PrlFuse.Tests.EndToEnd;

/// <summary>
/// 'prlfuse snapshot delete', 'snapshot switch' and 'merge' through the installed binary: the views against QEMU's,
/// the refusals with their one-line messages, and kill -9 of the command at random moments on a real bundle, finished
/// by the next command or 'check --repair'.
/// </summary>
[Trait("Needs", "Qemu")]
[Trait("Needs", "Installed")]
public sealed class SnapshotCommandTests
{
    [Fact]
    public void DeleteSwitchAndMergeKeepWhatEachViewReads()
    {
        using var temp = new TempFolder();
        var t = SnapshotOperationTests.Tree(temp.Path, 201);
        var before = OracleViews(t.Bundle, temp.Path);

        var r = PrlFuseCli.Run("snapshot", "delete", t.Bundle, t["A"].ToString("D"));
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains($"deleted snapshot {t["A"]:B}", r.Stdout, StringComparison.Ordinal);
        var after = OracleViews(t.Bundle, temp.Path);
        Assert.Equal(4, after.Count);
        AssertViewsEqual(before, after, "after delete");
        AssertQemuClean(t.Bundle);

        r = PrlFuseCli.Run("snapshot", "switch", "--keep-current", t.Bundle, t["C"].ToString("B"));
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("kept as snapshot", r.Stdout, StringComparison.Ordinal);
        after = OracleViews(t.Bundle, temp.Path);
        AssertSame(before[t["C"]], after[t["T"]], "after switch, the current state");
        AssertQemuClean(t.Bundle);

        r = PrlFuseCli.Run("merge", t.Bundle);
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("merged 4 snapshots", r.Stdout, StringComparison.Ordinal);
        after = OracleViews(t.Bundle, temp.Path);
        AssertSame(before[t["C"]], Assert.Single(after).Value, "after merge");
        AssertQemuClean(t.Bundle);
        Assert.Single(Directory.GetFiles(t.Bundle, "*.hds"));
    }

    [Fact]
    public void RefusalsAreOneLineAndChangeNothing()
    {
        using var temp = new TempFolder();
        var t = SnapshotOperationTests.Tree(temp.Path, 202);
        string xml = File.ReadAllText(t.Descriptor);

        AssertRefused(PrlFuseCli.Run("snapshot", "delete", t.Bundle, t["T"].ToString("B")), "is the current state, which cannot be deleted");
        AssertRefused(PrlFuseCli.Run("snapshot", "delete", t.Bundle, "not-a-guid"), "is not a snapshot GUID");
        AssertRefused(PrlFuseCli.Run("snapshot", "switch", t.Bundle, t["T"].ToString("B")), "is already the current state");
        string bare = Path.Combine(t.Bundle, SnapshotOperationTests.FileOf(t, "R"));
        AssertRefused(PrlFuseCli.Run("merge", bare), "is a bare image");

        // Another program writing an image: QEMU's own lock, taken by qemu-io waiting on its input.
        using (QemuHolder.Start(Path.Combine(t.Bundle, SnapshotOperationTests.FileOf(t, "B"))))
        {
            AssertRefused(PrlFuseCli.Run("snapshot", "delete", t.Bundle, t["A"].ToString("B")), "in use");
            AssertRefused(PrlFuseCli.Run("merge", t.Bundle), "in use");
        }

        Assert.Equal(xml, File.ReadAllText(t.Descriptor));
        Assert.Equal(5, Directory.GetFiles(t.Bundle, "*.hds").Length);

        // An intent mark left by a crash: a plain check says so, a repair finishes the deletion.
        PrlFuse.Core.Management.DescriptorStore.Write(t.Descriptor, PrlFuse.Core.Management.IntentMark.Mark(DescriptorParser.ParseFile(t.Descriptor), [t["A"]]));
        var check = PrlFuseCli.Run("check", t.Bundle);
        Assert.Contains("an interrupted operation is deleting snapshot", check.Stdout, StringComparison.Ordinal);
        var repair = PrlFuseCli.Run("check", "--repair", t.Bundle);
        Assert.True(repair.ExitCode == 0, repair.Stdout + repair.Stderr);
        Assert.Contains("finished the interrupted deletion", repair.Stdout, StringComparison.Ordinal);
        Assert.Equal(4, Directory.GetFiles(t.Bundle, "*.hds").Length);
        AssertQemuClean(t.Bundle);
    }

    [Theory]
    [InlineData(false, 211)]
    [InlineData(true, 212)]
    public void KillNineAtRandomMomentsIsFinishedByTheNextCommand(bool merge, int seed)
    {
        using var temp = new TempFolder();
        string original = Path.Combine(temp.Path, "original");
        var (bundle, guids) = LargeChain(original);
        var expected = Hashes(bundle, temp.Path);
        var random = new Random(seed);

        // How long an uninterrupted run takes, to kill within it.
        string timing = Path.Combine(temp.Path, "timing");
        CopyFolder(bundle, timing);
        var clock = Stopwatch.StartNew();
        Assert.Equal(0, PrlFuseCli.Run(Command(merge, timing, guids)).ExitCode);
        long runMs = Math.Max(50, clock.ElapsedMilliseconds);

        for (int round = 0; round < 4; round++)
        {
            string work = Path.Combine(temp.Path, $"round{round}");
            CopyFolder(bundle, work);
            using (var process = Process.Start(new ProcessStartInfo(PrlFuseCli.Binary, Command(merge, work, guids)) { RedirectStandardOutput = true, RedirectStandardError = true })!)
            {
                Thread.Sleep(random.Next(20, (int)runMs));
                process.Kill();
                process.WaitForExit();
            }

            // The next command: the same one for a merge, 'check --repair' for a delete (then the delete again, which
            // finds nothing left to finish when the repair did it, or the snapshot gone).
            var next = PrlFuseCli.Run(merge ? Command(true, work, guids) : ["check", "--repair", work]);
            Assert.True(next.ExitCode == 0, $"round {round}: {next.Stdout}{next.Stderr}");
            var tree = SnapshotTree.Build(DescriptorParser.ParseFile(Path.Combine(work, "DiskDescriptor.xml")), work);
            if (!merge && tree.Contains(guids[1]))
            {
                Assert.Equal(0, PrlFuseCli.Run(Command(false, work, guids)).ExitCode);
            }

            var after = Hashes(work, temp.Path);
            Assert.Equal(merge ? 1 : 2, after.Count);
            foreach (var (guid, hash) in after)
            {
                Assert.True(hash == expected[guid], $"round {round}: snapshot {guid:B} reads differently");
            }

            AssertQemuClean(work);
            Directory.Delete(work, recursive: true);
        }
    }

    private static string[] Command(bool merge, string bundle, Guid[] guids) =>
        merge ? ["merge", bundle] : ["snapshot", "delete", bundle, guids[1].ToString("B")];

    /// <summary>A 256 MiB chain of three images with 1 MiB clusters and some hundred MiB of data to merge.</summary>
    private static (string Bundle, Guid[] Guids) LargeChain(string folder)
    {
        string bundle = Path.Combine(folder, "big.hdd");
        Directory.CreateDirectory(bundle);
        Guid[] guids = [Guid.NewGuid(), Guid.NewGuid(), DescriptorBuilder.PredefinedTop];
        string[][] writes =
        [
            ["write -P 1 0 160M"],
            [.. Enumerable.Range(0, 24).Select(i => $"write -P {10 + i} {(i * 9) + 3}M 2M")],
            ["write -P 3 40M 60M", "write -P 4 200M 5M"],
        ];
        long sectors = 256L * 2048;
        var d = new DescriptorBuilder(sectors) { Cylinders = sectors / 32, Heads = 1, SectorsPerTrack = 32 };
        var storage = d.Storage(0, sectors);
        for (int i = 0; i < guids.Length; i++)
        {
            string file = $"big.hdd.0.{guids[i]:B}.hds";
            Qemu.Create(Path.Combine(bundle, file), "256M");
            Qemu.Write(Path.Combine(bundle, file), writes[i]);
            storage.Image(guids[i], "Compressed", file);
        }

        d.Chain(guids).WriteTo(bundle);
        return (bundle, guids);
    }

    /// <summary>The SHA-256 of QEMU's view of every snapshot.</summary>
    private static Dictionary<Guid, string> Hashes(string bundle, string scratch)
    {
        string xml = Path.Combine(bundle, "DiskDescriptor.xml");
        var d = DescriptorParser.ParseFile(xml);
        var tree = SnapshotTree.Build(d, xml);
        var hashes = new Dictionary<Guid, string>();
        foreach (var guid in tree.Snapshots)
        {
            string raw = Path.Combine(scratch, "view.raw");
            Qemu.ConvertChain([.. tree.ChainOf(guid).Select(g => Path.Combine(bundle, d.Storages[0].FindImage(g)!.File))], raw);
            using (var stream = File.OpenRead(raw))
            {
                hashes[guid] = Convert.ToHexString(SHA256.HashData(stream));
            }

            File.Delete(raw);
        }

        return hashes;
    }

    private static void AssertRefused(ProcessRunner.Result r, string message)
    {
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains(message, r.Stderr, StringComparison.Ordinal);
        Assert.Single(r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.DoesNotContain("   at ", r.Stderr, StringComparison.Ordinal);
    }

    private static void CopyFolder(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (string file in Directory.GetFiles(from))
        {
            File.Copy(file, Path.Combine(to, Path.GetFileName(file)), overwrite: true);
        }
    }
}

/// <summary>A mounted disk is refused with its mountpoint named, read-write or read-only.</summary>
[Collection(FuseKernelCollection.Name)]
[Trait("Needs", "Kernel")]
[Trait("Needs", "Qemu")]
[Trait("Needs", "Installed")]
public sealed class SnapshotCommandMountedTests
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void AMountedDiskIsRefusedWithItsMountpoint(bool readOnly)
    {
        using var temp = new TempFolder();
        var t = SnapshotOperationTests.Tree(temp.Path, 221);
        string xml = File.ReadAllText(t.Descriptor);
        string mountpoint = Path.Combine(temp.Path, "mnt");
        using (var mount = readOnly ? new PrlFuseMount(t.Bundle, mountpoint, "--read-only") : new PrlFuseMount(t.Bundle, mountpoint))
        {
            foreach (var args in new[] { new[] { "snapshot", "delete", t.Bundle, t["A"].ToString("B") }, ["merge", t.Bundle], ["snapshot", "switch", t.Bundle, t["C"].ToString("B")] })
            {
                var r = PrlFuseCli.Run(args);
                Assert.NotEqual(0, r.ExitCode);
                Assert.Contains($"at {mountpoint} by prlfuse", r.Stderr, StringComparison.Ordinal);
                Assert.Contains("unmount it first", r.Stderr, StringComparison.Ordinal);
            }
        }

        Assert.Equal(xml, File.ReadAllText(t.Descriptor));
        Assert.Equal(5, Directory.GetFiles(t.Bundle, "*.hds").Length);
    }
}
