using System.Runtime.InteropServices;

namespace PrlFuse.Fuse.Native;

/// <summary>
/// Loads libfuse3.so.3 and resolves the functions the low-level binding uses. Versioned symbols
/// are picked explicitly (dlvsym) so one build works from libfuse 3.2 to 3.17+.
/// </summary>
public static unsafe class LibFuse
{
    public const string LibraryName = "libfuse3.so.3";
    public const string NotInstalledMessage = "fuse3 is not installed: apt-get install fuse3";

    private static readonly Lazy<Api> s_api = new(Load, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>True when libfuse3 was found and every required symbol resolved.</summary>
    public static bool IsAvailable
    {
        get
        {
            try
            {
                _ = s_api.Value;
                return true;
            }
            catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException or PlatformNotSupportedException)
            {
                return false;
            }
        }
    }

    /// <summary>True when fuse_session_loop_mt@FUSE_3.12 with fuse_loop_cfg_* is used (else the 3.2 struct).</summary>
    public static bool UsesLoopConfig312 => Functions.LoopMt312 != null;

    /// <summary>The native handle of libfuse3 (dlopen handle).</summary>
    public static IntPtr Handle => Functions.Handle;

    internal static Api Functions => s_api.Value;

    internal sealed class Api
    {
        public IntPtr Handle;
        public delegate* unmanaged<FuseArgs*, FuseLowLevelOperations*, nuint, void*, IntPtr> SessionNew;
        public delegate* unmanaged<IntPtr, byte*, int> SessionMount;
        public delegate* unmanaged<IntPtr, void> SessionUnmount;
        public delegate* unmanaged<IntPtr, void> SessionDestroy;
        public delegate* unmanaged<IntPtr, FuseCtxNative*> RequestContext;
        public delegate* unmanaged<FuseArgs*, void> OptFreeArgs;
        // Replies: each request gets exactly one (none for forget).
        public delegate* unmanaged<IntPtr, int, int> ReplyErr;
        public delegate* unmanaged<IntPtr, FuseEntryParam*, int> ReplyEntry;
        public delegate* unmanaged<IntPtr, Stat*, double, int> ReplyAttr;
        public delegate* unmanaged<IntPtr, FuseFileInfoNative*, int> ReplyOpen;
        public delegate* unmanaged<IntPtr, nuint, int> ReplyWrite;
        public delegate* unmanaged<IntPtr, byte*, nuint, int> ReplyBuf;
        public delegate* unmanaged<IntPtr, FuseBufVec*, int, int> ReplyData;
        public delegate* unmanaged<IntPtr, StatVfs*, int> ReplyStatFs;
        public delegate* unmanaged<IntPtr, long, int> ReplyLseek;
        public delegate* unmanaged<IntPtr, byte*, nuint, byte*, Stat*, long, nuint> AddDirEntry;
        // libfuse >= 3.12: opaque config.
        public delegate* unmanaged<IntPtr, IntPtr, int> LoopMt312;
        public delegate* unmanaged<IntPtr> LoopCfgCreate;
        public delegate* unmanaged<IntPtr, void> LoopCfgDestroy;
        public delegate* unmanaged<IntPtr, uint, void> LoopCfgSetMaxThreads;
        public delegate* unmanaged<IntPtr, uint, void> LoopCfgSetIdleThreads;
        // libfuse 3.2 .. 3.11: two-field struct, must not be NULL.
        public delegate* unmanaged<IntPtr, FuseLoopConfigV1*, int> LoopMt32;
    }

