using PrlFuse.Nbd.Protocol;

namespace PrlFuse.Tests.Nbd;

/// <summary>
/// The wire headers byte for byte as the NBD protocol document draws them (network byte order, the magic first), read
/// back, and refused when the magic is wrong or the bytes are too few: what a hostile client sends never becomes a
/// request.
/// </summary>
public sealed class NbdProtocolTests
{
    [Fact]
    public void RequestHeaderIsMagicFlagsTypeHandleOffsetLength()
    {
        var request = new NbdRequestHeader(NbdCommandFlags.Fua, NbdCommand.Write, 0x0102030405060708, 0x1122334455667788, 0x99AABBCC);
        var bytes = new byte[NbdRequestHeader.Size];
        request.Write(bytes);
        Assert.Equal(
            Convert.FromHexString("25609513" + "0001" + "0001" + "0102030405060708" + "1122334455667788" + "99AABBCC"),
            bytes);
        Assert.True(NbdRequestHeader.TryRead(bytes, out var read));
        Assert.Equal(request, read);
    }

    [Fact]
    public void OptionHeaderIsIHaveOptOptionLength()
    {
        var bytes = new byte[NbdOptionHeader.Size];
        new NbdOptionHeader(NbdOption.Go, 0x12345).Write(bytes);
        Assert.Equal(Convert.FromHexString("49484156454F5054" + "00000007" + "00012345"), bytes);
        Assert.Equal("IHAVEOPT", System.Text.Encoding.ASCII.GetString(bytes, 0, 8));
        Assert.True(NbdOptionHeader.TryRead(bytes, out var read));
        Assert.Equal(new NbdOptionHeader(NbdOption.Go, 0x12345), read);
    }

    [Fact]
    public void OptionReplyHeaderIsMagicOptionTypeLength()
    {
        var bytes = new byte[NbdOptionReplyHeader.Size];
        new NbdOptionReplyHeader(NbdOption.List, NbdOptionReply.ErrUnknown, 9).Write(bytes);
        Assert.Equal(Convert.FromHexString("0003E889045565A9" + "00000003" + "80000006" + "00000009"), bytes);
        Assert.True(NbdOptionReplyHeader.TryRead(bytes, out var read));
        Assert.Equal(new NbdOptionReplyHeader(NbdOption.List, NbdOptionReply.ErrUnknown, 9), read);
    }

    [Fact]
    public void SimpleReplyIsMagicErrorHandle()
    {
        var bytes = new byte[NbdSimpleReplyHeader.Size];
        new NbdSimpleReplyHeader(NbdError.NoSpace, 0xDEADBEEFCAFEF00D).Write(bytes);
        Assert.Equal(Convert.FromHexString("67446698" + "0000001C" + "DEADBEEFCAFEF00D"), bytes);
        Assert.True(NbdSimpleReplyHeader.TryRead(bytes, out var read));
        Assert.Equal(new NbdSimpleReplyHeader(28, 0xDEADBEEFCAFEF00D), read);
    }

    [Fact]
    public void StructuredReplyChunkIsMagicFlagsTypeHandleLength()
    {
        var bytes = new byte[NbdStructuredReplyHeader.Size];
        new NbdStructuredReplyHeader(NbdReplyFlags.Done, NbdReplyType.OffsetHole, 42, 12).Write(bytes);
        Assert.Equal(Convert.FromHexString("668E33EF" + "0001" + "0002" + "000000000000002A" + "0000000C"), bytes);
        Assert.True(NbdStructuredReplyHeader.TryRead(bytes, out var read));
        Assert.Equal(new NbdStructuredReplyHeader(1, 2, 42, 12), read);
    }

    [Fact]
    public void WrongMagicOrTooFewBytesIsNoHeader()
    {
        var bytes = new byte[64];
        new NbdRequestHeader(0, NbdCommand.Read, 1, 0, 512).Write(bytes);
        Assert.False(NbdRequestHeader.TryRead(bytes.AsSpan(0, NbdRequestHeader.Size - 1), out _));
        bytes[3] ^= 1;
        Assert.False(NbdRequestHeader.TryRead(bytes, out var garbage));
        Assert.Equal(default, garbage);

        // Each header refuses the others' magic: a reply is not a request, a request is not an option.
        new NbdSimpleReplyHeader(0, 1).Write(bytes);
        Assert.False(NbdRequestHeader.TryRead(bytes, out _));
        Assert.False(NbdStructuredReplyHeader.TryRead(bytes, out _));
        new NbdRequestHeader(0, NbdCommand.Read, 1, 0, 512).Write(bytes);
        Assert.False(NbdOptionHeader.TryRead(bytes, out _));
        Assert.False(NbdOptionReplyHeader.TryRead(bytes, out _));
        Assert.False(NbdSimpleReplyHeader.TryRead(bytes, out _));
        Assert.False(NbdOptionHeader.TryRead(new byte[NbdOptionHeader.Size - 1], out _));
    }

    [Fact]
    public void NumbersAreTheProtocolDocuments()
    {
        // A few that clients depend on; a typo in any would break every client the same way.
        Assert.Equal(0x4e42444d41474943UL, NbdMagic.InitPassword);
        Assert.Equal(9u, NbdOption.ListMetaContext);
        Assert.Equal(10u, NbdOption.SetMetaContext);
        Assert.Equal(0x80000001u, NbdOptionReply.ErrUnsupported);
        Assert.Equal(0x80000005u, NbdOptionReply.ErrTlsRequired);
        Assert.Equal((ushort)0x8001, NbdReplyType.Error);
        Assert.Equal((ushort)7, NbdCommand.BlockStatus);
        Assert.Equal((ushort)0x100, NbdTransmissionFlags.CanMultiConn);
        Assert.Equal(108u, NbdError.Shutdown);
    }
}
