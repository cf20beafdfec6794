namespace PrlFuse.Fuse.Native;

/// <summary>
/// View over libfuse's struct fuse_file_info for one request. Setting <see cref="Handle"/>,
/// <see cref="DirectIo"/> or <see cref="KeepCache"/> in Open writes straight into libfuse's struct;
/// the handle comes back in Read/Write/Fsync/Flush/Release. GetAttr, Truncate and SetTimes may get no
/// file info (path-based call): then <see cref="IsPresent"/> is false and the accessors throw.
/// </summary>
public readonly unsafe ref struct FuseFileInfo
{
    private readonly FuseFileInfoNative* _native;

    internal FuseFileInfo(FuseFileInfoNative* native) => _native = native;

    public bool IsPresent => _native != null;

    /// <summary>open(2) flags (O_ACCMODE bits, O_APPEND, O_DIRECT ...).</summary>
    public int Flags => Native->Flags;

    /// <summary>Flags &amp; O_ACCMODE: <see cref="OpenFlags.ReadOnly"/>, WriteOnly or ReadWrite.</summary>
    public int AccessMode => Native->Flags & OpenFlags.AccessModeMask;

    public bool WantsWrite => AccessMode != OpenFlags.ReadOnly;

    /// <summary>fh: any value the filesystem chooses in Open.</summary>
    public ulong Handle
    {
        get => Native->Fh;
        set => Native->Fh = value;
    }

    /// <summary>Bypass the page cache for this open file (FOPEN_DIRECT_IO).</summary>
    public bool DirectIo
    {
        get => (Native->Bits & FuseFileInfoNative.DirectIoBit) != 0;
        set => SetBit(FuseFileInfoNative.DirectIoBit, value);
    }

    /// <summary>Keep cached pages from earlier opens (FOPEN_KEEP_CACHE).</summary>
    public bool KeepCache
    {
        get => (Native->Bits & FuseFileInfoNative.KeepCacheBit) != 0;
        set => SetBit(FuseFileInfoNative.KeepCacheBit, value);
    }

    private FuseFileInfoNative* Native =>
        _native != null ? _native : throw new InvalidOperationException("No fuse_file_info for this request (path-based call).");

    private void SetBit(uint bit, bool on)
    {
        if (on)
        {
            Native->Bits |= bit;
        }
        else
        {
            Native->Bits &= ~bit;
        }
    }
}
