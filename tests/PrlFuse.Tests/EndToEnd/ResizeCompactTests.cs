using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.EndToEnd;

/// <summary>'prlfuse resize' and 'prlfuse compact' as users run them: results, refusals and their one-line messages.</summary>
[Trait("Needs", "Qemu")]
[Trait("Needs", "Installed")]
public sealed class ResizeCompactTests
{
    [Fact]
    public void ResizeAndCompactRunAndTheirRefusalsSayWhatToDo()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [16 * 2048], 531);
        string top = Path.Combine(chain.Bundle, chain.Levels[1].Files[0]);
        Qemu.Write(top, "write -P 5 15M 4k");

        var grown = PrlFuseCli.Run("resize", chain.Bundle, "--size", "48M");
        Assert.True(grown.ExitCode == 0, grown.Stderr);
        Assert.Contains("from 16 MiB to 48 MiB", grown.Stderr, StringComparison.Ordinal);
        Assert.True(File.Exists(Path.Combine(chain.Bundle, "DiskDescriptor.xml.Backup")), "the previous descriptor was not kept");

        var smaller = PrlFuseCli.Run("resize", chain.Bundle, "--size", "8M");
        Assert.Equal(1, smaller.ExitCode);
        Assert.Contains("--shrink", smaller.Stderr, StringComparison.Ordinal);

        var overData = PrlFuseCli.Run("resize", chain.Bundle, "--size", "8M", "--shrink");
        Assert.Equal(1, overData.ExitCode);
        Assert.Matches(@"^prlfuse: .*\.hds: cannot shrink to 8388608 bytes: the image holds data .*past the new end; the disk was not changed\n$", overData.Stderr);

        var odd = PrlFuseCli.Run("resize", chain.Bundle, "--size", "1000448");
        Assert.Equal(1, odd.ExitCode);
        Assert.Contains("whole number of cylinders", odd.Stderr, StringComparison.Ordinal);

        var missing = PrlFuseCli.Run("resize", chain.Bundle);
        Assert.Equal(2, missing.ExitCode);
        Assert.Contains("missing --size", missing.Stderr, StringComparison.Ordinal);

        var compacted = PrlFuseCli.Run("compact", chain.Bundle);
        Assert.True(compacted.ExitCode == 0, compacted.Stderr);
        Assert.Contains("compacted", compacted.Stderr, StringComparison.Ordinal);
        foreach (var level in chain.Levels)
        {
            Qemu.AssertClean(Path.Combine(chain.Bundle, level.Files[0]));
        }
    }
}
