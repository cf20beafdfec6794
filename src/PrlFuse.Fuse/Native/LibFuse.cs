using System.Runtime.InteropServices;

namespace PrlFuse.Fuse.Native;

/// <summary>
/// Loads libfuse3.so.3 and resolves the functions the high-level binding uses. Versioned symbols
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

    /// <summary>True when fuse_loop_mt@FUSE_3.12 with fuse_loop_cfg_* is used (else the 3.2 struct).</summary>
    public static bool UsesLoopConfig312 => Functions.LoopMt312 != null;

    /// <summary>The native handle of libfuse3 (dlopen handle).</summary>
    public static IntPtr Handle => Functions.Handle;

    internal static Api Functions => s_api.Value;

    internal sealed class Api
    {
        public IntPtr Handle;
        public delegate* unmanaged<FuseArgs*, FuseOperations*, nuint, void*, IntPtr> New;
        public delegate* unmanaged<IntPtr, byte*, int> Mount;
        public delegate* unmanaged<IntPtr, void> Unmount;
        public delegate* unmanaged<IntPtr, void> Destroy;
        public delegate* unmanaged<IntPtr, void> Exit;
        public delegate* unmanaged<FuseContextNative*> GetContext;
        public delegate* unmanaged<FuseArgs*, void> OptFreeArgs;
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

        var api = new Api { Handle = h };
        api.New = (delegate* unmanaged<FuseArgs*, FuseOperations*, nuint, void*, IntPtr>)
            FirstOf(h, ("fuse_new", "FUSE_3.1"), ("fuse_new_31", null), ("fuse_new", null));
        api.Mount = (delegate* unmanaged<IntPtr, byte*, int>)Required(h, "fuse_mount");
        api.Unmount = (delegate* unmanaged<IntPtr, void>)Required(h, "fuse_unmount");
        api.Destroy = (delegate* unmanaged<IntPtr, void>)Required(h, "fuse_destroy");
        api.Exit = (delegate* unmanaged<IntPtr, void>)Required(h, "fuse_exit");
        api.GetContext = (delegate* unmanaged<FuseContextNative*>)Required(h, "fuse_get_context");
        api.OptFreeArgs = (delegate* unmanaged<FuseArgs*, void>)Required(h, "fuse_opt_free_args");

        IntPtr loop312 = FirstOf(h, throwIfMissing: false, ("fuse_loop_mt", "FUSE_3.12"), ("fuse_loop_mt_312", null));
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
                FirstOf(h, ("fuse_loop_mt", "FUSE_3.2"), ("fuse_loop_mt_32", null));
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
