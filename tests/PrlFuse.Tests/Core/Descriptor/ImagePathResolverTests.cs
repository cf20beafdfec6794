using PrlFuse.Core.Descriptor;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.Descriptor;

/// <summary>The one mapping from a descriptor's &lt;File&gt; to a file, without opening anything.</summary>
public sealed class ImagePathResolverTests
{
    private static (TempFolder Temp, ImagePathResolver Resolver) Bundle(bool allowOutside = false)
    {
        var temp = new TempFolder();
        Directory.CreateDirectory(temp.Combine("disk.hdd"));
        File.WriteAllBytes(temp.Combine("disk.hdd", "in.hds"), [1]);
        File.WriteAllBytes(temp.Combine("out.hds"), [2]);
        return (temp, new ImagePathResolver(temp.Combine("disk.hdd", "DiskDescriptor.xml"), allowOutside));
    }

    [Fact]
    public void RelativePathsStayInTheBundleAbsoluteOnesMayLeadAnywhere()
    {
        var (temp, resolver) = Bundle();
        using (temp)
        {
            Assert.Equal(new ResolvedImagePath(temp.Combine("disk.hdd", "in.hds"), temp.Combine("disk.hdd", "DiskDescriptor.xml"), null), resolver.Resolve("in.hds"));
            Assert.Equal(temp.Combine("out.hds"), resolver.Resolve(temp.Combine("out.hds")).Path);
            var e = Assert.Throws<ImagePathException>(() => resolver.Resolve("../out.hds"));
            Assert.Equal(ImagePathRefusal.OutsideBundle, e.Refusal);
            Assert.Null(resolver.TryResolve("../out.hds"));
        }

        var (temp2, allowing) = Bundle(allowOutside: true);
        using (temp2)
        {
            Assert.Equal(temp2.Combine("out.hds"), allowing.Resolve("../out.hds").Path);
        }
    }

    [Fact]
    public void AStaleAbsolutePathFallsBackBesideTheDescriptorWithAWarning()
    {
        var (temp, resolver) = Bundle();
        using (temp)
        {
            var resolved = resolver.Resolve("/Users/someone/old.pvm/disk.hdd/in.hds");
            Assert.Equal(temp.Combine("disk.hdd", "in.hds"), resolved.Path);
            Assert.Equal("stale-absolute-path", resolved.Warning!.Code);
            Assert.Equal("DiskDescriptor.xml: image path /Users/someone/old.pvm/disk.hdd/in.hds does not exist; using in.hds in the bundle folder", resolved.Warning.Message);
            Assert.Equal(ImagePathRefusal.Missing, Assert.Throws<ImagePathException>(() => resolver.Resolve("/Users/someone/gone.hds")).Refusal);
        }
    }

    [Fact]
    public void AFileLongerThanAnyPathIsQuotedOnlyInPart()
    {
        var (temp, resolver) = Bundle();
        using (temp)
        {
            foreach (string file in new[] { new string('x', 1 << 20), "/" + new string('x', 1 << 20) })
            {
                var e = Assert.Throws<ImagePathException>(() => resolver.Resolve(file));
                Assert.Equal(ImagePathRefusal.Missing, e.Refusal);
                Assert.True(e.Message.Length < 1000, $"a {e.Message.Length}-character message");
                Assert.Contains("characters, longer than any path", e.Message, StringComparison.Ordinal);
            }
        }
    }
}
