using System.Net;
using PrlFuse.Cli.Commands;
using PrlFuse.Core;

namespace PrlFuse.Tests.Nbd;

/// <summary>--listen as users write it: an address alone takes NBD's port, IPv6 in brackets, localhost; anything else is refused in one line.</summary>
public sealed class ServeArgumentTests
{
    [Theory]
    [InlineData("127.0.0.1:10810", "127.0.0.1", 10810)]
    [InlineData("127.0.0.1", "127.0.0.1", 10809)]
    [InlineData("0.0.0.0:0", "0.0.0.0", 0)]
    [InlineData("[::1]:2000", "::1", 2000)]
    [InlineData("[::1]", "::1", 10809)]
    [InlineData("::", "::", 10809)]
    [InlineData("localhost", "127.0.0.1", 10809)]
    [InlineData("localhost:99", "127.0.0.1", 99)]
    public void ListenAddressesParse(string text, string address, int port)
    {
        Assert.Equal(new IPEndPoint(IPAddress.Parse(address), port), ServeCommand.ParseListen(text));
    }

    [Theory]
    [InlineData("example.org:10809")]
    [InlineData("127.0.0.1:99999")]
    [InlineData("")]
    public void OtherTextIsRefused(string text)
    {
        var e = Assert.Throws<PrlFuseException>(() => ServeCommand.ParseListen(text));
        Assert.Contains("--listen", e.Message, StringComparison.Ordinal);
    }
}
