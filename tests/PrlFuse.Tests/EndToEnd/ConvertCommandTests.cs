using System.Text.Json;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.EndToEnd;

/// <summary>'prlfuse convert' through the installed binary, QEMU the oracle: every output reads as QEMU's view of the source.</summary>
[Trait("Needs", "Qemu")]
[Trait("Needs", "Installed")]
public sealed class ConvertCommandTests
{
    [Fact]
    public void EveryFormatHoldsTheViewQemuSeesSparseAndClean()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, depth: 3, storageSectors: [65536], seed: 12);
        for (int level = 1; level <= 2; level++)
        {
            string oracle = temp.Combine($"oracle-{level}.raw");
            File.WriteAllBytes(oracle, chain.OracleView(level, temp.Path));
            var sourceData = chain.DataRanges(level);
            string[] snapshot = level == 2 ? [] : ["--snapshot", chain.Levels[level].Guid.ToString()];
            foreach (var (name, extra, format) in new (string, string[], string)[]
            {
                ($"l{level}.qcow2", [], "qcow2"),
                ($"l{level}-4k.qcow2", ["--cluster", "4K"], "qcow2"),
                ($"l{level}.raw", [], "raw"),
                ($"l{level}.hdd", ["--cluster", "64K"], "parallels"),
                ($"l{level}-plain.hdd", ["--plain"], "raw"),
                ($"l{level}.out", ["--format", "qcow2"], "qcow2"),
                ($"l{level}.qed", [], "qed"),
                ($"l{level}-4k.img", ["--format", "qed", "--cluster", "4K"], "qed"),
            })
            {
                string dst = temp.Combine(name);
                var r = PrlFuseCli.Run(["convert", chain.Bundle, dst, .. snapshot, .. extra]);
                Assert.True(r.ExitCode == 0, r.Stderr);
                string image = name.EndsWith(".hdd", StringComparison.Ordinal) ? Directory.GetFiles(dst, "*.hds").Single() : dst;
                var compare = Qemu.Img("compare", "-f", "raw", "-F", format, oracle, image);
                Assert.True(compare.ExitCode == 0, $"{name}: {compare.Stdout}{compare.Stderr}");
                if (format != "raw")
                {
                    var check = Qemu.Img("check", "-f", format, image);
                    Assert.True(check.ExitCode == 0, $"{name}: {check.Stdout}{check.Stderr}");
                }

                if (!extra.Contains("--plain"))
                {
                    // Nothing is allocated where the source holds nothing.
                    foreach (var (start, end) in MapData(image, format))
                    {
                        Assert.True(sourceData.Any(s => s.Start <= start && end <= s.End), $"{name}: data at {start}-{end} outside the source's data");
                    }
                }
            }
        }

        Assert.Empty(Directory.GetFileSystemEntries(temp.Path, ".*"));
    }

    [Fact]
    public void AQcow2InternalSnapshotIsConvertedByName()
    {
        using var temp = new TempFolder();
        string source = temp.Combine("vm.qcow2");
        Assert.Equal(0, Qemu.Img("create", "-q", "-f", "qcow2", source, "16M").ExitCode);
        Assert.Equal(0, Qemu.Io("-f", "qcow2", "-c", "write -P 0x41 1M 2M", "-c", "write -P 0x42 9M 100k", source).ExitCode);
        Assert.Equal(0, Qemu.Img("snapshot", "-c", "before-upgrade", source).ExitCode);
        Assert.Equal(0, Qemu.Io("-f", "qcow2", "-c", "write -P 0x43 1M 1M", "-c", "write -P 0x44 12M 1M", source).ExitCode);
        string oracle = temp.Combine("oracle.raw");
        Assert.Equal(0, Qemu.Img("convert", "-O", "raw", "-l", "snapshot.name=before-upgrade", source, oracle).ExitCode);

        var r = PrlFuseCli.Run("convert", source, temp.Combine("before.hdd"), "--snapshot", "before-upgrade");
        Assert.True(r.ExitCode == 0, r.Stderr);
        string image = Directory.GetFiles(temp.Combine("before.hdd"), "*.hds").Single();
        var compare = Qemu.Img("compare", "-f", "raw", "-F", "parallels", oracle, image);
        Assert.True(compare.ExitCode == 0, compare.Stdout + compare.Stderr);
        Qemu.AssertClean(image);
    }

    [Fact]
    public void AnExistingDestinationOrAnUnknownFormatIsRefused()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, depth: 1, storageSectors: [8192], seed: 3);
        string dst = temp.Combine("out.qcow2");
        File.WriteAllText(dst, "keep me");
        var r = PrlFuseCli.Run("convert", chain.Bundle, dst);
        Assert.Equal(1, r.ExitCode);
        Assert.Equal($"prlfuse: {dst}: already exists; convert never overwrites: give a new name or remove it first", r.Stderr.TrimEnd());
        Assert.Equal("keep me", File.ReadAllText(dst));

        var unknown = PrlFuseCli.Run("convert", chain.Bundle, temp.Combine("out.vmdk"));
        Assert.Equal(2, unknown.ExitCode);
        Assert.Contains("--format", unknown.Stderr, StringComparison.Ordinal);
        Assert.Equal(2, PrlFuseCli.Run("convert", chain.Bundle, temp.Combine("o.qcow2"), "--plain").ExitCode);
        Assert.Equal(2, PrlFuseCli.Run("convert", chain.Bundle, temp.Combine("o.qed"), "--cluster", "2K").ExitCode);
        Assert.Equal(["disk.hdd", "out.qcow2"], Directory.GetFileSystemEntries(temp.Path).Select(Path.GetFileName).Order(StringComparer.Ordinal));
    }

    /// <summary>The ranges QEMU maps as data in <paramref name="image"/>; with <paramref name="ownOnly"/>, only those the image holds itself (not its backing files).</summary>
    internal static List<(long Start, long End)> MapData(string image, string format, bool ownOnly = false)
    {
        var map = Qemu.Img("map", "--output=json", "-f", format, image);
        Assert.True(map.ExitCode == 0, map.Stderr);
        using var json = JsonDocument.Parse(map.Stdout);
        return json.RootElement.EnumerateArray()
            .Where(e => e.GetProperty("data").GetBoolean() && (!ownOnly || e.GetProperty("depth").GetInt32() == 0))
            .Select(e => (e.GetProperty("start").GetInt64(), e.GetProperty("start").GetInt64() + e.GetProperty("length").GetInt64()))
            .ToList();
    }
}
