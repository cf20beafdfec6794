namespace PrlFuse.Nbd.Protocol;

// Every number of the NBD protocol this server knows, in one place, named after the NetworkBlockDevice project's
// doc/proto.md without the NBD_ prefix (NBD_OPT_GO is NbdOption.Go). All travel in network byte order.

/// <summary>The magic numbers that open each message.</summary>
internal static class NbdMagic
{
    /// <summary>"NBDMAGIC": the server's first word (INIT_PASSWD).</summary>
    public const ulong InitPassword = 0x4e42444d41474943;

    /// <summary>"IHAVEOPT": after INIT_PASSWD in the newstyle greeting, and at the head of every option.</summary>
    public const ulong Option = 0x49484156454F5054;

    /// <summary>At the head of every option reply.</summary>
    public const ulong OptionReply = 0x3e889045565a9;

    /// <summary>NBD_REQUEST_MAGIC: at the head of every transmission request.</summary>
    public const uint Request = 0x25609513;

    /// <summary>NBD_SIMPLE_REPLY_MAGIC.</summary>
    public const uint SimpleReply = 0x67446698;

    /// <summary>NBD_STRUCTURED_REPLY_MAGIC: at the head of every structured reply chunk.</summary>
    public const uint StructuredReply = 0x668e33ef;
}

/// <summary>The server's 16 handshake flags (NBD_FLAG_FIXED_NEWSTYLE, NBD_FLAG_NO_ZEROES).</summary>
internal static class NbdHandshakeFlags
{
    public const ushort FixedNewstyle = 1 << 0;
    public const ushort NoZeroes = 1 << 1;
}

/// <summary>The client's 32 flags in reply to the greeting (NBD_FLAG_C_*): any other bit set drops the connection.</summary>
internal static class NbdClientFlags
{
    public const uint FixedNewstyle = 1 << 0;
    public const uint NoZeroes = 1 << 1;
    public const uint Known = FixedNewstyle | NoZeroes;
}

/// <summary>The 16 transmission flags an export is described with (NBD_FLAG_*).</summary>
internal static class NbdTransmissionFlags
{
    public const ushort HasFlags = 1 << 0;
    public const ushort ReadOnly = 1 << 1;
    public const ushort SendFlush = 1 << 2;
    public const ushort SendFua = 1 << 3;
    public const ushort Rotational = 1 << 4;
    public const ushort SendTrim = 1 << 5;
    public const ushort SendWriteZeroes = 1 << 6;
    public const ushort SendDf = 1 << 7;
    public const ushort CanMultiConn = 1 << 8;
    public const ushort SendResize = 1 << 9;
    public const ushort SendCache = 1 << 10;
    public const ushort SendFastZero = 1 << 11;
}

/// <summary>Option numbers (NBD_OPT_*).</summary>
internal static class NbdOption
{
    public const uint ExportName = 1;
    public const uint Abort = 2;
    public const uint List = 3;
    public const uint PeekExport = 4;
    public const uint StartTls = 5;
    public const uint Info = 6;
    public const uint Go = 7;
    public const uint StructuredReply = 8;
    public const uint ListMetaContext = 9;
    public const uint SetMetaContext = 10;
    public const uint ExtendedHeaders = 11;
}

/// <summary>Option reply types (NBD_REP_*); errors have bit 31 set.</summary>
internal static class NbdOptionReply
{
    public const uint Ack = 1;
    public const uint Server = 2;
    public const uint Info = 3;
    public const uint MetaContext = 4;

    public const uint ErrorBit = 1u << 31;
    public const uint ErrUnsupported = ErrorBit | 1;
    public const uint ErrPolicy = ErrorBit | 2;
    public const uint ErrInvalid = ErrorBit | 3;
    public const uint ErrPlatform = ErrorBit | 4;
    public const uint ErrTlsRequired = ErrorBit | 5;
    public const uint ErrUnknown = ErrorBit | 6;
    public const uint ErrShutdown = ErrorBit | 7;
    public const uint ErrBlockSizeRequired = ErrorBit | 8;
    public const uint ErrTooBig = ErrorBit | 9;
}

