using System.Text.Json;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Cli;

/// <summary>
/// Every command maps a descriptor's &lt;File&gt; to the same file by the same rules, through the installed binary:
/// what 'export' refuses, 'check' and 'check --repair' report as a check error in the same words (never "No errors
/// were found"), and what 'export' takes with a warning, 'check' takes with the same warning.
/// </summary>
[Trait("Needs", "Installed")]
[Trait("Needs", "Qemu")]
public sealed class ImagePathTests
{
    private static readonly Guid Base = Guid.NewGuid();
    private static readonly Guid Top = DescriptorBuilder.PredefinedTop;

    /// <summary>Descriptors whose top image 'export' refuses: the &lt;File&gt; text and what the refusal says.</summary>
    public enum Hostile
    {
        RelativePathOutOfTheBundle,
        SymlinkOutOfTheBundle,
        Fifo,
        DeviceNode,
        Directory,
        MissingRelative,
        MissingStaleAbsolute,
    }

    /// <summary>
    /// A bundle disk.hdd of two expandable images, base.hds and a top whose &lt;File&gt; is <paramref name="topFile"/>;
    /// outside.hds, a clean image beside the bundle, is what an escaping path leads to.
    /// </summary>
    private static string Bundle(TempFolder temp, string topFile)
    {
        string bundle = temp.Combine("disk.hdd");
        Directory.CreateDirectory(bundle);
        ProcessRunner.Run("qemu-img", "create", "-q", "-f", "parallels", Path.Combine(bundle, "base.hds"), "64M");
        ProcessRunner.Run("qemu-img", "create", "-q", "-f", "parallels", temp.Combine("outside.hds"), "64M");
        new DescriptorBuilder(131072)
            .SingleStorage(2048, (Base, "Compressed", "base.hds"), (Top, "Compressed", topFile))
            .Chain(Base, Top)
            .WriteTo(bundle);
        return bundle;
    }

    /// <summary>Builds the hostile bundle; returns it and the file the refusal must name.</summary>
    private static (string Bundle, string Named) Build(TempFolder temp, Hostile hostile)
    {
        switch (hostile)
        {
            case Hostile.RelativePathOutOfTheBundle:
                return (Bundle(temp, "../outside.hds"), "../outside.hds");
            case Hostile.SymlinkOutOfTheBundle:
            {
                string bundle = Bundle(temp, "top.hds");
                File.CreateSymbolicLink(Path.Combine(bundle, "top.hds"), temp.Combine("outside.hds"));
                return (bundle, "top.hds");
            }

            case Hostile.Fifo:
            {
                string bundle = Bundle(temp, "top.hds");
                ProcessRunner.Run("mkfifo", Path.Combine(bundle, "top.hds"));
                return (bundle, "top.hds");
            }

            case Hostile.DeviceNode:
                return (Bundle(temp, "/dev/zero"), "/dev/zero");
            case Hostile.Directory:
            {
                string bundle = Bundle(temp, "sub");
                Directory.CreateDirectory(Path.Combine(bundle, "sub"));
                return (bundle, "sub");
            }

            case Hostile.MissingRelative:
                return (Bundle(temp, "gone.hds"), "gone.hds");
            case Hostile.MissingStaleAbsolute:
                return (Bundle(temp, "/Users/someone/Parallels/old.pvm/disk.hdd/top.hds"), "/Users/someone/Parallels/old.pvm/disk.hdd/top.hds");
            default:
                throw new ArgumentOutOfRangeException(nameof(hostile));
        }
    }

    /// <summary>The installed binary, with a timeout short enough that a check blocked on a FIFO fails the test.</summary>
    private static ProcessRunner.Result Run(params string[] args) =>
        ProcessRunner.Run(PrlFuseCli.Binary, args, TimeSpan.FromSeconds(60), check: false);

    /// <summary>The problem of a one-line error, without "prlfuse: " and the file it names.</summary>
    private static string Problem(string stderr)
    {
        string line = stderr.Trim();
        int file = line.IndexOf(": /", StringComparison.Ordinal);
        int after = line.IndexOf(": ", file + 2, StringComparison.Ordinal);
        Assert.True(file >= 0 && after > file, $"not a one-line error naming a file: {line}");
        return line[(after + 2)..];
    }

