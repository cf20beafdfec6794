using PrlFuse.Cli.Arguments;
using PrlFuse.Cli.Commands;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Cli;

/// <summary>Options as users type them: anywhere, -h at every level, each command only its own, values checked with their range.</summary>
public sealed class ArgumentTests
{
    private static T Parse<T>(string verb, params string[] args)
    {
        var options = CommandTable.Find(verb)!.Parse(args, out bool help);
        Assert.False(help);
        return (T)options;
    }

    private static string Refusal(string verb, params string[] args) =>
        Assert.Throws<UsageException>(() => CommandTable.Find(verb)!.Parse(args, out _)).Message;

    [Fact]
    public void OptionsMayStandBeforeBetweenAndAfterTheArguments()
    {
        var before = Parse<MountOptions>("mount", "-o", "default_permissions", "disk.hdd", "/mnt/x");
        Assert.Equal(("disk.hdd", "/mnt/x"), (before.Disk, before.MountPoint));
        Assert.Equal(["default_permissions"], before.FuseOptions);

        var mixed = Parse<MountOptions>("mount", "disk.hdd", "--read-only", "/mnt/x", "-o", "allow_other,nonempty", "-oro", "--threads=8", "--cache-size", "1G");
        Assert.Equal(("disk.hdd", "/mnt/x"), (mixed.Disk, mixed.MountPoint));
        Assert.True(mixed.ReadOnly);
        Assert.Equal(["allow_other", "nonempty", "ro"], mixed.FuseOptions);
        Assert.Equal(8, mixed.Threads);
        Assert.Equal(1L << 30, mixed.CacheBytes);

        var dashed = Parse<InfoOptions>("info", "--json", "--", "-odd-name.hdd");
        Assert.Equal("-odd-name.hdd", dashed.Disk);
    }

    [Theory]
    [InlineData("--threads", "-1", "from 0 to 64")]
    [InlineData("--threads", "100000", "from 0 to 64")]
    [InlineData("--threads", "x", "from 0 to 64")]
    [InlineData("--cache-size", "1T", "too large: the cache may take 0 to")]
    [InlineData("--cache-size", "12Q", "is not a size")]
    public void SizesAndCountsAreCheckedWithTheirRange(string option, string value, string expected)
    {
        string message = Refusal("mount", "disk.hdd", "/mnt/x", option, value);
        Assert.Contains(option, message, StringComparison.Ordinal);
        Assert.Contains(expected, message, StringComparison.Ordinal);
    }

    [Fact]
    public void EachCommandTakesOnlyItsOwnOptions()
    {
        Assert.Contains("unknown option \"--cache-size\"", Refusal("info", "--cache-size", "1M", "d.hdd"), StringComparison.Ordinal);
        Assert.Contains("unknown option \"--repair\"", Refusal("export", "--repair", "d.hdd"), StringComparison.Ordinal);
        Assert.Contains("missing <mountpoint>", Refusal("mount", "d.hdd"), StringComparison.Ordinal);
        Assert.Contains("unexpected argument \"c\"", Refusal("info", "a", "c"), StringComparison.Ordinal);
        Assert.Contains("did you mean --read-only", Refusal("mount", "--read", "a", "b"), StringComparison.Ordinal);

        string infoHelp = CommandTable.Find("info")!.HelpText();
        Assert.DoesNotContain("--cache-size", infoHelp, StringComparison.Ordinal);
        Assert.DoesNotContain("FUSE", infoHelp, StringComparison.Ordinal);
        Assert.Contains("libfuse", CommandTable.Find("mount")!.HelpText(), StringComparison.Ordinal);
        foreach (var command in CommandTable.Commands)
        {
            string help = command.HelpText();
            Assert.StartsWith("Usage: prlfuse " + command.Name, help, StringComparison.Ordinal);
            Assert.Contains("Examples:", help, StringComparison.Ordinal);
            Assert.Contains("-h, --help", help, StringComparison.Ordinal);
            Assert.DoesNotContain("daemon-child", help, StringComparison.Ordinal);
        }
    }

    [Trait("Needs", "Installed")]
    [Theory]
    [InlineData("-h")]
    [InlineData("--help")]
    [InlineData("help")]
    public void TheInstalledBinaryHelpsAtEveryLevel(string flag)
    {
        var top = PrlFuseCli.Run(flag);
        Assert.Equal(0, top.ExitCode);
        Assert.Contains("Commands:", top.Stdout, StringComparison.Ordinal);
        foreach (var command in CommandTable.Commands)
        {
            var r = flag == "help" ? PrlFuseCli.Run("help", command.Name) : PrlFuseCli.Run(command.Name, "disk.hdd", flag);
            Assert.True(r.ExitCode == 0, r.Stderr);
            Assert.StartsWith("Usage: prlfuse " + command.Name, r.Stdout, StringComparison.Ordinal);
            Assert.Equal("", r.Stderr);
        }
    }

    [Trait("Needs", "Installed")]
    [Fact]
    public void TheInstalledBinarySaysWhatIsWrongInOneLineAndTheUsage()
    {
        var r = PrlFuseCli.Run("mount", "--cache-size", "1T", "d.hdd", "/mnt/x");
        Assert.Equal(2, r.ExitCode);
        var lines = r.Stderr.TrimEnd().Split('\n');
        Assert.Equal(2, lines.Length);
        Assert.StartsWith("prlfuse mount: --cache-size 1T: is too large", lines[0], StringComparison.Ordinal);
        Assert.StartsWith("Usage: prlfuse mount [options] <disk> <mountpoint>", lines[1], StringComparison.Ordinal);

        var none = PrlFuseCli.Run();
        Assert.Equal(2, none.ExitCode);
        Assert.Contains("Commands:", none.Stderr, StringComparison.Ordinal);
        Assert.Equal(2, PrlFuseCli.Run("frobnicate").ExitCode);
        Assert.Equal(2, PrlFuseCli.Run("export", "d.hdd").ExitCode);
    }

    [Trait("Needs", "Installed")]
    [Fact]
    public void DotNetTextsDoNotLeak()
    {
        using var temp = new TempFolder();
        string bundle = Samples.Extract("expanding", temp.Path);
        var missing = PrlFuseCli.Run("export", bundle, "-o", "/nonexistent/x.raw");
        Assert.Equal(1, missing.ExitCode);
        Assert.DoesNotContain("Could not find", missing.Stderr, StringComparison.Ordinal);
        Assert.Contains("/nonexistent", missing.Stderr, StringComparison.Ordinal);
        Assert.Contains("does not exist", missing.Stderr, StringComparison.Ordinal);

        var folder = PrlFuseCli.Run("export", bundle, "-o", temp.Path);
        Assert.Equal(1, folder.ExitCode);
        Assert.DoesNotContain(" : ", folder.Stderr, StringComparison.Ordinal);
        Assert.Contains("folder", folder.Stderr, StringComparison.Ordinal);
    }
}
