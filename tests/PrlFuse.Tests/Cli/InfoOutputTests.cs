using System.Text.Json;
using System.Text.RegularExpressions;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Cli;

/// <summary>
/// `prlfuse info` of a 60-snapshot chain through the real command: the whole tree with every GUID whole, the top
/// marked, depths past the indentation cap as numbers; `--json` with one key set for every image, coded warnings, and
/// errors as JSON.
/// </summary>
[Trait("Needs", "Installed")]
public sealed partial class InfoOutputTests : IClassFixture<InfoOutputTests.DeepBundle>
{
    private readonly DeepBundle _bundle;

    public InfoOutputTests(DeepBundle bundle)
    {
        _bundle = bundle;
    }

    [Fact]
    public void TreeShowsEveryGuidWholeOnceTheTopMarkedAndDeepLevelsNumbered()
    {
        var r = PrlFuseCli.Run("info", _bundle.Path);
        Assert.True(r.ExitCode == 0, r.Stderr);
        string[] lines = r.Stdout.Split('\n');
        int start = Array.FindIndex(lines, l => l.StartsWith("Snapshots", StringComparison.Ordinal));
        int end = Array.FindIndex(lines, start + 1, l => l.StartsWith("Allocated", StringComparison.Ordinal));
        Assert.True(start >= 0 && end > start, r.Stdout);
        var tree = lines[(start + 1)..end];

        Assert.Equal(DeepBundle.Depth, tree.Length);
        for (int i = 0; i < DeepBundle.Depth; i++)
        {
            string guid = _bundle.Guids[i].ToString("B");
            var holding = tree.Where(l => l.Contains(guid, StringComparison.Ordinal)).ToList();
            var line = Assert.Single(holding);
            Assert.Equal(i == DeepBundle.Depth - 1, line.EndsWith(" *", StringComparison.Ordinal));
            Assert.Equal(i > 16, line.Contains($"[depth {i}]", StringComparison.Ordinal));
        }

        // Indentation stops growing at the cap: a line at depth 58 is as long as one at depth 17.
        Assert.Equal(tree[17].Length, tree[^2].Length);

        // Then every snapshot's allocated bytes, root first, the top marked: the Plain root holds the whole disk.
        int warnings = Array.FindIndex(lines, end + 1, l => l.StartsWith("Warnings", StringComparison.Ordinal));
        var allocated = lines[(end + 1)..warnings];
        Assert.Equal(DeepBundle.Depth, allocated.Length);
        for (int i = 0; i < DeepBundle.Depth; i++)
        {
            string mark = i == DeepBundle.Depth - 1 ? " *" : "  ";
            Assert.Equal($"  {_bundle.Guids[i]:B}{mark}  {DeepBundle.Bytes} bytes (1 MiB)", allocated[i]);
        }
    }

    [Fact]
    public void JsonImagesShareOneKeySetAndWarningsCarryCodes()
    {
        var r = PrlFuseCli.Run("info", _bundle.Path, "--json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        using var doc = JsonDocument.Parse(r.Stdout);
        var images = doc.RootElement.GetProperty("storages").EnumerateArray().SelectMany(s => s.GetProperty("images").EnumerateArray()).ToList();
        Assert.Equal(DeepBundle.Depth, images.Count);
        Assert.Contains(images, i => i.GetProperty("kind").GetString() == "plain");
        Assert.Contains(images, i => i.GetProperty("kind").GetString() == "expandable");
        string Keys(JsonElement e) => string.Join(",", e.EnumerateObject().Select(p => p.Name).Order(StringComparer.Ordinal));
        Assert.All(images, i => Assert.Equal(Keys(images[0]), Keys(i)));
        Assert.DoesNotContain("\"-\"", r.Stdout, StringComparison.Ordinal);

        var warnings = doc.RootElement.GetProperty("warnings").EnumerateArray().ToList();
        Assert.All(warnings, w =>
        {
            Assert.Equal("code,message", Keys(w));
            Assert.Matches("^[a-z]+(-[a-z]+)*$", w.GetProperty("code").GetString());
            Assert.False(string.IsNullOrEmpty(w.GetProperty("message").GetString()));
        });
        var codes = warnings.Select(w => w.GetProperty("code").GetString()).ToHashSet();
        Assert.Superset(new HashSet<string?> { "stale-absolute-path", "geometry-mismatch", "cluster-size-mismatch" }, codes);
        var snapshots = doc.RootElement.GetProperty("snapshots").EnumerateArray().ToList();
        Assert.Equal(DeepBundle.Depth, snapshots.Count);
        Assert.All(snapshots, s => Assert.Equal(DeepBundle.Bytes, s.GetProperty("allocatedBytes").GetInt64()));
    }

    [Fact]
    public void JsonErrorIsJsonOnStdoutWithNonZeroExit()
    {
        using var temp = new TempFolder();
        string missing = temp.Combine("missing.hdd");
        var r = PrlFuseCli.Run("info", missing, "--json");

        Assert.NotEqual(0, r.ExitCode);
        using var doc = JsonDocument.Parse(r.Stdout);
        var error = doc.RootElement.GetProperty("error");
        Assert.Equal(missing, error.GetProperty("path").GetString());
        Assert.Contains("no such file", error.GetProperty("message").GetString(), StringComparison.Ordinal);
    }

    /// <summary>A Plain root and 59 expandable overlays in one chain, with three kinds of warning.</summary>
    public sealed class DeepBundle : IDisposable
    {
        public const int Depth = 60;
        public const long Bytes = Sectors * 512;
        private const long Sectors = 2048;
        private readonly TempFolder _temp = new("prlfuse-info");

        public DeepBundle()
        {
            Path = Directory.CreateDirectory(_temp.Combine("deep.hdd")).FullName;
            Guids = Enumerable.Range(0, Depth).Select(_ => Guid.NewGuid()).ToArray();
            var d = new DescriptorBuilder(Sectors) { Cylinders = 3, Heads = 1, SectorsPerTrack = 1, TopGuid = Guids[^1] };
            var storage = d.Storage(0, Sectors, 2048);
            File.WriteAllBytes(System.IO.Path.Combine(Path, "root.raw"), new byte[Sectors * 512]);
            storage.Image(Guids[0], "Plain", "root.raw");
            for (int i = 1; i < Depth; i++)
            {
                // Level 5 has its own cluster size (a warning); level 7 is named by a stale absolute path (a warning).
                var b = new ParallelsImageBuilder(Sectors, i == 5 ? 1024u : 2048u) { Content = ParallelsImageBuilder.Pattern(i) };
                b.Allocate(0);
                string name = $"level{i}.hds";
                b.Build(System.IO.Path.Combine(Path, name));
                storage.Image(Guids[i], "Compressed", i == 7 ? "/gone/elsewhere/" + name : name);
            }

            d.Chain(Guids);
            d.WriteTo(Path);
        }

        public string Path { get; }

        public Guid[] Guids { get; }

        public void Dispose() => _temp.Dispose();
    }
}