    [Theory]
    [InlineData(Hostile.RelativePathOutOfTheBundle)]
    [InlineData(Hostile.SymlinkOutOfTheBundle)]
    [InlineData(Hostile.Fifo)]
    [InlineData(Hostile.DeviceNode)]
    [InlineData(Hostile.Directory)]
    [InlineData(Hostile.MissingRelative)]
    [InlineData(Hostile.MissingStaleAbsolute)]
    public void CheckAndRepairReportWhatExportRefusesInTheSameWords(Hostile hostile)
    {
        using var temp = new TempFolder();
        var (bundle, named) = Build(temp, hostile);
        string outsideHash = TestImage.Hash(temp.Combine("outside.hds"));

        var export = Run("export", bundle, "-o", temp.Combine("x.raw"));
        Assert.Equal(1, export.ExitCode);
        Assert.Single(export.Stderr.Trim().Split('\n'));
        Assert.Contains(named, export.Stderr, StringComparison.Ordinal);
        string problem = Problem(export.Stderr);

        foreach (string[] check in new[] { new[] { "check", bundle }, ["check", "--repair", bundle] })
        {
            var r = Run(check);
            string all = r.Stdout + r.Stderr;
            Assert.True(r.ExitCode == 1, $"{string.Join(' ', check)} exited {r.ExitCode}: {all}");
            Assert.DoesNotContain("No errors were found", all, StringComparison.Ordinal);
            var line = Assert.Single(r.Stdout.Split('\n'), l => l.Contains("CHECK-ERROR", StringComparison.Ordinal));
            Assert.Contains(problem, line, StringComparison.Ordinal);
            Assert.Contains(named, line, StringComparison.Ordinal);
            Assert.Equal("", r.Stderr);
        }

        // Nothing outside the bundle was written.
        Assert.Equal(outsideHash, TestImage.Hash(temp.Combine("outside.hds")));
    }

    [Fact]
    public void RepairNeverWritesAnImageOutsideTheBundleUnlessAllowed()
    {
        using var temp = new TempFolder();
        string bundle = Bundle(temp, "../outside.hds");
        string outside = temp.Combine("outside.hds");
        TestImage.SetInUse(outside, TestImage.Ynot);
        string hash = TestImage.Hash(outside);

        var refused = Run("check", "--repair", bundle);
        Assert.True(refused.ExitCode == 1, refused.Stdout + refused.Stderr);
        Assert.Contains("outside the bundle folder", refused.Stdout, StringComparison.Ordinal);
        Assert.Equal(hash, TestImage.Hash(outside));

        // --allow-outside-images lets check and export follow the path, as it lets mount and info.
        var plain = Run("check", "--allow-outside-images", bundle);
        Assert.True(plain.ExitCode == 2, plain.Stdout + plain.Stderr);
        Assert.Contains("outside.hds: ERROR header in_use", plain.Stdout, StringComparison.Ordinal);
        Assert.Contains("Checked 2 images", plain.Stdout, StringComparison.Ordinal);
        var repaired = Run("check", "--repair", "--allow-outside-images", bundle);
        Assert.True(repaired.ExitCode == 0, repaired.Stdout + repaired.Stderr);
        Assert.Equal(0, Qemu.Check(outside).ExitCode);
        var export = Run("export", "--allow-outside-images", bundle, "-o", temp.Combine("x.raw"));
        Assert.True(export.ExitCode == 0, export.Stderr);
    }

    [Fact]
    public void AMovedBundleIsCheckedWithTheImageBesideTheDescriptorAndSaysSoAsInfoDoes()
    {
        using var temp = new TempFolder();
        string bundle = Samples.Extract("expanding", temp.Path);
        string xml = Path.Combine(bundle, "DiskDescriptor.xml");
        File.SetAttributes(xml, FileAttributes.Normal);
        const string stale = "/Users/someone/Parallels/old.pvm/expanding.hdd/";
        File.WriteAllText(xml, File.ReadAllText(xml).Replace("<File>expanding.hdd.0.", "<File>" + stale + "expanding.hdd.0.", StringComparison.Ordinal));

        var info = Run("info", "--json", bundle);
        Assert.True(info.ExitCode == 0, info.Stderr);
        using var doc = JsonDocument.Parse(info.Stdout);
        string warning = doc.RootElement.GetProperty("warnings").EnumerateArray()
            .Single(w => w.GetProperty("code").GetString() == "stale-absolute-path").GetProperty("message").GetString()!;
        Assert.StartsWith("DiskDescriptor.xml: image path " + stale, warning, StringComparison.Ordinal);

        foreach (string[] check in new[] { new[] { "check", bundle }, ["check", "--repair", bundle] })
        {
            var r = Run(check);
            Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr);
            Assert.Contains("Checked 1 image of", r.Stdout, StringComparison.Ordinal);
            var line = Assert.Single(r.Stdout.Split('\n'), l => l.Contains(stale, StringComparison.Ordinal));
            Assert.Equal("DiskDescriptor.xml: warning descriptor: " + warning["DiskDescriptor.xml: ".Length..], line);
            Assert.Contains("No errors were found", r.Stdout, StringComparison.Ordinal);
        }
    }
}
