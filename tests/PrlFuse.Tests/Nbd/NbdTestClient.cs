using System.Buffers.Binary;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Text;

namespace PrlFuse.Tests.Nbd;

/// <summary>The server closed the connection (end of stream, reset, or a broken pipe on send).</summary>
public sealed class NbdClosedException(string message) : IOException(message);

/// <summary>Nothing came from the server within the connection's time limit: a hang.</summary>
public sealed class NbdTimeoutException(string message) : IOException(message);

/// <summary>The server sent something the protocol forbids.</summary>
public sealed class NbdViolationException(string message) : Exception(message);

/// <summary>One option reply: its type (ACK, SERVER, INFO, META_CONTEXT or an error) and data.</summary>
public sealed record NbdTestOptionReply(uint Option, uint Type, byte[] Data)
{
    public bool IsFinal => Type == NbdWire.RepAck || NbdWire.IsError(Type);

    public override string ToString() => $"{NbdWire.ReplyName(Type)} to {NbdWire.OptionName(Option)} ({Data.Length} bytes)";
}

/// <summary>
/// A request in flight and, once <see cref="Done"/>, its reply: the error (0 = success), the bytes of a read
/// (holes as zeros) and the block status extents per metadata context.
/// </summary>
public sealed class NbdTestReply(ushort flags, ushort type, ulong handle, ulong offset, uint length)
{
    private readonly List<(ulong Start, ulong End)> _covered = [];

    public ushort Flags { get; } = flags;

    public ushort Type { get; } = type;

    public ulong Handle { get; } = handle;

    public ulong Offset { get; } = offset;

    public uint Length { get; } = length;

    public uint Error { get; internal set; }

    public bool Done { get; internal set; }

    public bool Structured { get; internal set; }

    public int ContentChunks { get; internal set; }

    public byte[]? Data { get; internal set; }

    public Dictionary<uint, List<(uint Length, uint Flags)>> Extents { get; } = [];

    public override string ToString() =>
        $"{NbdWire.CommandName(Type)} flags={Flags:x} offset={Offset} length={Length}";

    /// <summary>Marks [start, end) as sent; false when it overlaps what an earlier chunk sent.</summary>
    internal bool Cover(ulong start, ulong end)
    {
        foreach (var (s, e) in _covered)
        {
            if (start < e && s < end)
            {
                return false;
            }
        }

        _covered.Add((start, end));
        return true;
    }

    internal ulong CoveredBytes => _covered.Aggregate(0UL, (sum, c) => sum + (c.End - c.Start));
}

/// <summary>
/// A small NBD client written from the protocol document, for tests: every message can be sent whole, cut short or
/// with wrong fields, and every reply is checked against the protocol as it is read. Blocking, one connection, a
/// time limit on every receive and send (<see cref="NbdTimeoutException"/> when the server stalls).
/// </summary>
public sealed class NbdTestClient : IDisposable
{
    /// <summary>The largest option reply or reply chunk the client accepts: far above anything a server needs.</summary>
    private const int MaxMessageBytes = 64 << 20;

    private readonly Socket _socket;
    private readonly NetworkStream _plain;
    private readonly Dictionary<ulong, NbdTestReply> _pending = [];
    private readonly TimeSpan _timeout;
    private Stream _stream;

    private NbdTestClient(Socket socket, TimeSpan timeout, bool tls)
    {
        _socket = socket;
        _timeout = timeout;
        _socket.ReceiveTimeout = (int)timeout.TotalMilliseconds;
        _socket.SendTimeout = (int)timeout.TotalMilliseconds;
        _plain = new NetworkStream(socket, ownsSocket: false);
        _stream = _plain;
        UseTls = tls;
    }

    /// <summary>Whether <see cref="Handshake"/> starts TLS (STARTTLS right after the client flags).</summary>
    public bool UseTls { get; }

    /// <summary>TLS is running: everything from here on goes through it.</summary>
    public bool Tls => _stream is SslStream;

    public ushort HandshakeFlags { get; private set; }

    public bool NoZeroes { get; private set; }

