using System.Text.Json;
using PrlFuse.Core.Descriptor;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.EndToEnd;

/// <summary>
/// 'prlfuse convert --keep-snapshots' through the installed binary, QEMU the oracle: every snapshot of the result reads,
/// through QEMU, as the same snapshot of the source; every file written passes qemu-img check.
/// </summary>
[Trait("Needs", "Qemu")]
[Trait("Needs", "Installed")]
public sealed class ConvertKeepSnapshotsTests
{
    [Fact]
    public void ABundleWithThreeSnapshotsGoesToAQcow2ChainAndBackEveryViewEqual()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, depth: 4, storageSectors: [65536], seed: 31);
        var oracles = new string[chain.Levels.Count];
        for (int level = 0; level < oracles.Length; level++)
        {
            oracles[level] = temp.Combine($"oracle-{level}.raw");
            File.WriteAllBytes(oracles[level], chain.OracleView(level, temp.Path));
        }

        string top = temp.Combine("out.qcow2");
        var r = PrlFuseCli.Run("convert", chain.Bundle, top, "--keep-snapshots");
        Assert.True(r.ExitCode == 0, r.Stderr);

        // Root first: out.1.qcow2 .. out.3.qcow2, then the current state in DST, each over the one before.
        string[] files = [temp.Combine("out.1.qcow2"), temp.Combine("out.2.qcow2"), temp.Combine("out.3.qcow2"), top];
        for (int level = 0; level < files.Length; level++)
        {
            var compare = Qemu.Img("compare", "-f", "raw", "-F", "qcow2", oracles[level], files[level]);
            Assert.True(compare.ExitCode == 0, $"level {level}: {compare.Stdout}{compare.Stderr}");
            var check = Qemu.Img("check", "-f", "qcow2", files[level]);
            Assert.True(check.ExitCode == 0, $"level {level}: {check.Stdout}{check.Stderr}");
            using var info = JsonDocument.Parse(Qemu.Img("info", "--output=json", "-f", "qcow2", files[level]).Stdout);
            if (level == 0)
            {
                Assert.False(info.RootElement.TryGetProperty("backing-filename", out _));
            }
            else
            {
                Assert.Equal(Path.GetFileName(files[level - 1]), info.RootElement.GetProperty("backing-filename").GetString());
                Assert.Equal("qcow2", info.RootElement.GetProperty("backing-filename-format").GetString());
            }

            // Each file holds data only where its own source image does.
            var own = QemuMap.DataRanges(QemuMap.Of([Path.Combine(chain.Bundle, chain.Levels[level].Files[0])]));
            foreach (var (start, end) in ConvertCommandTests.MapData(files[level], "qcow2", ownOnly: true))
            {
                Assert.True(own.Any(s => s.Start <= start && end <= s.End), $"level {level}: data at {start}-{end} outside its source image's data");
            }
        }

        string back = temp.Combine("back.hdd");
        var again = PrlFuseCli.Run("convert", top, back, "--keep-snapshots");
        Assert.True(again.ExitCode == 0, again.Stderr);
        AssertBundleLevels(back, oracles, temp.Path);
        Assert.Empty(Directory.GetFileSystemEntries(temp.Path, ".*"));
    }

    [Fact]
    public void AQcow2WithTwoInternalSnapshotsBecomesABundleWithThem()
    {
        using var temp = new TempFolder();
        string source = temp.Combine("vm.qcow2");
        Assert.Equal(0, Qemu.Img("create", "-q", "-f", "qcow2", source, "16M").ExitCode);
        Assert.Equal(0, Qemu.Io("-f", "qcow2", "-c", "write -P 0x41 1M 2M", "-c", "write -P 0x42 9M 100k", source).ExitCode);
        Assert.Equal(0, Qemu.Img("snapshot", "-c", "installed", source).ExitCode);
        Assert.Equal(0, Qemu.Io("-f", "qcow2", "-c", "write -P 0x43 1M 1M", "-c", "write -P 0x44 12M 1M", source).ExitCode);
        Assert.Equal(0, Qemu.Img("snapshot", "-c", "upgraded", source).ExitCode);

        // Zeros over data the snapshots hold, and new data.
        Assert.Equal(0, Qemu.Io("-f", "qcow2", "-c", "write -z 1M 1M", "-c", "write -P 0x45 5M 3k", source).ExitCode);
        string[] oracles = [temp.Combine("installed.raw"), temp.Combine("upgraded.raw"), temp.Combine("current.raw")];
        Assert.Equal(0, Qemu.Img("convert", "-O", "raw", "-l", "snapshot.name=installed", source, oracles[0]).ExitCode);
        Assert.Equal(0, Qemu.Img("convert", "-O", "raw", "-l", "snapshot.name=upgraded", source, oracles[1]).ExitCode);
        Assert.Equal(0, Qemu.Img("convert", "-O", "raw", source, oracles[2]).ExitCode);

        string bundle = temp.Combine("vm.hdd");
        var r = PrlFuseCli.Run("convert", source, bundle, "--keep-snapshots");
        Assert.True(r.ExitCode == 0, r.Stderr);
        AssertBundleLevels(bundle, oracles, temp.Path);
        string descriptor = File.ReadAllText(Path.Combine(bundle, "DiskDescriptor.xml"));
        Assert.Contains("<Name>installed</Name>", descriptor, StringComparison.Ordinal);
        Assert.Contains("<Name>upgraded</Name>", descriptor, StringComparison.Ordinal);
    }

    [Fact]
    public void KeepSnapshotsIsRefusedWithOneViewOptions()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, depth: 2, storageSectors: [8192], seed: 5);
        Assert.Equal(2, PrlFuseCli.Run("convert", chain.Bundle, temp.Combine("o.raw"), "--keep-snapshots").ExitCode);
        Assert.Equal(2, PrlFuseCli.Run("convert", chain.Bundle, temp.Combine("o.qcow2"), "--keep-snapshots", "--snapshot", chain.Levels[0].Guid.ToString()).ExitCode);

        // A snapshot file's name in use refuses the whole conversion: nothing is written.
        File.WriteAllText(temp.Combine("o.1.qcow2"), "keep me");
        var taken = PrlFuseCli.Run("convert", chain.Bundle, temp.Combine("o.qcow2"), "--keep-snapshots");
        Assert.Equal(1, taken.ExitCode);
        Assert.Contains("o.1.qcow2", taken.Stderr, StringComparison.Ordinal);
        Assert.Equal("keep me", File.ReadAllText(temp.Combine("o.1.qcow2")));
        Assert.Equal(["disk.hdd", "o.1.qcow2"], Directory.GetFileSystemEntries(temp.Path).Select(Path.GetFileName).Order(StringComparer.Ordinal));
    }

    /// <summary>
    /// Asserts the bundle is a line of snapshots, root first, each level read by QEMU (its chain of Parallels images)
    /// equal to its oracle, and every image clean by qemu-img check.
    /// </summary>
    private static void AssertBundleLevels(string bundle, string[] oracles, string scratch)
    {
        var descriptor = DescriptorParser.ParseFile(Path.Combine(bundle, "DiskDescriptor.xml"));
        var tree = SnapshotTree.Build(descriptor, bundle);
        var line = tree.ChainOf(tree.Top).Reverse().ToList();
        Assert.Equal(oracles.Length, line.Count);
        Assert.Equal(oracles.Length, tree.Snapshots.Count());
        var storage = Assert.Single(descriptor.Storages);
        for (int level = 0; level < line.Count; level++)
        {
            var topFirst = line.Take(level + 1).Reverse().Select(g => Path.Combine(bundle, storage.FindImage(g)!.File)).ToList();
            string view = Path.Combine(scratch, $"view-{level}.raw");
            Qemu.ConvertChain(topFirst, view);
            var compare = Qemu.Img("compare", "-f", "raw", "-F", "raw", oracles[level], view);
            Assert.True(compare.ExitCode == 0, $"level {level}: {compare.Stdout}{compare.Stderr}");
            File.Delete(view);
            Qemu.AssertClean(topFirst[0]);
        }
    }
}
