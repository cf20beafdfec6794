using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text;
using PrlFuse.Nbd.Protocol;

namespace PrlFuse.Tests.Nbd;

/// <summary>
/// A client that speaks the protocol byte by byte (simple replies only), for what well-behaved clients never send:
/// requests past the end, too large, unknown, writes to read-only exports, garbage.
/// </summary>
internal sealed class RawNbdClient : IDisposable
{
    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private ulong _handle;

    private RawNbdClient(Socket socket)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: true);
    }

    /// <summary>Size and transmission flags of the export chosen with NBD_OPT_GO.</summary>
    public long Size { get; private set; }

    public ushort Flags { get; private set; }

    /// <summary>Connects, checks the greeting and chooses <paramref name="export"/> with NBD_OPT_GO.</summary>
    public static RawNbdClient Connect(string socketPath, string export)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        socket.Connect(new UnixDomainSocketEndPoint(socketPath));
        socket.ReceiveTimeout = 30_000;
        var client = new RawNbdClient(socket);
        client.Go(export);
        return client;
    }

    private void Go(string export)
    {
        var greeting = new byte[18];
        _stream.ReadExactly(greeting);
        Assert.Equal(NbdMagic.InitPassword, BinaryPrimitives.ReadUInt64BigEndian(greeting));
        Assert.Equal(NbdMagic.Option, BinaryPrimitives.ReadUInt64BigEndian(greeting.AsSpan(8)));
        Assert.Equal(NbdHandshakeFlags.FixedNewstyle | NbdHandshakeFlags.NoZeroes, BinaryPrimitives.ReadUInt16BigEndian(greeting.AsSpan(16)));
        Send(BigEndian32(NbdClientFlags.FixedNewstyle | NbdClientFlags.NoZeroes));

        byte[] name = Encoding.UTF8.GetBytes(export);
        var data = new byte[4 + name.Length + 2];
        BinaryPrimitives.WriteUInt32BigEndian(data, (uint)name.Length);
        name.CopyTo(data, 4);
        var header = new byte[NbdOptionHeader.Size];
        new NbdOptionHeader(NbdOption.Go, (uint)data.Length).Write(header);
        Send([.. header, .. data]);
        while (true)
        {
            var replyBytes = new byte[NbdOptionReplyHeader.Size];
            _stream.ReadExactly(replyBytes);
            Assert.True(NbdOptionReplyHeader.TryRead(replyBytes, out var reply));
            var payload = new byte[reply.Length];
            _stream.ReadExactly(payload);
            Assert.True(reply.Type is NbdOptionReply.Info or NbdOptionReply.Ack, $"NBD_OPT_GO of {export} answered {reply.Type:x}: {Encoding.UTF8.GetString(payload)}");
            if (reply.Type == NbdOptionReply.Ack)
            {
                return;
            }

            if (BinaryPrimitives.ReadUInt16BigEndian(payload) == NbdInfo.Export)
            {
                Size = (long)BinaryPrimitives.ReadUInt64BigEndian(payload.AsSpan(2));
                Flags = BinaryPrimitives.ReadUInt16BigEndian(payload.AsSpan(10));
            }
        }
    }

    /// <summary>Sends a request (with <paramref name="payload"/> after it) and returns the simple reply's error; a READ's data goes to <paramref name="data"/>.</summary>
    public uint Request(ushort type, long offset, uint length, byte[]? payload = null, byte[]? data = null, ushort flags = 0)
    {
        ulong handle = ++_handle;
        var header = new byte[NbdRequestHeader.Size];
        new NbdRequestHeader(flags, type, handle, (ulong)offset, length).Write(header);
        Send(header);
        if (payload is not null)
        {
            Send(payload);
        }

        var replyBytes = new byte[NbdSimpleReplyHeader.Size];
        _stream.ReadExactly(replyBytes);
        Assert.True(NbdSimpleReplyHeader.TryRead(replyBytes, out var reply), "not a simple reply");
        Assert.Equal(handle, reply.Handle);
        if (reply.Error == 0 && type == NbdCommand.Read)
        {
            data ??= new byte[length];
            _stream.ReadExactly(data.AsSpan(0, (int)length));
        }

        return reply.Error;
    }

    public void Send(byte[] bytes) => _stream.Write(bytes);

    /// <summary>True once the server has closed the connection (a read returns nothing).</summary>
    public bool ClosedByServer()
    {
        try
        {
            var one = new byte[1];
            return _stream.Read(one) == 0;
        }
        catch (IOException)
        {
            return true;
        }
    }

    public void Dispose() => _stream.Dispose();

    private static byte[] BigEndian32(uint value)
    {
        var bytes = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(bytes, value);
        return bytes;
    }
}