    /// <summary>After <see cref="Go"/> or <see cref="ExportName"/>: the export's size and transmission flags.</summary>
    public ulong Size { get; private set; }

    public ushort TransmissionFlags { get; private set; }

    public bool Structured { get; private set; }

    /// <summary>Metadata contexts the last SET_META_CONTEXT selected: id to name.</summary>
    public Dictionary<uint, string> Contexts { get; } = [];

    public bool ReadOnly => (TransmissionFlags & NbdWire.TxReadOnly) != 0;

    public bool Has(ushort transmissionFlag) => (TransmissionFlags & transmissionFlag) != 0;

    /// <summary>Connects to a Unix socket path, or "HOST:PORT" over TCP; with <paramref name="tls"/> the handshake starts TLS.</summary>
    public static NbdTestClient Connect(string address, TimeSpan timeout, bool tls = false)
    {
        EndPoint endPoint;
        Socket socket;
        int colon = address.LastIndexOf(':');
        if (address.StartsWith('/') || colon < 0)
        {
            endPoint = new UnixDomainSocketEndPoint(address);
            socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        }
        else
        {
            endPoint = new IPEndPoint(IPAddress.Parse(address[..colon]), int.Parse(address[(colon + 1)..], System.Globalization.CultureInfo.InvariantCulture));
            socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        }

        try
        {
            if (!socket.ConnectAsync(endPoint).Wait(timeout))
            {
                throw new NbdTimeoutException($"connect to {address} did not complete in {timeout.TotalSeconds:0} s");
            }
        }
        catch (AggregateException e) when (e.InnerException is SocketException s)
        {
            socket.Dispose();
            throw new NbdClosedException($"connect to {address}: {s.SocketErrorCode}");
        }
        catch
        {
            socket.Dispose();
            throw;
        }

        return new NbdTestClient(socket, timeout, tls);
    }

    // --- bytes ----------------------------------------------------------------------------------------------------------

    public void Send(ReadOnlySpan<byte> bytes)
    {
        try
        {
            _stream.Write(bytes);
        }
        catch (IOException e)
        {
            throw Translate(e, $"sending {bytes.Length} bytes");
        }
    }

    public void ReceiveExactly(Span<byte> buffer, string what)
    {
        int done = 0;
        while (done < buffer.Length)
        {
            int n;
            try
            {
                n = _stream.Read(buffer[done..]);
            }
            catch (IOException e)
            {
                throw Translate(e, what);
            }

            if (n == 0)
            {
                throw new NbdClosedException($"server closed the connection while the client waited for {what}");
            }

            done += n;
        }
    }

    public byte[] Receive(int count, string what)
    {
        var buffer = new byte[count];
        ReceiveExactly(buffer, what);
        return buffer;
    }

    /// <summary>Half-closes: the server reads end of stream, the client can still read what the server sends.</summary>
    public void ShutdownSend()
    {
        try
        {
            _socket.Shutdown(SocketShutdown.Send);
        }
        catch (SocketException)
        {
        }
    }

    /// <summary>Closes with a reset (linger 0): the server sees ECONNRESET instead of an orderly end.</summary>
    public void Reset()
    {
        try
        {
            _socket.LingerState = new LingerOption(true, 0);
        }
        catch (SocketException)
        {
        }

        Dispose();
    }

    /// <summary>
    /// Reads and drops whatever the server still sends; true once it closed, false if it did not within
    /// <paramref name="limit"/>. The last thing done with a connection.
    /// </summary>
    public bool WaitForClose(TimeSpan limit) => WaitForClose(limit, out _);

    /// <inheritdoc cref="WaitForClose(TimeSpan)"/>
    /// <param name="limit">How long the server may take to close.</param>
    /// <param name="received">How many bytes came before the close.</param>
    public bool WaitForClose(TimeSpan limit, out long received)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var buffer = new byte[64 << 10];
        received = 0;
        while (clock.Elapsed < limit)
        {
            _socket.ReceiveTimeout = Math.Max(1, (int)(limit - clock.Elapsed).TotalMilliseconds);
            try
            {
                int n = _stream.Read(buffer);
                if (n == 0)
                {
                    return true;
                }

                received += n;
            }
            catch (IOException e) when (Translate(e, "") is NbdClosedException)
            {
                return true;
            }
            catch (IOException)
            {
                return false;
            }
        }

