using System.Diagnostics;
using PrlFuse.Cli.Commands;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Cli;

/// <summary>`make install` installs a Linux tool: one-line --version, a manual page that renders, bash completion that knows every option; `make uninstall` removes them.</summary>
[Trait("Needs", "Installed")]
public sealed class InstallTests
{
    private static string Prefix => Path.GetDirectoryName(Path.GetDirectoryName(PrlFuseCli.Binary))!;

    private static string ManPage => Path.Combine(Prefix, "share", "man", "man1", "prlfuse.1");

    private static string Completion => Path.Combine(Prefix, "share", "bash-completion", "completions", "prlfuse");

    [Fact]
    public void VersionIsOneLine()
    {
        var r = PrlFuseCli.Run("--version");
        Assert.Equal(0, r.ExitCode);
        Assert.Matches(@"^prlfuse \d+\.\d+\.\d+\n$", r.Stdout);
    }

    [Fact]
    public void TheManualPageRendersWithEveryCommandAndOption()
    {
        var r = ProcessRunner.Run("man", ["-l", ManPage], env: new Dictionary<string, string> { ["MANPAGER"] = "cat", ["MANWIDTH"] = "100" });
        Assert.Contains("EXIT STATUS", r.Stdout, StringComparison.Ordinal);
        Assert.DoesNotContain("warning", r.Stderr, StringComparison.OrdinalIgnoreCase);
        string text = r.Stdout.Replace("\u2010", "-", StringComparison.Ordinal).Replace("\u2212", "-", StringComparison.Ordinal);
        foreach (var command in CommandTable.Commands)
        {
            Assert.Contains(command.Name, text, StringComparison.Ordinal);
            foreach (var option in command.Options.Where(o => !o.Hidden))
            {
                Assert.True(text.Contains("--" + option.Long, StringComparison.Ordinal), $"man page lacks --{option.Long} of {command.Name}");
            }
        }
    }

    [Fact]
    public void BashCompletionOffersEachCommandsOwnOptions()
    {
        foreach (var command in CommandTable.Commands)
        {
            var offered = Complete($"prlfuse {command.Name} --");
            foreach (var option in command.Options.Where(o => !o.Hidden))
            {
                Assert.True(offered.Contains("--" + option.Long), $"completion of '{command.Name} --' lacks --{option.Long}: {string.Join(' ', offered)}");
            }

            var others = CommandTable.Commands.SelectMany(c => c.Options).Select(o => "--" + o.Long).Except(command.Options.Select(o => "--" + o.Long)).Except(["--help"]);
            Assert.Empty(offered.Intersect(others));
        }

        Assert.Contains("mount", Complete("prlfuse mo"));
    }

    [Fact]
    public void UninstallRemovesWhatInstallPutDown()
    {
        using var temp = new TempFolder();
        foreach (var file in new[] { PrlFuseCli.Binary, ManPage, Completion })
        {
            string target = temp.Combine(Path.GetRelativePath(Prefix, file));
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            File.Copy(file, target);
        }

        string repo = Repository.Root;
        var r = ProcessRunner.Run("make", ["-s", "-C", repo, "uninstall", "PREFIX=" + temp.Path]);
        Assert.Empty(Directory.GetFiles(temp.Path, "*", SearchOption.AllDirectories));
        Assert.Contains("removed", r.Stdout, StringComparison.Ordinal);
    }

    private static HashSet<string> Complete(string line)
    {
        string script = $"source '{Completion}'; COMP_LINE='{line}'; COMP_WORDS=({line}" + (line.EndsWith(' ') ? " ''" : "") + "); COMP_CWORD=$((${#COMP_WORDS[@]}-1)); _prlfuse; printf '%s\\n' \"${COMPREPLY[@]}\"";
        var r = ProcessRunner.Run("bash", ["-c", script]);
        return r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).ToHashSet();
    }
}