/// <summary>Information types of NBD_REP_INFO, asked for by NBD_OPT_INFO and NBD_OPT_GO (NBD_INFO_*).</summary>
internal static class NbdInfo
{
    public const ushort Export = 0;
    public const ushort Name = 1;
    public const ushort Description = 2;
    public const ushort BlockSize = 3;
}

/// <summary>Request types (NBD_CMD_*).</summary>
internal static class NbdCommand
{
    public const ushort Read = 0;
    public const ushort Write = 1;
    public const ushort Disconnect = 2;
    public const ushort Flush = 3;
    public const ushort Trim = 4;
    public const ushort Cache = 5;
    public const ushort WriteZeroes = 6;
    public const ushort BlockStatus = 7;
    public const ushort Resize = 8;
}

/// <summary>Command flags (NBD_CMD_FLAG_*).</summary>
internal static class NbdCommandFlags
{
    public const ushort Fua = 1 << 0;
    public const ushort NoHole = 1 << 1;
    public const ushort DontFragment = 1 << 2;
    public const ushort RequestOne = 1 << 3;
    public const ushort FastZero = 1 << 4;
}

/// <summary>Structured reply chunk flags (NBD_REPLY_FLAG_*).</summary>
internal static class NbdReplyFlags
{
    public const ushort Done = 1 << 0;
}

/// <summary>Structured reply chunk types (NBD_REPLY_TYPE_*); error chunks have bit 15 set.</summary>
internal static class NbdReplyType
{
    public const ushort None = 0;
    public const ushort OffsetData = 1;
    public const ushort OffsetHole = 2;
    public const ushort BlockStatus = 5;
    public const ushort Error = (1 << 15) | 1;
    public const ushort ErrorOffset = (1 << 15) | 2;
}

/// <summary>The error values a reply may carry (the protocol's own numbers, which happen to be Linux's errno).</summary>
internal static class NbdError
{
    public const uint None = 0;
    public const uint Permission = 1;
    public const uint Io = 5;
    public const uint NoMemory = 12;
    public const uint Invalid = 22;
    public const uint NoSpace = 28;
    public const uint Overflow = 75;
    public const uint NotSupported = 95;
    public const uint Shutdown = 108;
}

/// <summary>The metadata contexts served, their flags, and the IDs this server gives them.</summary>
internal static class NbdMetaContext
{
    /// <summary>The protocol's own context: <see cref="StateHole"/> and <see cref="StateZero"/> per extent.</summary>
    public const string BaseAllocation = "base:allocation";

    /// <summary>QEMU's context: how deep in the backing chain an extent is allocated (0: nowhere, 1: the top image).</summary>
    public const string QemuAllocationDepth = "qemu:allocation-depth";

    public const uint BaseAllocationId = 1;
    public const uint QemuAllocationDepthId = 2;

    /// <summary>NBD_STATE_HOLE (base:allocation): not allocated.</summary>
    public const uint StateHole = 1 << 0;

    /// <summary>NBD_STATE_ZERO (base:allocation): reads as zeros.</summary>
    public const uint StateZero = 1 << 1;
}

/// <summary>Sizes the protocol fixes, and the limits this server sets on what a client may send.</summary>
internal static class NbdLimits
{
    /// <summary>The protocol's bound on an export name or message (a string "MUST be no longer than 4096 bytes").</summary>
    public const int MaxStringBytes = 4096;

    /// <summary>
    /// An option's data beyond this drops the connection before anything is read: no legitimate option comes near it
    /// (the longest, a metadata context option, is a name and a few queries).
    /// </summary>
    public const int MaxOptionBytes = 64 * 1024;

    /// <summary>READ and WRITE lengths beyond this are refused (qemu-nbd's limit too); the maximum block size told.</summary>
    public const int MaxPayloadBytes = 32 * 1024 * 1024;

    /// <summary>The block size told to clients as preferred.</summary>
    public const int PreferredBlockBytes = 4096;

    /// <summary>Zeros after NBD_OPT_EXPORT_NAME's reply unless the client asked for none.</summary>
    public const int ExportNameZeroes = 124;
}
