using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.EndToEnd;

/// <summary>'prlfuse check' names orphan images without changing its exit code; 'check --repair' removes them.</summary>
[Trait("Needs", "Installed")]
public sealed class OrphanImageCommandTests
{
    [Fact]
    public void CheckWarnsAndRepairRemoves()
    {
        using var temp = new TempFolder();
        string bundle = Samples.Extract("expanding", temp.Path);
        string named = Directory.GetFiles(bundle, "*.hds").Single();
        string orphan = Path.Combine(bundle, "expanding.hdd.0.{11111111-2222-3333-4444-555555555555}.hds");
        File.Copy(named, orphan);
        long bytes = new FileInfo(orphan).Length;

        var check = PrlFuseCli.Run("check", bundle);
        Assert.True(check.ExitCode == 0, check.Stdout + check.Stderr);
        Assert.Contains($"{orphan}: warning: orphan image ({bytes} bytes)", check.Stdout, StringComparison.Ordinal);
        Assert.True(File.Exists(orphan));

        var repair = PrlFuseCli.Run("check", "--repair", bundle);
        Assert.True(repair.ExitCode == 0, repair.Stdout + repair.Stderr);
        Assert.Contains($"{orphan}: removed orphan image", repair.Stdout, StringComparison.Ordinal);
        Assert.False(File.Exists(orphan));
        Assert.True(File.Exists(named));

        var again = PrlFuseCli.Run("check", bundle);
        Assert.DoesNotContain("orphan", again.Stdout, StringComparison.Ordinal);
    }
}
