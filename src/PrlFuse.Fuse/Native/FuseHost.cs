using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;

namespace PrlFuse.Fuse.Native;

/// <summary>
/// One FUSE mount of an <see cref="IFuseFileSystem"/>, through libfuse3's low-level API or our own implementation of
/// the kernel protocol (<see cref="FuseKernelSession"/>: /dev/fuse or io_uring; see <see cref="FuseTransport"/>):
/// <see cref="Mount"/>, <see cref="Run"/> (serves on many threads, blocks until the filesystem is unmounted),
/// <see cref="TryUnmount"/> (non-lazy umount2, which also ends Run).
/// Only one host can be mounted per process (libfuse's callbacks dispatch through a static field).
/// </summary>
public sealed unsafe class FuseHost : IDisposable
{
    private static int s_active; // 1 while a host owns the static dispatch

    private readonly FuseMountOptions _options;
    private IntPtr _session;
    private FuseKernelSession? _kernel;
    private FuseKernelSession? _served; // _kernel, kept after Run for Transport
    private int _running;

    private FuseHost(string mountpoint, FuseMountOptions options)
    {
        Mountpoint = mountpoint;
        _options = options;
    }

    public string Mountpoint { get; }

    /// <summary>True from Mount until Run has returned (or Dispose cleaned up).</summary>
    public bool IsMounted => _session != IntPtr.Zero || Volatile.Read(ref _kernel) is not null;

    /// <summary>
    /// What carries the requests: <see cref="FuseTransport.LibFuse"/>, <see cref="FuseTransport.Device"/>, or
    /// <see cref="FuseTransport.Uring"/> once the kernel has agreed to it at init (until then, and if it refuses,
    /// <see cref="FuseTransport.Device"/>).
    /// </summary>
    public FuseTransport Transport => _served?.Transport ?? FuseTransport.LibFuse;

    /// <summary>
    /// The transport <see cref="FuseTransport.Auto"/> picks, fastest first, where root can mount without libfuse.
    /// </summary>
    private static FuseTransport[] AutoOrder => [FuseTransport.LibFuse];

    /// <summary>
    /// Mounts with the transport that <paramref name="options"/> asks for (<see cref="FuseMountOptions.Transport"/> or
    /// the environment variable it names; <see cref="FuseTransport.Auto"/>: the first of <see cref="AutoOrder"/> that
    /// this process can use, libfuse at last). Requests are served only once <see cref="Run"/> is called.
    /// Throws <see cref="DllNotFoundException"/> if libfuse3 is missing, <see cref="IOException"/> if the
    /// mountpoint is stale (see <see cref="ClearStaleMount"/>) or the mount fails, <see cref="NotSupportedException"/>
    /// if a transport asked for by name cannot be used here.
    /// </summary>
    public static FuseHost Mount(string mountpoint, IFuseFileSystem fileSystem, FuseMountOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(fileSystem);
        ArgumentException.ThrowIfNullOrEmpty(mountpoint);
        options ??= new FuseMountOptions();
        string fullPath = Path.GetFullPath(mountpoint);
        if (IsStaleMount(fullPath))
        {
            throw new IOException($"{fullPath} is a stale FUSE mount (transport endpoint not connected): clear it first (FuseHost.ClearStaleMount or fusermount3 -uz).");
        }
        if (Interlocked.CompareExchange(ref s_active, 1, 0) != 0)
        {
            throw new InvalidOperationException("Only one FUSE mount per process is supported.");
        }

        var host = new FuseHost(fullPath, options);
        try
        {
            if (MountWithoutLibFuse(host, fileSystem, options))
            {
                return host;
            }

            var api = LibFuse.Functions;
            FuseCallbacks.Attach(fileSystem, options.OnCallbackException, options.MaxRead);
            host._session = CreateSession(api, options);
            int rc;
            fixed (byte* mnt = NulTerminated(fullPath))
            {
                rc = api.SessionMount(host._session, mnt);
            }
            if (rc != 0)
            {
                throw new IOException($"fuse_mount failed for {fullPath} (libfuse printed the reason on stderr; does the directory exist, is /dev/fuse there?).");
            }
            return host;
        }
        catch
        {
            if (host._session != IntPtr.Zero)
            {
                LibFuse.Functions.SessionDestroy(host._session);
                host._session = IntPtr.Zero;
            }
            FuseCallbacks.Detach();
            Volatile.Write(ref s_active, 0);
            throw;
        }
    }

