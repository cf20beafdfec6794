using System.Buffers.Binary;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Text;
using PrlFuse.Nbd.Protocol;

namespace PrlFuse.Nbd;

/// <summary>The handshake: the greeting, then option haggling until the client chooses an export (or leaves).</summary>
internal sealed partial class NbdConnection
{
    /// <summary>The greeting and option haggling; true when the client chose an export and transmission begins.</summary>
    private bool Handshake()
    {
        Span<byte> greeting = stackalloc byte[18];
        BinaryPrimitives.WriteUInt64BigEndian(greeting, NbdMagic.InitPassword);
        BinaryPrimitives.WriteUInt64BigEndian(greeting[8..], NbdMagic.Option);
        BinaryPrimitives.WriteUInt16BigEndian(greeting[16..], NbdHandshakeFlags.FixedNewstyle | NbdHandshakeFlags.NoZeroes);
        _stream.Write(greeting);

        Span<byte> word = stackalloc byte[4];
        _stream.ReadExactly(word);
        uint clientFlags = BinaryPrimitives.ReadUInt32BigEndian(word);
        if ((clientFlags & ~NbdClientFlags.Known) != 0)
        {
            Debug($"dropped: unknown client flags 0x{clientFlags:x}");
            return false;
        }

        _noZeroes = (clientFlags & NbdClientFlags.NoZeroes) != 0;
        bool tlsRequired = Options.TlsCertificate is not null;
        if (tlsRequired && (clientFlags & NbdClientFlags.FixedNewstyle) == 0)
        {
            Debug("dropped: TLS is required and the client does not speak fixed newstyle, which STARTTLS needs");
            return false;
        }

        var headerBytes = new byte[NbdOptionHeader.Size];
        while (true)
        {
            _stream.ReadExactly(headerBytes);
            if (!NbdOptionHeader.TryRead(headerBytes, out var option))
            {
                Debug("dropped: an option without IHAVEOPT");
                return false;
            }

            if (option.Length > NbdLimits.MaxOptionBytes)
            {
                Debug($"dropped: option {option.Option} with {option.Length} bytes of data");
                return false;
            }

            byte[] data = option.Length == 0 ? [] : new byte[option.Length];
            _stream.ReadExactly(data);
            if (tlsRequired && _tls is null && option.Option is not (NbdOption.StartTls or NbdOption.Abort))
            {
                if (option.Option == NbdOption.ExportName)
                {
                    Debug("dropped: NBD_OPT_EXPORT_NAME before TLS");
                    return false;
                }

                ReplyError(option.Option, NbdOptionReply.ErrTlsRequired, "this server requires TLS: send NBD_OPT_STARTTLS first");
                continue;
            }

            switch (option.Option)
            {
                case NbdOption.ExportName:
                    return ExportName(data);
                case NbdOption.Abort:
                    TryReply(option.Option, NbdOptionReply.Ack);
                    Debug("aborted the handshake");
                    return false;
                case NbdOption.List:
                    List(data);
                    break;
                case NbdOption.StartTls:
                    if (!StartTls(data))
                    {
                        return false;
                    }

                    break;
                case NbdOption.Info or NbdOption.Go:
                    if (InfoOrGo(option.Option, data))
                    {
                        return true;
                    }

                    break;
                case NbdOption.StructuredReply:
                    StructuredReply(data);
                    break;
                case NbdOption.ListMetaContext or NbdOption.SetMetaContext:
                    MetaContext(option.Option, data);
                    break;
                default:
                    ReplyError(option.Option, NbdOptionReply.ErrUnsupported, $"option {option.Option} is not supported");
                    break;
            }
        }
    }

    private bool ExportName(byte[] data)
    {
        // No error can be answered to NBD_OPT_EXPORT_NAME: an unknown export ends the session.
        var export = data.Length <= NbdLimits.MaxStringBytes ? _server.FindExport(Encoding.UTF8.GetString(data)) : null;
        if (export is null)
        {
            Debug("dropped: NBD_OPT_EXPORT_NAME of an unknown export");
            return false;
        }

        var reply = new byte[10 + (_noZeroes ? 0 : NbdLimits.ExportNameZeroes)];
        BinaryPrimitives.WriteUInt64BigEndian(reply, (ulong)export.Size);
        BinaryPrimitives.WriteUInt16BigEndian(reply.AsSpan(8), export.TransmissionFlags(_structured));
        _stream.Write(reply);
        Choose(export);
        return true;
    }

    private void List(byte[] data)
    {
        if (data.Length != 0)
        {
            ReplyError(NbdOption.List, NbdOptionReply.ErrInvalid, "NBD_OPT_LIST takes no data");
            return;
        }

        foreach (var export in _server.Exports)
        {
            byte[] name = Encoding.UTF8.GetBytes(export.Name);
            byte[] description = Encoding.UTF8.GetBytes(export.Description);
            var payload = new byte[4 + name.Length + description.Length];
            BinaryPrimitives.WriteUInt32BigEndian(payload, (uint)name.Length);
            name.CopyTo(payload, 4);
            description.CopyTo(payload, 4 + name.Length);
            Reply(NbdOption.List, NbdOptionReply.Server, payload);
        }

        Reply(NbdOption.List, NbdOptionReply.Ack, []);
    }

