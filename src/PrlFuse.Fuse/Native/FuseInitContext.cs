namespace PrlFuse.Fuse.Native;

/// <summary>
/// Handed to <see cref="IFuseFileSystem.Init"/>: the negotiated connection (struct fuse_conn_info) and the
/// settings the binding answers requests with (cache timeouts, per-open defaults). Only connection fields whose
/// offsets are the same in every libfuse 3.x are exposed; everything else can be passed as a -o option instead.
/// </summary>
public readonly unsafe ref struct FuseInitContext
{
    private readonly byte* _conn;
    private readonly FuseReplySettings* _settings;

    internal FuseInitContext(void* conn, FuseReplySettings* settings)
    {
        _conn = (byte*)conn;
        _settings = settings;
    }

    public uint ProtocolMajor => U32(_conn, FuseConnInfoOffsets.ProtoMajor);
    public uint ProtocolMinor => U32(_conn, FuseConnInfoOffsets.ProtoMinor);
    public uint MaxWrite
    {
        get => U32(_conn, FuseConnInfoOffsets.MaxWrite);
        set => U32(_conn, FuseConnInfoOffsets.MaxWrite) = value;
    }
    /// <summary>
    /// Largest read request; 0 means no limit beyond max_pages. To limit it, pass the same value as the max_read
    /// mount option too: libfuse refuses the connection when the two differ.
    /// </summary>
    public uint MaxRead
    {
        get => U32(_conn, FuseConnInfoOffsets.MaxRead);
        set => U32(_conn, FuseConnInfoOffsets.MaxRead) = value;
    }

    public uint MaxReadahead
    {
        get => U32(_conn, FuseConnInfoOffsets.MaxReadahead);
        set => U32(_conn, FuseConnInfoOffsets.MaxReadahead) = value;
    }

    /// <summary>FUSE_CAP_* bits the kernel and libfuse support.</summary>
    public uint Capable => U32(_conn, FuseConnInfoOffsets.Capable);

    /// <summary>FUSE_CAP_* bits requested; only set bits that are in <see cref="Capable"/>.</summary>
    public uint Want
    {
        get => U32(_conn, FuseConnInfoOffsets.Want);
        set => U32(_conn, FuseConnInfoOffsets.Want) = value;
    }

    /// <summary>Kernel queue of background (async) requests; raise it when many requests queue.</summary>
    public uint MaxBackground
    {
        get => U32(_conn, FuseConnInfoOffsets.MaxBackground);
        set => U32(_conn, FuseConnInfoOffsets.MaxBackground) = value;
    }

    public uint CongestionThreshold
    {
        get => U32(_conn, FuseConnInfoOffsets.CongestionThreshold);
        set => U32(_conn, FuseConnInfoOffsets.CongestionThreshold) = value;
    }

    /// <summary>Seconds the kernel caches names (default 1).</summary>
    public double EntryTimeout
    {
        get => _settings->EntryTimeout;
        set => _settings->EntryTimeout = value;
    }

    /// <summary>Seconds the kernel remembers that a name does not exist (default 0: it asks every time).</summary>
    public double NegativeTimeout
    {
        get => _settings->NegativeTimeout;
        set => _settings->NegativeTimeout = value;
    }

    /// <summary>Seconds the kernel caches attributes (default 1).</summary>
    public double AttrTimeout
    {
        get => _settings->AttrTimeout;
        set => _settings->AttrTimeout = value;
    }

    /// <summary>Use <see cref="Stat.Inode"/> from GetAttr/ReadDir as st_ino instead of the binding's node numbers.</summary>
    public bool UseIno
    {
        get => _settings->UseIno;
        set => _settings->UseIno = value;
    }

    /// <summary>Force direct_io on every open (Open can also set it per file).</summary>
    public bool DirectIo
    {
        get => _settings->DirectIo;
        set => _settings->DirectIo = value;
    }

    /// <summary>Force keep_cache on every open.</summary>
    public bool KernelCache
    {
        get => _settings->KernelCache;
        set => _settings->KernelCache = value;
    }

    private static ref uint U32(byte* p, int offset) => ref *(uint*)(p + offset);
}