    /// <summary>Mounts through <see cref="FuseKernelSession"/> if the transport asks for it; false to use libfuse.</summary>
    private static bool MountWithoutLibFuse(FuseHost host, IFuseFileSystem fileSystem, FuseMountOptions options)
    {
        var asked = options.EffectiveTransport();
        if (asked == FuseTransport.LibFuse)
        {
            return false;
        }

        var candidates = asked == FuseTransport.Auto ? AutoOrder : [asked];
        foreach (var transport in candidates)
        {
            if (transport == FuseTransport.LibFuse)
            {
                return false;
            }

            if (FuseKernelSession.Unavailable(transport, options) is { } reason)
            {
                if (asked == FuseTransport.Auto)
                {
                    continue;
                }

                throw new NotSupportedException($"FUSE transport {transport} cannot be used: {reason}.");
            }

            try
            {
                host._kernel = host._served = FuseKernelSession.Mount(host.Mountpoint, fileSystem, options, uring: transport == FuseTransport.Uring);
                return true;
            }
            catch (IOException) when (asked == FuseTransport.Auto)
            {
                // mount(2) refused (a user namespace, a policy): libfuse may still mount through fusermount3.
            }
        }

        return false;
    }

    private static IntPtr CreateSession(LibFuse.Api api, FuseMountOptions options)
    {
        var argv = new List<string> { "prlfuse" };
        if (options.Debug)
        {
            argv.Add("-d");
        }
        if (options.BuildOptionString() is { } o)
        {
            argv.Add("-o");
            argv.Add(o);
        }

        // fuse_opt copies what it keeps (fuse_opt_add_arg strdups), so our strings can go right after fuse_session_new;
        // the parsed args it leaves in FuseArgs are freed with fuse_opt_free_args.
        var strings = new IntPtr[argv.Count];
        byte** vector = (byte**)NativeMemory.AllocZeroed((nuint)(argv.Count + 1), (nuint)sizeof(IntPtr));
        try
        {
            for (int i = 0; i < argv.Count; i++)
            {
                strings[i] = Marshal.StringToCoTaskMemUTF8(argv[i]);
                vector[i] = (byte*)strings[i];
            }
            var args = new FuseArgs { Argc = argv.Count, Argv = vector, Allocated = 0 };
            FuseLowLevelOperations ops = FuseCallbacks.Table();
            IntPtr session = api.SessionNew(&args, &ops, (nuint)sizeof(FuseLowLevelOperations), null);
            api.OptFreeArgs(&args);
            return session != IntPtr.Zero
                ? session
                : throw new IOException($"fuse_session_new failed (bad options? libfuse printed the reason on stderr): {string.Join(' ', argv)}");
        }
        finally
        {
            foreach (IntPtr s in strings)
            {
                Marshal.FreeCoTaskMem(s);
            }
            NativeMemory.Free(vector);
        }
    }

    /// <summary>
    /// Serves requests on libfuse's worker threads until the filesystem is unmounted (by
    /// <see cref="TryUnmount"/>, umount or fusermount3 -u), then releases libfuse (the filesystem's
    /// Destroy runs). Returns the loop's status: 0 after a normal unmount.
    /// </summary>
    public int Run()
    {
        if (_session == IntPtr.Zero && _kernel is null)
        {
            throw new ObjectDisposedException(nameof(FuseHost));
        }
        if (Interlocked.Exchange(ref _running, 1) != 0)
        {
            throw new InvalidOperationException("Run is already running.");
        }
        if (_kernel is { } kernel)
        {
            try
            {
                return kernel.Run();
            }
            finally
            {
                ReleaseKernel();
            }
        }
        var api = LibFuse.Functions;
        int status;
        try
        {
            status = RunLoop(api);
        }
        finally
        {
            Release(api);
        }
        return status;
    }

    private int RunLoop(LibFuse.Api api)
    {
        uint max = (uint)Math.Max(1, _options.MaxThreads);
        uint idle = (uint)Math.Clamp(_options.IdleThreads ?? _options.MaxThreads, 1, (int)max);
        if (api.LoopMt312 != null)
        {
            IntPtr config = api.LoopCfgCreate();
            if (config == IntPtr.Zero)
            {
                throw new OutOfMemoryException("fuse_loop_cfg_create failed.");
            }
            try
            {
                api.LoopCfgSetMaxThreads(config, max);
                api.LoopCfgSetIdleThreads(config, idle);
                return api.LoopMt312(_session, config);
            }
            finally
            {
                api.LoopCfgDestroy(config);
            }
        }
        // libfuse < 3.12 has no thread limit setting (it caps at 10 itself).
        var v1 = new FuseLoopConfigV1 { CloneFd = 0, MaxIdleThreads = idle };
        return api.LoopMt32(_session, &v1);
    }