    /// <summary>False when the session must end (the TLS handshake failed after the ACK).</summary>
    private bool StartTls(byte[] data)
    {
        if (Options.TlsCertificate is not { } certificate)
        {
            ReplyError(NbdOption.StartTls, NbdOptionReply.ErrPolicy, "this server has no TLS certificate (it was started without --tls-cert)");
            return true;
        }

        if (data.Length != 0 || _tls is not null)
        {
            ReplyError(NbdOption.StartTls, NbdOptionReply.ErrInvalid, _tls is null ? "NBD_OPT_STARTTLS takes no data" : "TLS is on already");
            return true;
        }

        Reply(NbdOption.StartTls, NbdOptionReply.Ack, []);
        var tls = new SslStream(_stream, leaveInnerStreamOpen: false);
        try
        {
            tls.AuthenticateAsServer(new SslServerAuthenticationOptions
            {
                ServerCertificate = certificate,
                ClientCertificateRequired = false,
                CertificateRevocationCheckMode = System.Security.Cryptography.X509Certificates.X509RevocationMode.NoCheck,
            });
        }
        catch (AuthenticationException e)
        {
            tls.Dispose();
            Debug($"dropped: the TLS handshake failed: {e.Message}");
            return false;
        }

        _stream = tls;
        _tls = tls;
        return true;
    }

    private bool InfoOrGo(uint option, byte[] data)
    {
        // Data: name length (32), name, number of information requests (16), the requests (16 each).
        if (data.Length < 6 || BinaryPrimitives.ReadUInt32BigEndian(data) is var nameLength && nameLength > data.Length - 6)
        {
            ReplyError(option, NbdOptionReply.ErrInvalid, "option data too short for its export name");
            return false;
        }

        int requests = BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(4 + (int)nameLength));
        if (data.Length != 6 + nameLength + (2 * requests))
        {
            ReplyError(option, NbdOptionReply.ErrInvalid, "option length does not match its information requests");
            return false;
        }

        string name = Encoding.UTF8.GetString(data, 4, (int)nameLength);
        var export = _server.FindExport(name);
        if (export is null)
        {
            ReplyError(option, NbdOptionReply.ErrUnknown, $"no export named \"{name}\"; the exports are {string.Join(", ", _server.Exports.Select(e => e.Name))}");
            return false;
        }

