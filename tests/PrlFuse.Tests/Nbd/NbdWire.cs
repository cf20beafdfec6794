namespace PrlFuse.Tests.Nbd;

/// <summary>
/// Numbers of the NBD protocol as the tests' own client speaks it (NetworkBlockDevice/nbd doc/proto.md, with the
/// option numbers of the released spec: LIST_META_CONTEXT 9, SET_META_CONTEXT 10).
/// </summary>
public static class NbdWire
{
    public const ulong InitMagic = 0x4e42444d41474943; // "NBDMAGIC"
    public const ulong OptionMagic = 0x49484156454F5054; // "IHAVEOPT"
    public const ulong OptionReplyMagic = 0x3e889045565a9;
    public const uint RequestMagic = 0x25609513;
    public const uint SimpleReplyMagic = 0x67446698;
    public const uint StructuredReplyMagic = 0x668e33ef;

    public const ushort FlagFixedNewstyle = 1;
    public const ushort FlagNoZeroes = 2;
    public const uint ClientFixedNewstyle = 1;
    public const uint ClientNoZeroes = 2;

    public const uint OptExportName = 1;
    public const uint OptAbort = 2;
    public const uint OptList = 3;
    public const uint OptStartTls = 5;
    public const uint OptInfo = 6;
    public const uint OptGo = 7;
    public const uint OptStructuredReply = 8;
    public const uint OptListMetaContext = 9;
    public const uint OptSetMetaContext = 10;

    /// <summary>Options a server may know (extended headers 11 included): the rest are unknown to every server.</summary>
    public static bool IsKnownOption(uint option) => option is >= 1 and <= 11;

    public const uint RepAck = 1;
    public const uint RepServer = 2;
    public const uint RepInfo = 3;
    public const uint RepMetaContext = 4;
    public const uint RepErrUnsup = 0x80000001;
    public const uint RepErrPolicy = 0x80000002;
    public const uint RepErrInvalid = 0x80000003;
    public const uint RepErrTlsReqd = 0x80000005;
    public const uint RepErrUnknown = 0x80000006;

    public static bool IsError(uint replyType) => (replyType & 0x80000000) != 0;

    public const ushort InfoExport = 0;
    public const ushort InfoBlockSize = 3;

    public const ushort TxReadOnly = 1 << 1;
    public const ushort TxSendFlush = 1 << 2;
    public const ushort TxSendFua = 1 << 3;
    public const ushort TxSendTrim = 1 << 5;
    public const ushort TxSendWriteZeroes = 1 << 6;
    public const ushort TxSendDf = 1 << 7;

    public const ushort CmdRead = 0;
    public const ushort CmdWrite = 1;
    public const ushort CmdDisc = 2;
    public const ushort CmdFlush = 3;
    public const ushort CmdTrim = 4;
    public const ushort CmdCache = 5;
    public const ushort CmdWriteZeroes = 6;
    public const ushort CmdBlockStatus = 7;

    /// <summary>Commands a server may know (RESIZE 8 included).</summary>
    public static bool IsKnownCommand(ushort type) => type <= 8;

    public const ushort CmdFlagFua = 1;
    public const ushort CmdFlagNoHole = 2;
    public const ushort CmdFlagDf = 4;
    public const ushort CmdFlagReqOne = 8;

    public const ushort ReplyTypeNone = 0;
    public const ushort ReplyTypeOffsetData = 1;
    public const ushort ReplyTypeOffsetHole = 2;
    public const ushort ReplyTypeBlockStatus = 5;
    public const ushort ReplyFlagDone = 1;

    public static bool IsErrorChunk(ushort type) => (type & 0x8000) != 0;

    public const uint StateHole = 1;
    public const uint StateZero = 2;

    public const uint EPerm = 1;
    public const uint EInval = 22;
    public const uint ENoSpc = 28;

    public static string OptionName(uint option) => option switch
    {
        OptExportName => "EXPORT_NAME",
        OptAbort => "ABORT",
        OptList => "LIST",
        OptStartTls => "STARTTLS",
        OptInfo => "INFO",
        OptGo => "GO",
        OptStructuredReply => "STRUCTURED_REPLY",
        OptListMetaContext => "LIST_META_CONTEXT",
        OptSetMetaContext => "SET_META_CONTEXT",
        _ => $"option {option}",
    };

    public static string CommandName(ushort type) => type switch
    {
        CmdRead => "READ",
        CmdWrite => "WRITE",
        CmdDisc => "DISC",
        CmdFlush => "FLUSH",
        CmdTrim => "TRIM",
        CmdCache => "CACHE",
        CmdWriteZeroes => "WRITE_ZEROES",
        CmdBlockStatus => "BLOCK_STATUS",
        _ => $"command {type}",
    };

    public static string ReplyName(uint type) => type switch
    {
        RepAck => "ACK",
        RepServer => "SERVER",
        RepInfo => "INFO",
        RepMetaContext => "META_CONTEXT",
        RepErrUnsup => "ERR_UNSUP",
        RepErrPolicy => "ERR_POLICY",
        RepErrInvalid => "ERR_INVALID",
        RepErrTlsReqd => "ERR_TLS_REQD",
        RepErrUnknown => "ERR_UNKNOWN",
        _ => IsError(type) ? $"ERR_{type & 0x7fffffff}" : $"reply {type}",
    };
}