        return false;
    }

    private Exception Translate(IOException e, string what)
    {
        // Under TLS the socket's error sits one level deeper.
        Exception? inner = e.InnerException;
        while (inner is not null and not SocketException)
        {
            inner = inner.InnerException;
        }

        var code = (inner as SocketException)?.SocketErrorCode;
        return code is SocketError.TimedOut or SocketError.WouldBlock
            ? new NbdTimeoutException($"no answer from the server within {_timeout.TotalSeconds:0} s while {(what.Length > 0 ? what : "reading")}")
            : new NbdClosedException($"connection {code?.ToString() ?? e.Message} while {what}");
    }

    // --- handshake and options ------------------------------------------------------------------------------------------

    /// <summary>Reads the newstyle greeting; the server must offer fixed newstyle.</summary>
    public ushort ReadGreeting()
    {
        Span<byte> b = stackalloc byte[18];
        ReceiveExactly(b, "the greeting");
        if (BinaryPrimitives.ReadUInt64BigEndian(b) != NbdWire.InitMagic)
        {
            throw new NbdViolationException($"greeting magic {BinaryPrimitives.ReadUInt64BigEndian(b):x}");
        }

        if (BinaryPrimitives.ReadUInt64BigEndian(b[8..]) != NbdWire.OptionMagic)
        {
            throw new NbdViolationException("greeting is not newstyle (oldstyle magic)");
        }

        HandshakeFlags = BinaryPrimitives.ReadUInt16BigEndian(b[16..]);
        return HandshakeFlags;
    }

    public static byte[] ClientFlagBytes(uint flags)
    {
        var b = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(b, flags);
        return b;
    }

    /// <summary>Greeting and client flags: fixed newstyle, and no zeroes when asked for and offered.</summary>
    public void Handshake(bool noZeroes = true)
    {
        ReadGreeting();
        if ((HandshakeFlags & NbdWire.FlagFixedNewstyle) == 0)
        {
            throw new NbdViolationException($"server does not offer fixed newstyle (handshake flags {HandshakeFlags:x})");
        }

        NoZeroes = noZeroes && (HandshakeFlags & NbdWire.FlagNoZeroes) != 0;
        Send(ClientFlagBytes(NbdWire.ClientFixedNewstyle | (NoZeroes ? NbdWire.ClientNoZeroes : 0)));
        if (UseTls)
        {
            StartTls();
        }
    }

    /// <summary>
    /// NBD_OPT_STARTTLS, then the TLS handshake as a client that trusts any certificate (the tests' servers have
    /// throwaway ones; QEMU's and libnbd's clients check them in other tests).
    /// </summary>
    public void StartTls()
    {
        var replies = Option(NbdWire.OptStartTls, []);
        if (replies.Count != 1 || replies[0].Type != NbdWire.RepAck)
        {
            throw new NbdViolationException($"STARTTLS answered {string.Join(", ", replies)} by a server with TLS");
        }

        var tls = new SslStream(_plain, leaveInnerStreamOpen: true, (_, _, _, _) => true);
        try
        {
            tls.AuthenticateAsClient(new SslClientAuthenticationOptions { TargetHost = "localhost" });
        }
        catch (AuthenticationException e)
        {
            tls.Dispose();
            throw new NbdViolationException($"TLS handshake failed: {e.Message}");
        }
        catch (IOException e)
        {
            tls.Dispose();
            throw Translate(e, "the TLS handshake");
        }

        _stream = tls;
    }

    /// <summary>An option as sent on the wire; <paramref name="length"/> and <paramref name="magic"/> can lie.</summary>
    public static byte[] OptionBytes(uint option, ReadOnlySpan<byte> data, uint? length = null, ulong magic = NbdWire.OptionMagic)
    {
        var b = new byte[16 + data.Length];
        BinaryPrimitives.WriteUInt64BigEndian(b, magic);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(8), option);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(12), length ?? (uint)data.Length);
        data.CopyTo(b.AsSpan(16));
        return b;
    }

    /// <summary>GO/INFO data: the export name and the information types asked for.</summary>
    public static byte[] GoData(string name, params ushort[] infos)
    {
        byte[] n = Encoding.UTF8.GetBytes(name);
        var b = new byte[4 + n.Length + 2 + (2 * infos.Length)];
        BinaryPrimitives.WriteUInt32BigEndian(b, (uint)n.Length);
        n.CopyTo(b, 4);
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(4 + n.Length), (ushort)infos.Length);
        for (int i = 0; i < infos.Length; i++)
        {
            BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(6 + n.Length + (2 * i)), infos[i]);
        }

        return b;
    }

    /// <summary>LIST/SET_META_CONTEXT data: the export name and the queries.</summary>
    public static byte[] MetaContextData(string export, params string[] queries)
    {
        using var m = new MemoryStream();
        void U32(uint v)
        {
            Span<byte> s = stackalloc byte[4];
            BinaryPrimitives.WriteUInt32BigEndian(s, v);
            m.Write(s);
        }

        byte[] e = Encoding.UTF8.GetBytes(export);
        U32((uint)e.Length);
        m.Write(e);
        U32((uint)queries.Length);
        foreach (string q in queries)
        {
            byte[] qb = Encoding.UTF8.GetBytes(q);
            U32((uint)qb.Length);
            m.Write(qb);
        }

        return m.ToArray();
    }

    public void SendOption(uint option, ReadOnlySpan<byte> data) => Send(OptionBytes(option, data));

    public NbdTestOptionReply ReadOptionReply(uint option)
    {
        Span<byte> h = stackalloc byte[20];
        ReceiveExactly(h, $"the reply to {NbdWire.OptionName(option)}");
        ulong magic = BinaryPrimitives.ReadUInt64BigEndian(h);
        uint echoed = BinaryPrimitives.ReadUInt32BigEndian(h[8..]);
        uint type = BinaryPrimitives.ReadUInt32BigEndian(h[12..]);
        uint length = BinaryPrimitives.ReadUInt32BigEndian(h[16..]);
        if (magic != NbdWire.OptionReplyMagic)
        {
            throw new NbdViolationException($"option reply magic {magic:x} to {NbdWire.OptionName(option)}");
        }

        if (echoed != option)
        {
            throw new NbdViolationException($"reply to {NbdWire.OptionName(option)} names {NbdWire.OptionName(echoed)}");
        }

        if (length > MaxMessageBytes)
        {
            throw new NbdViolationException($"option reply of {length} bytes to {NbdWire.OptionName(option)}");
        }

        return new NbdTestOptionReply(option, type, Receive((int)length, $"the data of {NbdWire.ReplyName(type)} to {NbdWire.OptionName(option)}"));
    }

    /// <summary>Replies up to the final one (ACK or an error).</summary>
    public List<NbdTestOptionReply> ReadOptionReplies(uint option)
    {
        var replies = new List<NbdTestOptionReply>();
        while (true)
        {
            var reply = ReadOptionReply(option);
            replies.Add(reply);
            if (reply.IsFinal)
            {
                return replies;
            }

            if (replies.Count > 100_000)
            {
                throw new NbdViolationException($"no final reply to {NbdWire.OptionName(option)} after {replies.Count} replies");
            }
        }
    }

    public List<NbdTestOptionReply> Option(uint option, ReadOnlySpan<byte> data)
    {
        SendOption(option, data);
        return ReadOptionReplies(option);
    }

    /// <summary>NBD_OPT_LIST: the export names.</summary>
    public List<string> List()
    {
        var replies = Option(NbdWire.OptList, []);
        var names = new List<string>();
        foreach (var r in replies)
        {
            if (r.Type == NbdWire.RepServer)
            {
                uint n = r.Data.Length >= 4 ? BinaryPrimitives.ReadUInt32BigEndian(r.Data) : uint.MaxValue;
                if (n > r.Data.Length - 4)
                {
                    throw new NbdViolationException($"SERVER reply of {r.Data.Length} bytes names {n} bytes");
                }

                names.Add(Encoding.UTF8.GetString(r.Data, 4, (int)n));
            }
            else if (!r.IsFinal)
            {
                throw new NbdViolationException($"{r} in the answer to LIST");
            }
        }

        return replies[^1].Type == NbdWire.RepAck ? names : throw new NbdViolationException($"LIST ended with {replies[^1]}");
    }

    /// <summary>NBD_OPT_STRUCTURED_REPLY: true when this request was acknowledged.</summary>
    public bool StructuredReply()
    {
        var replies = Option(NbdWire.OptStructuredReply, []);
        if (replies.Count != 1)
        {
            throw new NbdViolationException($"{replies.Count} replies to STRUCTURED_REPLY");
        }

        // A second request may be refused; what was negotiated stays.
        Structured |= replies[0].Type == NbdWire.RepAck;
        return replies[0].Type == NbdWire.RepAck;
    }

    /// <summary>LIST_META_CONTEXT or SET_META_CONTEXT: the contexts named (id, name); null when the server refused.</summary>
    public Dictionary<uint, string>? MetaContexts(uint option, string export, params string[] queries)
    {
        var replies = Option(option, MetaContextData(export, queries));
        if (replies[^1].Type != NbdWire.RepAck)
        {
            return null;
        }

        var contexts = new Dictionary<uint, string>();
        foreach (var r in replies.SkipLast(1))
        {
            if (r.Type != NbdWire.RepMetaContext || r.Data.Length < 4)
            {
                throw new NbdViolationException($"{r} in the answer to {NbdWire.OptionName(option)}");
            }

            uint id = BinaryPrimitives.ReadUInt32BigEndian(r.Data);
            string name = Encoding.UTF8.GetString(r.Data, 4, r.Data.Length - 4);
            if (option == NbdWire.OptSetMetaContext && !contexts.TryAdd(id, name))
            {
                throw new NbdViolationException($"SET_META_CONTEXT gave id {id} twice");
            }

            contexts.TryAdd(id, name);
        }

        if (option == NbdWire.OptSetMetaContext)
        {
            Contexts.Clear();
            foreach (var (id, name) in contexts)
            {
                Contexts[id] = name;
            }
        }

        return contexts;
    }

    /// <summary>
    /// NBD_OPT_GO (or INFO): the final reply type (ACK on success); on ACK the export's size and flags from its
    /// NBD_INFO_EXPORT, which must come before the ACK.
    /// </summary>
    public uint Go(string name, uint option = NbdWire.OptGo, params ushort[] infos)
    {
        var replies = Option(option, GoData(name, infos));
        bool export = false;
        foreach (var r in replies.SkipLast(1))
        {
            if (r.Type != NbdWire.RepInfo || r.Data.Length < 2)
            {
                throw new NbdViolationException($"{r} in the answer to {NbdWire.OptionName(option)}");
            }

            if (BinaryPrimitives.ReadUInt16BigEndian(r.Data) == NbdWire.InfoExport)
            {
                if (r.Data.Length != 12)
                {
                    throw new NbdViolationException($"NBD_INFO_EXPORT of {r.Data.Length} bytes");
                }

                Size = BinaryPrimitives.ReadUInt64BigEndian(r.Data.AsSpan(2));
                TransmissionFlags = BinaryPrimitives.ReadUInt16BigEndian(r.Data.AsSpan(10));
                export = true;
            }
        }

        uint final = replies[^1].Type;
        if (final == NbdWire.RepAck && !export)
        {
            throw new NbdViolationException($"{NbdWire.OptionName(option)} acknowledged without NBD_INFO_EXPORT");
        }

        if (final == NbdWire.RepAck && (TransmissionFlags & 1) == 0)
        {
            throw new NbdViolationException($"transmission flags {TransmissionFlags:x} without NBD_FLAG_HAS_FLAGS");
        }

        return final;
    }

    /// <summary>NBD_OPT_EXPORT_NAME: size and flags, then the transmission phase (the server closes if it refuses).</summary>
    public void ExportName(string name)
    {
        SendOption(NbdWire.OptExportName, Encoding.UTF8.GetBytes(name));
        var b = Receive(NoZeroes ? 10 : 134, "the answer to EXPORT_NAME");
        Size = BinaryPrimitives.ReadUInt64BigEndian(b);
        TransmissionFlags = BinaryPrimitives.ReadUInt16BigEndian(b.AsSpan(8));
    }

    // --- transmission ---------------------------------------------------------------------------------------------------

    /// <summary>A request header as sent on the wire; <paramref name="magic"/> can lie.</summary>
    public static byte[] RequestBytes(ushort flags, ushort type, ulong handle, ulong offset, uint length, uint magic = NbdWire.RequestMagic)
    {
        var b = new byte[28];
        BinaryPrimitives.WriteUInt32BigEndian(b, magic);
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(4), flags);
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(6), type);
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(8), handle);
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(16), offset);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(24), length);
        return b;
    }

    /// <summary>Sends a request (and its payload, all or the part given) and waits for nothing; DISC has no reply.</summary>
    public NbdTestReply SendRequest(ushort flags, ushort type, ulong handle, ulong offset, uint length, ReadOnlySpan<byte> payload = default)
    {
        var reply = Register(flags, type, handle, offset, length);
        Send(RequestWithPayload(flags, type, handle, offset, length, payload));
        return reply;
    }

    /// <summary>
    /// Sends requests on another thread while this one reads the replies, as real clients do: a server may stop reading
    /// requests while its replies wait to be read, and a client that only writes would wait for it forever. The
    /// replies in the order they completed.
    /// </summary>
    public List<NbdTestReply> Pipeline(IReadOnlyList<(ushort Flags, ushort Type, ulong Handle, ulong Offset, uint Length, byte[] Payload)> requests)
    {
        foreach (var r in requests)
        {
            Register(r.Flags, r.Type, r.Handle, r.Offset, r.Length);
        }

        var sender = Task.Factory.StartNew(
            () =>
            {
                foreach (var r in requests)
                {
                    Send(RequestWithPayload(r.Flags, r.Type, r.Handle, r.Offset, r.Length, r.Payload));
                }
            },
            CancellationToken.None,
            TaskCreationOptions.LongRunning,
            TaskScheduler.Default);
        var done = new List<NbdTestReply>();
        while (done.Count < requests.Count)
        {
            done.Add(ReadReply());
        }

        sender.GetAwaiter().GetResult();
        return done;
    }

    private NbdTestReply Register(ushort flags, ushort type, ulong handle, ulong offset, uint length)
    {
        var reply = new NbdTestReply(flags, type, handle, offset, length);
        if (type != NbdWire.CmdDisc && !_pending.TryAdd(handle, reply))
        {
            throw new InvalidOperationException($"handle {handle} is in flight");
        }

        return reply;
    }

    private static byte[] RequestWithPayload(ushort flags, ushort type, ulong handle, ulong offset, uint length, ReadOnlySpan<byte> payload)
    {
        var header = RequestBytes(flags, type, handle, offset, length);
        if (payload.IsEmpty)
        {
            return header;
        }

        var all = new byte[header.Length + payload.Length];
        header.CopyTo(all, 0);
        payload.CopyTo(all.AsSpan(header.Length));
        return all;
    }

    /// <summary>Reads reply messages until one request completes; returns it.</summary>
    public NbdTestReply ReadReply()
    {
        while (true)
        {
            var done = ReadMessage();
            if (done is not null)
            {
                return done;
            }
        }
    }

    /// <summary>Sends one request and reads replies until that one completes.</summary>
    public NbdTestReply Transact(ushort flags, ushort type, ulong handle, ulong offset, uint length, ReadOnlySpan<byte> payload = default)
    {
        var reply = SendRequest(flags, type, handle, offset, length, payload);
        while (!reply.Done)
        {
            ReadReply();
        }

        return reply;
    }

    private NbdTestReply Pending(ulong handle, string kind) =>
        _pending.TryGetValue(handle, out var r) ? r : throw new NbdViolationException($"{kind} for handle {handle:x}, which is not in flight");

    private NbdTestReply Complete(NbdTestReply r)
    {
        r.Done = true;
        _pending.Remove(r.Handle);
        return r;
    }

    /// <summary>One simple reply or one structured chunk; the request it completes, else null.</summary>
    private NbdTestReply? ReadMessage()
    {
        Span<byte> magicBytes = stackalloc byte[4];
        ReceiveExactly(magicBytes, $"a reply ({_pending.Count} requests in flight)");
        uint magic = BinaryPrimitives.ReadUInt32BigEndian(magicBytes);
        if (magic == NbdWire.SimpleReplyMagic)
        {
            Span<byte> h = stackalloc byte[12];
            ReceiveExactly(h, "a simple reply header");
            uint error = BinaryPrimitives.ReadUInt32BigEndian(h);
            var r = Pending(BinaryPrimitives.ReadUInt64BigEndian(h[4..]), "simple reply");
            if (Structured && r.Type == NbdWire.CmdRead)
            {
                throw new NbdViolationException($"simple reply to {r} after structured replies were negotiated");
            }

            if (r.Type == NbdWire.CmdBlockStatus && error == 0)
            {
                throw new NbdViolationException($"simple success reply to {r}");
            }

            r.Error = error;
            if (r.Type == NbdWire.CmdRead && error == 0)
            {
                CheckAcceptedRead(r);
                r.Data = Receive((int)r.Length, $"the data of {r}");
            }

            return Complete(r);
        }

        if (magic != NbdWire.StructuredReplyMagic)
        {
            throw new NbdViolationException($"reply magic {magic:x}");
        }

        Span<byte> c = stackalloc byte[16];
        ReceiveExactly(c, "a structured reply chunk header");
        ushort flags = BinaryPrimitives.ReadUInt16BigEndian(c);
        ushort type = BinaryPrimitives.ReadUInt16BigEndian(c[2..]);
        var req = Pending(BinaryPrimitives.ReadUInt64BigEndian(c[4..]), $"structured chunk type {type}");
        uint length = BinaryPrimitives.ReadUInt32BigEndian(c[12..]);
        if (!Structured)
        {
            throw new NbdViolationException($"structured chunk to {req} without STRUCTURED_REPLY negotiated");
        }

        if (length > MaxMessageBytes)
        {
            throw new NbdViolationException($"chunk of {length} bytes to {req}");
        }

        req.Structured = true;
        var payload = Receive((int)length, $"the payload of chunk type {type} to {req}");
        Chunk(req, type, payload);
        if ((flags & NbdWire.ReplyFlagDone) == 0)
        {
            if (type == NbdWire.ReplyTypeNone)
            {
                throw new NbdViolationException($"NBD_REPLY_TYPE_NONE without DONE to {req}");
            }

            return null;
        }

        if (req.Type == NbdWire.CmdRead && req.Error == 0 && req.CoveredBytes != req.Length)
        {
            throw new NbdViolationException($"successful reply to {req} covers {req.CoveredBytes} bytes");
        }

        if (req.Type == NbdWire.CmdBlockStatus && req.Error == 0 && req.Extents.Count != Contexts.Count)
        {
            throw new NbdViolationException($"reply to {req} has extents for {req.Extents.Count} of {Contexts.Count} contexts");
        }

        return Complete(req);
    }

    private void CheckAcceptedRead(NbdTestReply r)
    {
        if (r.Offset + r.Length > Size || r.Offset + r.Length < r.Offset)
        {
            throw new NbdViolationException($"success for {r}, past the end ({Size})");
        }
    }

    private void Chunk(NbdTestReply req, ushort type, byte[] p)
    {
        ulong start = req.Offset, end = req.Offset + req.Length;
        switch (type)
        {
            case NbdWire.ReplyTypeNone:
                if (p.Length != 0)
                {
                    throw new NbdViolationException($"NBD_REPLY_TYPE_NONE of {p.Length} bytes to {req}");
                }

                return;
            case NbdWire.ReplyTypeOffsetData or NbdWire.ReplyTypeOffsetHole:
                {
                    if (req.Type != NbdWire.CmdRead)
                    {
                        throw new NbdViolationException($"content chunk to {req}");
                    }

                    bool data = type == NbdWire.ReplyTypeOffsetData;
                    if (data ? p.Length < 9 : p.Length != 12)
                    {
                        throw new NbdViolationException($"{(data ? "OFFSET_DATA" : "OFFSET_HOLE")} of {p.Length} bytes to {req}");
                    }

                    CheckAcceptedRead(req);
                    ulong at = BinaryPrimitives.ReadUInt64BigEndian(p);
                    ulong count = data ? (ulong)(p.Length - 8) : BinaryPrimitives.ReadUInt32BigEndian(p.AsSpan(8));
                    if (count == 0 || at < start || at + count > end || at + count < at)
                    {
                        throw new NbdViolationException($"content chunk [{at}, +{count}) outside {req}");
                    }

                    if (!req.Cover(at, at + count))
                    {
                        throw new NbdViolationException($"content chunk [{at}, +{count}) overlaps an earlier one of {req}");
                    }

                    req.ContentChunks++;
                    if ((req.Flags & NbdWire.CmdFlagDf) != 0 && req.ContentChunks > 1)
                    {
                        throw new NbdViolationException($"more than one content chunk to {req} with NBD_CMD_FLAG_DF");
                    }

                    req.Data ??= new byte[req.Length];
                    if (data)
                    {
                        p.AsSpan(8).CopyTo(req.Data.AsSpan((int)(at - start)));
                    }

                    return;
                }

            case NbdWire.ReplyTypeBlockStatus:
                {
                    if (req.Type != NbdWire.CmdBlockStatus || p.Length < 12 || (p.Length - 4) % 8 != 0)
                    {
                        throw new NbdViolationException($"BLOCK_STATUS chunk of {p.Length} bytes to {req}");
                    }

                    uint id = BinaryPrimitives.ReadUInt32BigEndian(p);
                    if (!Contexts.ContainsKey(id))
                    {
                        throw new NbdViolationException($"BLOCK_STATUS for context id {id}, not negotiated, to {req}");
                    }

                    var extents = new List<(uint, uint)>();
                    for (int i = 4; i < p.Length; i += 8)
                    {
                        uint len = BinaryPrimitives.ReadUInt32BigEndian(p.AsSpan(i));
                        if (len == 0)
                        {
                            throw new NbdViolationException($"extent of length 0 in the reply to {req}");
                        }

                        extents.Add((len, BinaryPrimitives.ReadUInt32BigEndian(p.AsSpan(i + 4))));
                    }

                    if (!req.Extents.TryAdd(id, extents))
                    {
                        throw new NbdViolationException($"two BLOCK_STATUS chunks for context {id} to {req}");
                    }

                    return;
                }

            default:
                if (!NbdWire.IsErrorChunk(type))
                {
                    throw new NbdViolationException($"unknown chunk type {type} to {req}");
                }

                if (p.Length < 6)
                {
                    throw new NbdViolationException($"error chunk of {p.Length} bytes to {req}");
                }

                uint error = BinaryPrimitives.ReadUInt32BigEndian(p);
                int messageLength = BinaryPrimitives.ReadUInt16BigEndian(p.AsSpan(4));
                if (error == 0 || messageLength > p.Length - 6)
                {
                    throw new NbdViolationException($"error chunk (error {error}, message {messageLength} of {p.Length - 6} bytes) to {req}");
                }

                if (req.Error == 0)
                {
                    req.Error = error;
                }

                return;
        }
    }

    public void Dispose()
    {
        _stream.Dispose();
        _plain.Dispose();
        _socket.Dispose();
    }
}
