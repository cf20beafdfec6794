using System.Globalization;
using System.Text.Json;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Cli;

/// <summary>
/// `prlfuse map` through the installed binary against `qemu-img map` of the same chain: the JSON of every snapshot
/// equals qemu's field for field (each storage of a split disk against its own chain), our "filename" names the image
/// at the entry's depth, the human format is qemu's line for line; `--snapshot` takes a GUID in any form and refuses
/// an unknown one; `info` reports for each snapshot the bytes the map says it holds.
/// </summary>
[Trait("Needs", "Qemu")]
public sealed class MapCommandTests
{
    /// <summary>Our fields that qemu-img's map does not have.</summary>
    private static readonly HashSet<string> OurOwnFields = ["filename", "damaged"];

    [Theory]
    [InlineData(1, 61)]
    [InlineData(1, 62)]
    [InlineData(3, 63)]
    [InlineData(3, 64)]
    [InlineData(3, 65)]
    public void JsonOfEveryLevelEqualsQemuImgMap(int depth, int seed)
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, depth, [24 * 2048], seed);
        int deepHoles = 0;
        for (int level = 0; level < depth; level++)
        {
            deepHoles += AssertLevelMatchesQemu(chain, level);
        }

        Assert.True(depth == 1 || deepHoles > 0, "the test needs ranges no layer of an overlay's chain holds");
    }

    [Fact]
    public void SplitDiskMapsEachStorageAsQemuMapsItsOwnChain()
    {
        using var temp = new TempFolder();

        // Storages of odd sizes, so their boundaries fall inside clusters of the guest address space; large enough that
        // the overlays leave ranges no layer holds.
        var chain = QemuChain.Build(temp.Path, 3, [13 * 2048 + 128, 11 * 2048 + 8, 17 * 2048], 66);
        int deepHoles = 0;
        for (int level = 0; level < chain.Levels.Count; level++)
        {
            deepHoles += AssertLevelMatchesQemu(chain, level);
        }

        Assert.True(deepHoles > 0, "the test needs ranges no layer of an overlay's chain holds");
    }

    [Fact]
    public void HumanOutputIsQemuImgMapsLineForLineThenTheAllocatedBytes()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 3, [24 * 2048], 67);
        var r = PrlFuseCli.Run("map", chain.Bundle);
        Assert.True(r.ExitCode == 0, r.Stderr);
        string[] ours = r.Stdout.Split('\n');
        Assert.Equal("", ours[^1]);

        var qemu = Qemu.Img("map", "--image-opts", Qemu.ChainOptions(TopFirst(chain, 2, 0)));
        Assert.True(qemu.ExitCode == 0, qemu.Stderr);
        string[] expected = qemu.Stdout.Split('\n');
        Assert.True(expected.Length > 3, "the test needs a chain with several data ranges:\n" + qemu.Stdout);
        Assert.Equal(expected[..^1], ours[..^2]);

        long allocated = expected[1..^1].Sum(line => Convert.ToInt64(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], 16));
        Assert.Equal(string.Create(CultureInfo.InvariantCulture, $"allocated {allocated} of {chain.SizeBytes} bytes"), ours[^2][..ours[^2].IndexOf(" (", StringComparison.Ordinal)]);
    }

    [Fact]
    public void SnapshotIsTakenInAnyFormAndTheDefaultIsTheTop()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 3, [8 * 2048], 68);
        Guid middle = chain.Levels[1].Guid;
        string expected = Run("map", "--json", chain.Bundle, "--snapshot", middle.ToString("B"));
        Assert.Equal(expected, Run("map", "--json", chain.Bundle, "-s", middle.ToString("D").ToUpperInvariant()));
        Assert.Equal(expected, Run("map", chain.Bundle, "--json", "--snapshot", middle.ToString("B").ToUpperInvariant()));
        Assert.NotEqual(expected, Run("map", "--json", chain.Bundle));
        Assert.Equal(Run("map", "--json", chain.Bundle, "-s", chain.Levels[2].Guid.ToString("D")), Run("map", "--json", chain.Bundle));
    }

    [Theory]
    [InlineData("{12345678-9abc-def0-1234-56789abcdef0}", "no snapshot {12345678-9abc-def0-1234-56789abcdef0}")]
    [InlineData("not-a-guid", "is not a snapshot GUID")]
    public void UnknownSnapshotIsOneLineAndNonZeroExit(string snapshot, string message)
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [8 * 2048], 69);
        var r = PrlFuseCli.Run("map", "--json", chain.Bundle, "--snapshot", snapshot);

        Assert.NotEqual(0, r.ExitCode);
        Assert.Equal("", r.Stdout);
        var line = Assert.Single(r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Contains(message, line, StringComparison.Ordinal);
    }

    [Fact]
    public void InfoShowsEachSnapshotsAllocatedBytesAsTheMapSumsThem()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 3, [5 * 2048 + 128, 7 * 2048], 70);
        var json = PrlFuseCli.Run("info", "--json", chain.Bundle);
        Assert.True(json.ExitCode == 0, json.Stderr);
        using var doc = JsonDocument.Parse(json.Stdout);
        var human = PrlFuseCli.Run("info", chain.Bundle);
        Assert.True(human.ExitCode == 0, human.Stderr);
        var snapshots = doc.RootElement.GetProperty("snapshots").EnumerateArray().ToList();
        Assert.Equal(chain.Levels.Count, snapshots.Count);
        var sums = new HashSet<long>();
        foreach (var snapshot in snapshots)
        {
            string guid = snapshot.GetProperty("guid").GetString()!;
            long mapped = Map(chain.Bundle, guid).Where(e => e.GetProperty("data").GetBoolean()).Sum(e => e.GetProperty("length").GetInt64());
            Assert.Equal(mapped, snapshot.GetProperty("allocatedBytes").GetInt64());
            string mark = snapshot.GetProperty("top").GetBoolean() ? " *" : "  ";
            Assert.Contains(string.Create(CultureInfo.InvariantCulture, $"\n  {guid}{mark}  {mapped} bytes ("), human.Stdout, StringComparison.Ordinal);
            sums.Add(mapped);
        }

        Assert.True(sums.Count > 1, "the test needs snapshots that hold different amounts");
    }

    [Fact]
    public void DamagedMappingIsMarkedWithoutAnOffset()
    {
        using var temp = new TempFolder();
        string image = TestImage.Create(temp.Path);
        TestImage.SetEntry(image, 4, 500);

        var entries = Map(image, null);
        var damaged = Assert.Single(entries, e => e.TryGetProperty("damaged", out _));
        Assert.True(damaged.GetProperty("damaged").GetBoolean());
        Assert.Equal(4L * TestImage.ClusterBytes, damaged.GetProperty("start").GetInt64());
        Assert.Equal(TestImage.ClusterBytes, damaged.GetProperty("length").GetInt64());
        Assert.True(damaged.GetProperty("data").GetBoolean());
        Assert.False(damaged.TryGetProperty("offset", out _));
        Assert.All(entries.Where(e => e.GetProperty("data").GetBoolean() && !e.TryGetProperty("damaged", out _)), e => Assert.True(e.TryGetProperty("offset", out _)));

        var human = PrlFuseCli.Run("map", image);
        Assert.True(human.ExitCode == 0, human.Stderr);
        string line = string.Concat(string.Create(CultureInfo.InvariantCulture, $"0x{4 * TestImage.ClusterBytes:x}").PadRight(16), string.Create(CultureInfo.InvariantCulture, $"0x{TestImage.ClusterBytes:x}").PadRight(16), "damaged".PadRight(16), image);
        Assert.Contains("\n" + line + "\n", human.Stdout, StringComparison.Ordinal);
    }

    /// <summary>
    /// Our map of <paramref name="level"/> equals qemu-img's of each storage's chain, shifted to the storage's start.
    /// Returns how many of qemu's entries no layer holds at a depth below the top (a strong test needs some).
    /// </summary>
    private static int AssertLevelMatchesQemu(QemuChain chain, int level)
    {
        int deepHoles = 0;
        var ours = Map(chain.Bundle, chain.Levels[level].Guid.ToString("B"));
        Assert.Equal(chain.SizeBytes, ours.Sum(e => e.GetProperty("length").GetInt64()));
        for (int s = 0; s < chain.Storages.Count; s++)
        {
            long start = chain.Storages[s].Start * 512;
            long end = chain.Storages[s].End * 512;
            var mine = ours.Where(e => e.GetProperty("start").GetInt64() >= start && e.GetProperty("start").GetInt64() < end).ToList();
            Assert.All(mine, e => Assert.True(e.GetProperty("start").GetInt64() + e.GetProperty("length").GetInt64() <= end, $"an entry crosses the end of storage {s}: {e}"));

            var qemu = Qemu.Img("map", "--output=json", "--image-opts", Qemu.ChainOptions(TopFirst(chain, level, s)));
            Assert.True(qemu.ExitCode == 0, qemu.Stderr);
            using var expected = JsonDocument.Parse(qemu.Stdout);
            Assert.Equal(Fields(expected.RootElement.EnumerateArray(), 0), Fields(mine, start));
            deepHoles += expected.RootElement.EnumerateArray().Count(e => !e.GetProperty("present").GetBoolean() && e.GetProperty("depth").GetInt32() > 0);

            // Our filename: the image at the entry's depth below this level, for data only.
            foreach (var e in mine)
            {
                bool data = e.GetProperty("data").GetBoolean();
                Assert.Equal(data, e.TryGetProperty("filename", out var file));
                if (data)
                {
                    int holder = level - e.GetProperty("depth").GetInt32();
                    Assert.Equal(Path.Combine(chain.Bundle, chain.Levels[holder].Files[s]), file.GetString());
                }
            }
        }

        return deepHoles;
    }

    /// <summary>Each entry as one line of qemu's fields in their order (start made relative to <paramref name="start"/>).</summary>
    private static List<string> Fields(IEnumerable<JsonElement> entries, long start) =>
        [.. entries.Select(e => string.Join(", ", e.EnumerateObject()
            .Where(p => !OurOwnFields.Contains(p.Name))
            .Select(p => p.Name == "start" ? string.Create(CultureInfo.InvariantCulture, $"start: {p.Value.GetInt64() - start}") : $"{p.Name}: {p.Value.GetRawText()}")))];

    /// <summary>The images of storage <paramref name="storage"/> from <paramref name="level"/> down to the root.</summary>
    private static List<string> TopFirst(QemuChain chain, int level, int storage) =>
        [.. Enumerable.Range(0, level + 1).Reverse().Select(l => Path.Combine(chain.Bundle, chain.Levels[l].Files[storage]))];

    private static List<JsonElement> Map(string disk, string? snapshot)
    {
        string json = snapshot is null ? Run("map", "--json", disk) : Run("map", "--json", disk, "--snapshot", snapshot);
        using var doc = JsonDocument.Parse(json);
        return [.. doc.RootElement.EnumerateArray().Select(e => e.Clone())];
    }

    private static string Run(params string[] args)
    {
        var r = PrlFuseCli.Run(args);
        Assert.True(r.ExitCode == 0, $"prlfuse {string.Join(' ', args)}: exit {r.ExitCode}: {r.Stderr}");
        return r.Stdout;
    }
}
