namespace PrlFuse.Fuse.Native;

/// <summary>How <see cref="FuseHost.Mount"/> mounts and runs the filesystem.</summary>
public sealed class FuseMountOptions
{
    /// <summary>Shown as the source in /proc/mounts (fsname=). Commas are escaped for you.</summary>
    public string? FsName { get; set; }

    /// <summary>Type suffix: mounts show as fuse.SUBTYPE.</summary>
    public string? Subtype { get; set; } = "prlfuse";

    /// <summary>Let other users (and root, if we are not root) use the mount; non-root needs user_allow_other in /etc/fuse.conf.</summary>
    public bool AllowOther { get; set; }

    /// <summary>Let the kernel check permissions from the mode bits (root still bypasses them).</summary>
    public bool DefaultPermissions { get; set; }

    public bool ReadOnly { get; set; }

    /// <summary>
    /// Largest read request the kernel sends (bytes), or null for the kernel's limit (max_pages, 1 MiB with libfuse 3.14).
    /// Passed both as the max_read mount option and in init, as libfuse requires. See <see cref="FuseSplice"/>.
    /// </summary>
    public uint? MaxRead { get; set; }

    /// <summary>Further -o options, exactly as libfuse takes them (e.g. "max_read=1048576").</summary>
    public IList<string> ExtraOptions { get; } = new List<string>();

    /// <summary>Worker threads of the multithreaded loop (libfuse &gt;= 3.12; older libs pick their own).</summary>
    public int MaxThreads { get; set; } = DefaultMaxThreads;

    /// <summary>Idle threads kept alive; null means MaxThreads (no thread churn under load).</summary>
    public int? IdleThreads { get; set; }

    /// <summary>
    /// How requests travel between the kernel and us (see <see cref="FuseTransport"/>). When left at
    /// <see cref="FuseTransport.Auto"/>, <see cref="EnvironmentVariable"/> may name one (for tests and benchmarks).
    /// </summary>
    public FuseTransport Transport { get; set; } = FuseTransport.Auto;

    /// <summary>Names the transport (libfuse, device, uring or auto) of mounts whose <see cref="Transport"/> is Auto.</summary>
    public const string EnvironmentVariable = "PRLFUSE_FUSE_TRANSPORT";

    /// <summary><see cref="Transport"/>, or what <see cref="EnvironmentVariable"/> names.</summary>
    internal FuseTransport EffectiveTransport()
    {
        string? named = Transport == FuseTransport.Auto ? Environment.GetEnvironmentVariable(EnvironmentVariable) : null;
        return named?.Trim().ToLowerInvariant() switch
        {
            null or "" => Transport,
            "auto" => FuseTransport.Auto,
            "libfuse" => FuseTransport.LibFuse,
            "device" or "dev" => FuseTransport.Device,
            "uring" or "io_uring" => FuseTransport.Uring,
            _ => throw new ArgumentException($"{EnvironmentVariable}={named}: the transport must be auto, libfuse, device or uring"),
        };
    }

    /// <summary>libfuse's -d: every request is logged on stderr.</summary>
    public bool Debug { get; set; }

    /// <summary>Called with any exception thrown by the filesystem (answered with EIO). Default: write to stderr.</summary>
    public Action<Exception>? OnCallbackException { get; set; }

    /// <summary>CPUs, at least 4 (I/O-bound requests block) and at most 16.</summary>
    public static int DefaultMaxThreads => Math.Clamp(Environment.ProcessorCount, 4, 16);

    /// <summary>The comma-joined -o value, or null if there is none.</summary>
    internal string? BuildOptionString()
    {
        var parts = new List<string>();
        if (FsName is not null)
        {
            parts.Add("fsname=" + Escape(FsName));
        }
        if (Subtype is not null)
        {
            parts.Add("subtype=" + Escape(Subtype));
        }
        if (AllowOther)
        {
            parts.Add("allow_other");
        }
        if (DefaultPermissions)
        {
            parts.Add("default_permissions");
        }
        if (ReadOnly)
        {
            parts.Add("ro");
        }
        if (MaxRead is { } maxRead)
        {
            parts.Add("max_read=" + maxRead.ToString(System.Globalization.CultureInfo.InvariantCulture));
        }
        parts.AddRange(ExtraOptions);
        return parts.Count == 0 ? null : string.Join(',', parts);
    }

    // fuse_opt splits -o at commas; a backslash escapes the next character.
    private static string Escape(string value) => value.Replace("\\", "\\\\", StringComparison.Ordinal).Replace(",", "\\,", StringComparison.Ordinal);
}

/// <summary>How a mount exchanges requests with the kernel.</summary>
public enum FuseTransport
{
    /// <summary>The fastest one this machine allows (see <see cref="FuseHost.Mount"/>).</summary>
    Auto,

    /// <summary>libfuse's own loop (fusermount3 when not root; -d and any -o option libfuse knows).</summary>
    LibFuse,

    /// <summary>Our own /dev/fuse loop: one cloned descriptor per thread, read(2) and writev(2). Needs root to mount.</summary>
    Device,

    /// <summary>FUSE over io_uring (kernel 6.14 on, fuse.enable_uring=Y): a ring per thread and CPU queue. Needs root.</summary>
    Uring,
}