    private void ReleaseKernel()
    {
        if (Interlocked.Exchange(ref _kernel, null) is { } kernel)
        {
            kernel.Dispose();
            Volatile.Write(ref s_active, 0);
        }
    }

    // After the loop: fuse_session_unmount is a no-op if the kernel already unmounted (libfuse sees
    // POLLERR on /dev/fuse); if the loop died for another reason it detaches the mount. Then
    // fuse_session_destroy calls the filesystem's Destroy and frees everything.
    private void Release(LibFuse.Api api)
    {
        IntPtr session = Interlocked.Exchange(ref _session, IntPtr.Zero);
        if (session == IntPtr.Zero)
        {
            return;
        }
        api.SessionUnmount(session);
        api.SessionDestroy(session);
        FuseCallbacks.Detach();
        Volatile.Write(ref s_active, 0);
    }

    /// <summary>
    /// Non-lazy unmount (umount2 flags 0). Returns 0 (Run will return), or an errno: EBUSY when
    /// something still uses the mount (an open file, a cwd, a loop device): the filesystem keeps
    /// serving. As non-root (EPERM) it falls back to fusermount3 -u, which is also non-lazy.
    /// Safe to call from any thread, e.g. a signal handler registration.
    /// </summary>
    public int TryUnmount()
    {
        if (Posix.Umount2(Mountpoint, 0) == 0)
        {
            return 0;
        }
        int errno = Marshal.GetLastPInvokeError();
        return errno == Errno.EPERM ? RunFusermount("-u", Mountpoint) : errno;
    }

    /// <summary>Non-lazy unmount of any mount point (see <see cref="TryUnmount"/>): 0 or an errno such as EBUSY.</summary>
    public static int Unmount(string mountpoint)
    {
        if (Posix.Umount2(mountpoint, 0) == 0)
        {
            return 0;
        }
        int errno = Marshal.GetLastPInvokeError();
        return errno == Errno.EPERM ? RunFusermount("-u", mountpoint) : errno;
    }

    /// <summary>True if <paramref name="path"/> is a FUSE mount whose daemon is gone (statvfs gives ENOTCONN).</summary>
    public static bool IsStaleMount(string path) =>
        Posix.StatVfs(path, out _) != 0 && Marshal.GetLastPInvokeError() == Errno.ENOTCONN;

    /// <summary>
    /// Detaches a stale mount (umount2 MNT_DETACH; fusermount3 -uz when not root). Returns 0 or an errno.
    /// Only for mounts whose daemon is dead: it would also detach a live one.
    /// </summary>
    public static int ClearStaleMount(string path)
    {
        if (Posix.Umount2(path, Posix.MntDetach) == 0)
        {
            return 0;
        }
        int errno = Marshal.GetLastPInvokeError();
        return errno == Errno.EPERM ? RunFusermount("-uz", path) : errno;
    }

    private static int RunFusermount(string flags, string path)
    {
        try
        {
            var psi = new ProcessStartInfo("fusermount3") { RedirectStandardError = true, UseShellExecute = false };
            psi.ArgumentList.Add(flags);
            psi.ArgumentList.Add(path);
            using var p = Process.Start(psi)!;
            string err = p.StandardError.ReadToEnd();
            p.WaitForExit();
            if (p.ExitCode == 0)
            {
                return 0;
            }
            return err.Contains("busy", StringComparison.OrdinalIgnoreCase) ? Errno.EBUSY : Errno.EPERM;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return Errno.EPERM; // no fusermount3
        }
    }

    /// <summary>
    /// If Run was never called, unmounts (lazily, via libfuse) and frees. While Run is running this does
    /// nothing: call <see cref="TryUnmount"/> and let Run return.
    /// </summary>
    public void Dispose()
    {
        if (Volatile.Read(ref _running) == 0 && Interlocked.CompareExchange(ref _running, 1, 0) == 0)
        {
            if (_kernel is not null)
            {
                ReleaseKernel();
            }
            else
            {
                Release(LibFuse.Functions);
            }
        }
    }

    private static byte[] NulTerminated(string s)
    {
        var bytes = new byte[Encoding.UTF8.GetByteCount(s) + 1];
        Encoding.UTF8.GetBytes(s, bytes);
        return bytes;
    }
}
