using PrlFuse.Fuse.Native;

namespace PrlFuse.Tests.Fuse;

public sealed class FuseTypesTests
{
    [Fact]
    public void OptionStringEscapesAndCombines()
    {
        var o = new FuseMountOptions { FsName = @"a,b\c", AllowOther = true, DefaultPermissions = true, ReadOnly = true };
        o.ExtraOptions.Add("max_read=1048576");
        Assert.Equal(@"fsname=a\,b\\c,subtype=prlfuse,allow_other,default_permissions,ro,max_read=1048576", o.BuildOptionString());
        Assert.Null(new FuseMountOptions { Subtype = null }.BuildOptionString());
    }

    [Fact]
    public void DefaultThreadCountIsBetweenFourAndSixteen()
    {
        Assert.InRange(FuseMountOptions.DefaultMaxThreads, 4, 16);
        Assert.Null(new FuseMountOptions().IdleThreads); // means: as many as MaxThreads
    }

    [Fact]
    public void TimeSpecFromDateTimeOffset()
    {
        var t = TimeSpec.FromDateTimeOffset(DateTimeOffset.UnixEpoch.AddSeconds(5).AddTicks(3));
        Assert.Equal((5L, 300L), (t.Seconds, t.Nanoseconds));
        var before = TimeSpec.FromDateTimeOffset(DateTimeOffset.UnixEpoch.AddTicks(-1));
        Assert.Equal((-1L, 999_999_900L), (before.Seconds, before.Nanoseconds));
    }
}
