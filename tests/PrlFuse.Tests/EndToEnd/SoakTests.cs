using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.EndToEnd;

/// <summary>The CI-sized soak: 60 seconds of scripts/soak.sh (fio verify on ext4 in current.raw, snapshot readers).</summary>
[Collection(FuseKernelCollection.Name)]
[Trait("Needs", "Kernel")]
[Trait("Needs", "Installed")]
public sealed class SoakTests(Xunit.Abstractions.ITestOutputHelper output)
{
    [Fact]
    public void SixtySecondSoakEndsCleanWithNoMemoryGrowth()
    {
        var result = ProcessRunner.Run(
            "bash",
            [Path.Combine(Repository.Root, "scripts", "soak.sh"), "60"],
            TimeSpan.FromMinutes(5),
            check: false,
            env: new Dictionary<string, string> { ["PRLFUSE"] = PrlFuseCli.Binary });
        output.WriteLine(result.Stdout);
        output.WriteLine(result.Stderr);
        Assert.True(result.ExitCode == 0, result.Stdout + result.Stderr);
        Assert.Contains("soak: OK", result.Stdout, StringComparison.Ordinal);
        Assert.Matches(@"verify errors 0 \(fio exit 0\)", result.Stdout);
    }
}