    private static Api Load()
    {
        if (RuntimeInformation.ProcessArchitecture != Architecture.X64 || !OperatingSystem.IsLinux())
        {
            throw new PlatformNotSupportedException("PrlFuse's libfuse binding has x86-64 Linux struct layouts only.");
        }
        if (!NativeLibrary.TryLoad(LibraryName, out IntPtr h))
        {
            throw new DllNotFoundException(NotInstalledMessage);
        }

        // From 3.17 the header maps fuse_session_new to a versioned entry point; the 3.0 one stays for old callers.
        var api = new Api { Handle = h };
        api.SessionNew = (delegate* unmanaged<FuseArgs*, FuseLowLevelOperations*, nuint, void*, IntPtr>)
            FirstOf(h, ("fuse_session_new", "FUSE_3.0"), ("fuse_session_new", null));
        api.SessionMount = (delegate* unmanaged<IntPtr, byte*, int>)Required(h, "fuse_session_mount");
        api.SessionUnmount = (delegate* unmanaged<IntPtr, void>)Required(h, "fuse_session_unmount");
        api.SessionDestroy = (delegate* unmanaged<IntPtr, void>)Required(h, "fuse_session_destroy");
        api.RequestContext = (delegate* unmanaged<IntPtr, FuseCtxNative*>)Required(h, "fuse_req_ctx");
        api.OptFreeArgs = (delegate* unmanaged<FuseArgs*, void>)Required(h, "fuse_opt_free_args");
        api.ReplyErr = (delegate* unmanaged<IntPtr, int, int>)Required(h, "fuse_reply_err");
        api.ReplyEntry = (delegate* unmanaged<IntPtr, FuseEntryParam*, int>)Required(h, "fuse_reply_entry");
        api.ReplyAttr = (delegate* unmanaged<IntPtr, Stat*, double, int>)Required(h, "fuse_reply_attr");
        api.ReplyOpen = (delegate* unmanaged<IntPtr, FuseFileInfoNative*, int>)Required(h, "fuse_reply_open");
        api.ReplyWrite = (delegate* unmanaged<IntPtr, nuint, int>)Required(h, "fuse_reply_write");
        api.ReplyBuf = (delegate* unmanaged<IntPtr, byte*, nuint, int>)Required(h, "fuse_reply_buf");
        api.ReplyData = (delegate* unmanaged<IntPtr, FuseBufVec*, int, int>)Required(h, "fuse_reply_data");
        api.ReplyStatFs = (delegate* unmanaged<IntPtr, StatVfs*, int>)Required(h, "fuse_reply_statfs");
        api.ReplyLseek = (delegate* unmanaged<IntPtr, long, int>)Required(h, "fuse_reply_lseek");
        api.AddDirEntry = (delegate* unmanaged<IntPtr, byte*, nuint, byte*, Stat*, long, nuint>)Required(h, "fuse_add_direntry");

        IntPtr loop312 = FirstOf(h, throwIfMissing: false, ("fuse_session_loop_mt", "FUSE_3.12"), ("fuse_session_loop_mt_312", null));
        if (loop312 != IntPtr.Zero
            && NativeLibrary.TryGetExport(h, "fuse_loop_cfg_create", out IntPtr create)
            && NativeLibrary.TryGetExport(h, "fuse_loop_cfg_destroy", out IntPtr destroy)
            && NativeLibrary.TryGetExport(h, "fuse_loop_cfg_set_max_threads", out IntPtr setMax)
            && NativeLibrary.TryGetExport(h, "fuse_loop_cfg_set_idle_threads", out IntPtr setIdle))
        {
            api.LoopMt312 = (delegate* unmanaged<IntPtr, IntPtr, int>)loop312;
            api.LoopCfgCreate = (delegate* unmanaged<IntPtr>)create;
            api.LoopCfgDestroy = (delegate* unmanaged<IntPtr, void>)destroy;
            api.LoopCfgSetMaxThreads = (delegate* unmanaged<IntPtr, uint, void>)setMax;
            api.LoopCfgSetIdleThreads = (delegate* unmanaged<IntPtr, uint, void>)setIdle;
        }
        else
        {
            api.LoopMt32 = (delegate* unmanaged<IntPtr, FuseLoopConfigV1*, int>)
                FirstOf(h, ("fuse_session_loop_mt", "FUSE_3.2"), ("fuse_session_loop_mt_32", null));
        }
        return api;
    }

    private static IntPtr Required(IntPtr h, string name) =>
        NativeLibrary.TryGetExport(h, name, out IntPtr p)
            ? p
            : throw new EntryPointNotFoundException($"{LibraryName} has no {name}: libfuse too old? ({NotInstalledMessage})");

    private static IntPtr FirstOf(IntPtr h, params (string Name, string? Version)[] candidates) =>
        FirstOf(h, throwIfMissing: true, candidates);

    private static IntPtr FirstOf(IntPtr h, bool throwIfMissing, params (string Name, string? Version)[] candidates)
    {
        foreach (var (name, version) in candidates)
        {
            IntPtr p = version is null
                ? (NativeLibrary.TryGetExport(h, name, out IntPtr q) ? q : IntPtr.Zero)
                : Posix.DlVSym(h, name, version);
            if (p != IntPtr.Zero)
            {
                return p;
            }
        }
        return throwIfMissing
            ? throw new EntryPointNotFoundException(
                $"{LibraryName} has none of: {string.Join(", ", candidates.Select(c => c.Version is null ? c.Name : c.Name + "@" + c.Version))}")
            : IntPtr.Zero;
    }
}