        bool wantsName = false;
        bool wantsDescription = false;
        for (int i = 0; i < requests; i++)
        {
            ushort info = BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(6 + (int)nameLength + (2 * i)));
            wantsName |= info == NbdInfo.Name;
            wantsDescription |= info == NbdInfo.Description;
        }

        var exportInfo = new byte[12];
        BinaryPrimitives.WriteUInt16BigEndian(exportInfo, NbdInfo.Export);
        BinaryPrimitives.WriteUInt64BigEndian(exportInfo.AsSpan(2), (ulong)export.Size);
        BinaryPrimitives.WriteUInt16BigEndian(exportInfo.AsSpan(10), export.TransmissionFlags(_structured));
        Reply(option, NbdOptionReply.Info, exportInfo);

        // Told whether asked or not (as QEMU does): a minimum of 1 constrains nothing.
        var blockSize = new byte[14];
        BinaryPrimitives.WriteUInt16BigEndian(blockSize, NbdInfo.BlockSize);
        BinaryPrimitives.WriteUInt32BigEndian(blockSize.AsSpan(2), 1);
        BinaryPrimitives.WriteUInt32BigEndian(blockSize.AsSpan(6), NbdLimits.PreferredBlockBytes);
        BinaryPrimitives.WriteUInt32BigEndian(blockSize.AsSpan(10), NbdLimits.MaxPayloadBytes);
        Reply(option, NbdOptionReply.Info, blockSize);

        if (wantsName)
        {
            Reply(option, NbdOptionReply.Info, InfoString(NbdInfo.Name, export.Name));
        }

        if (wantsDescription)
        {
            Reply(option, NbdOptionReply.Info, InfoString(NbdInfo.Description, export.Description));
        }

        Reply(option, NbdOptionReply.Ack, []);
        if (option != NbdOption.Go)
        {
            return false;
        }

        Choose(export);
        return true;
    }

    private static byte[] InfoString(ushort type, string text)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(text);
        var payload = new byte[2 + bytes.Length];
        BinaryPrimitives.WriteUInt16BigEndian(payload, type);
        bytes.CopyTo(payload, 2);
        return payload;
    }

    private void StructuredReply(byte[] data)
    {
        if (data.Length != 0 || _structured)
        {
            ReplyError(NbdOption.StructuredReply, NbdOptionReply.ErrInvalid, _structured ? "structured replies are on already" : "NBD_OPT_STRUCTURED_REPLY takes no data");
            return;
        }

        _structured = true;
        Reply(NbdOption.StructuredReply, NbdOptionReply.Ack, []);
    }

    /// <summary>
    /// NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT. Data: export name length (32) and name, number of
    /// queries (32), each query's length (32) and text. Listing with no query lists every context, and "base:" or
    /// "qemu:" every one of that namespace; setting selects the contexts named exactly.
    /// </summary>
    private void MetaContext(uint option, byte[] data)
    {
        if (!_structured)
        {
            ReplyError(option, NbdOptionReply.ErrInvalid, "metadata contexts need structured replies: send NBD_OPT_STRUCTURED_REPLY first");
            return;
        }

        int position = 0;
        if (!TryReadString(data, ref position, out string name) || !TryReadUInt32(data, ref position, out uint count) || count > (data.Length - position) / 4)
        {
            ReplyError(option, NbdOptionReply.ErrInvalid, "malformed metadata context option");
            return;
        }

        var queries = new List<string>((int)count);
        for (uint i = 0; i < count; i++)
        {
            if (!TryReadString(data, ref position, out string query))
            {
                ReplyError(option, NbdOptionReply.ErrInvalid, "malformed metadata context query");
                return;
            }

            queries.Add(query);
        }

        if (position != data.Length)
        {
            ReplyError(option, NbdOptionReply.ErrInvalid, "metadata context option longer than its queries");
            return;
        }

        var export = _server.FindExport(name);
        if (export is null)
        {
            ReplyError(option, NbdOptionReply.ErrUnknown, $"no export named \"{name}\"");
            return;
        }

        bool listing = option == NbdOption.ListMetaContext;
        bool allocation = listing && count == 0;
        bool depth = listing && count == 0;
        foreach (string query in queries)
        {
            allocation |= query == NbdMetaContext.BaseAllocation || (listing && query == "base:");
            depth |= query == NbdMetaContext.QemuAllocationDepth || (listing && query == "qemu:");
        }

        var selected = new List<uint>();
        if (allocation)
        {
            Reply(option, NbdOptionReply.MetaContext, MetaContextPayload(NbdMetaContext.BaseAllocationId, NbdMetaContext.BaseAllocation));
            selected.Add(NbdMetaContext.BaseAllocationId);
        }

        if (depth)
        {
            Reply(option, NbdOptionReply.MetaContext, MetaContextPayload(NbdMetaContext.QemuAllocationDepthId, NbdMetaContext.QemuAllocationDepth));
            selected.Add(NbdMetaContext.QemuAllocationDepthId);
        }

        Reply(option, NbdOptionReply.Ack, []);
        if (!listing)
        {
            _contexts = [.. selected];
            _contextExport = export;
        }
    }

    private static byte[] MetaContextPayload(uint id, string name)
    {
        var payload = new byte[4 + name.Length];
        BinaryPrimitives.WriteUInt32BigEndian(payload, id);
        Encoding.ASCII.GetBytes(name, payload.AsSpan(4));
        return payload;
    }

    private static bool TryReadUInt32(byte[] data, ref int position, out uint value)
    {
        if (data.Length - position < 4)
        {
            value = 0;
            return false;
        }

        value = BinaryPrimitives.ReadUInt32BigEndian(data.AsSpan(position));
        position += 4;
        return true;
    }

    private static bool TryReadString(byte[] data, ref int position, out string text)
    {
        text = "";
        if (!TryReadUInt32(data, ref position, out uint length) || length > NbdLimits.MaxStringBytes || length > data.Length - position)
        {
            return false;
        }

        text = Encoding.UTF8.GetString(data, position, (int)length);
        position += (int)length;
        return true;
    }

    /// <summary>The export of the session; contexts chosen for another export do not carry over.</summary>
    private void Choose(NbdExport export)
    {
        _export = export;
        if (_contextExport != export)
        {
            _contexts = [];
        }
    }

    private void Reply(uint option, uint type, ReadOnlySpan<byte> data)
    {
        var message = new byte[NbdOptionReplyHeader.Size + data.Length];
        new NbdOptionReplyHeader(option, type, (uint)data.Length).Write(message);
        data.CopyTo(message.AsSpan(NbdOptionReplyHeader.Size));
        _stream.Write(message);
    }

    private void ReplyError(uint option, uint type, string text)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(text);
        Reply(option, type, bytes.AsSpan(0, Math.Min(bytes.Length, NbdLimits.MaxStringBytes)));
    }

    /// <summary>A reply the client may not wait for (NBD_OPT_ABORT's ACK).</summary>
    private void TryReply(uint option, uint type)
    {
        try
        {
            Reply(option, type, []);
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
        {
        }
    }
}
