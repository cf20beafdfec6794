using System.Security.Cryptography;

namespace PrlFuse.Tests.Support;

/// <summary>
/// Runs prlfuse as users run it: the single-file binary that `make install` put in a prefix (scripts/test.sh installs
/// it into artifacts/test-prefix and names it in PRLFUSE_BIN). The build tree's dll and apphost are only for the
/// tests that show those start the same way.
/// </summary>
public static class PrlFuseCli
{
    private static readonly Lazy<string> s_binary = new(FindBinary);

    /// <summary>The installed binary.</summary>
    public static string Binary => s_binary.Value;

    /// <summary>The CLI project's dll copied beside the tests (`dotnet prlfuse.dll`).</summary>
    public static string Dll => Path.Combine(AppContext.BaseDirectory, "prlfuse.dll");

    /// <summary>The apphost `dotnet build` leaves beside the dll.</summary>
    public static string AppHost => Path.Combine(AppContext.BaseDirectory, "prlfuse");

    public static ProcessRunner.Result Run(params string[] args) =>
        ProcessRunner.Run(Binary, args, TimeSpan.FromMinutes(5), check: false);

    public static ProcessRunner.Result Run(IDictionary<string, string> env, params string[] args) =>
        ProcessRunner.Run(Binary, args, TimeSpan.FromMinutes(5), check: false, env: env);

    private static string FindBinary()
    {
        if (Environment.GetEnvironmentVariable("PRLFUSE_BIN") is { Length: > 0 } bin)
        {
            return File.Exists(bin) ? bin : throw new InvalidOperationException($"PRLFUSE_BIN={bin} does not exist");
        }

        string installed = Path.Combine(Repository.Root, "artifacts", "test-prefix", "bin", "prlfuse");
        return File.Exists(installed) ? installed : throw new InvalidOperationException("no installed prlfuse: run the tests with 'make test' (it runs 'make install PREFIX=artifacts/test-prefix'), or set PRLFUSE_BIN");
    }
}

/// <summary>A prlfuse mount made with the real command; unmounted (or torn down) when disposed, whatever happened.</summary>
public sealed class PrlFuseMount : IDisposable
{
    private readonly List<LoopMount> _loops = [];

    public PrlFuseMount(string disk, string mountpoint, params string[] options)
        : this(PrlFuseCli.Binary, [], disk, mountpoint, options)
    {
    }

    /// <summary>Mounts with another way of starting prlfuse: <paramref name="program"/> and its leading arguments.</summary>
    public PrlFuseMount(string program, string[] leading, string disk, string mountpoint, params string[] options)
    {
        Directory.CreateDirectory(mountpoint);
        Mountpoint = mountpoint;
        var result = ProcessRunner.Run(program, [.. leading, "mount", disk, mountpoint, .. options], TimeSpan.FromMinutes(5), check: false);
        Assert.True(result.ExitCode == 0, $"prlfuse mount failed ({result.ExitCode}): {result.Stderr}");
        Assert.True(File.Exists(Path.Combine(mountpoint, "current.raw")), "mount returned before current.raw was visible");
    }

    public string Mountpoint { get; }

    public string Current => Path.Combine(Mountpoint, "current.raw");

    public string Snapshot(Guid guid) => Path.Combine(Mountpoint, "snapshots", guid.ToString("B") + ".raw");

    public LoopMount Loop(string file, string at, bool readOnly)
    {
        var loop = new LoopMount(file, at, readOnly);
        _loops.Add(loop);
        return loop;
    }

    /// <summary>The daemon's pid, from its command line.</summary>
    public int DaemonPid()
    {
        foreach (var dir in Directory.GetDirectories("/proc"))
        {
            if (int.TryParse(Path.GetFileName(dir), out int pid))
            {
                try
                {
                    var args = File.ReadAllText(Path.Combine(dir, "cmdline")).Split('\0');
                    if (args.Contains("--daemon-child") && args.Contains(Mountpoint))
                    {
                        return pid;
                    }
                }
                catch (IOException)
                {
                }
            }
        }

        throw new InvalidOperationException($"no prlfuse daemon serves {Mountpoint}");
    }

    public ProcessRunner.Result Unmount()
    {
        foreach (var loop in _loops)
        {
            loop.Dispose();
        }

        _loops.Clear();
        return PrlFuseCli.Run("unmount", Mountpoint);
    }

    public void Dispose()
    {
        foreach (var loop in _loops)
        {
            loop.Dispose();
        }

        if (File.Exists("/proc/self/mountinfo") && File.ReadAllText("/proc/self/mountinfo").Contains(" " + Mountpoint + " ", StringComparison.Ordinal))
        {
            var r = PrlFuseCli.Run("unmount", Mountpoint);
            if (r.ExitCode != 0)
            {
                ProcessRunner.Run("fusermount3", ["-uz", Mountpoint], check: false);
            }
        }
    }
}

/// <summary>`mount -o loop` of a file on a folder; unmounted when disposed.</summary>
public sealed class LoopMount : IDisposable
{
    private bool _mounted;

    public LoopMount(string file, string at, bool readOnly, string? type = null)
    {
        Directory.CreateDirectory(at);
        At = at;
        var args = new List<string> { "-o", readOnly ? "loop,ro" : "loop" };
        if (type is not null)
        {
            args.AddRange(["-t", type]);
        }

        args.AddRange([file, at]);
        ProcessRunner.Run("mount", args);
        _mounted = true;
    }

    public string At { get; }

    public void Dispose()
    {
        if (_mounted)
        {
            _mounted = false;
            ProcessRunner.Run("sync", []);
            var r = ProcessRunner.Run("umount", [At], check: false);
            if (r.ExitCode != 0)
            {
                ProcessRunner.Run("umount", ["-l", At], check: false);
            }
        }
    }
}

public static class Hashing
{
    public static string Sha256File(string path)
    {
        // Large reads: with direct_io every read is one FUSE request, so 4 KiB reads of a 10 GiB file crawl.
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1 << 20);
        return Convert.ToHexStringLower(SHA256.HashData(stream));
    }

    /// <summary>The files of a mounted guest filesystem (lost+found left out), by path from its root, with their sha256.</summary>
    public static Dictionary<string, string> GuestFileSums(string root) =>
        Directory.EnumerateFiles(root, "*", SearchOption.AllDirectories)
            .Where(f => !f.Contains("lost+found", StringComparison.Ordinal))
            .ToDictionary(f => f[root.Length..], Sha256File, StringComparer.Ordinal);

    /// <summary>First differing offset of two files, or -1 when equal (length included).</summary>
    public static long FirstDifference(string a, string b)
    {
        using var fa = new FileStream(a, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1, FileOptions.None);
        using var fb = new FileStream(b, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1, FileOptions.None);
        var ba = new byte[1 << 20];
        var bb = new byte[1 << 20];
        long offset = 0;
        while (true)
        {
            int na = fa.ReadAtLeast(ba, ba.Length, throwOnEndOfStream: false);
            int nb = fb.ReadAtLeast(bb, bb.Length, throwOnEndOfStream: false);
            int common = ba.AsSpan(0, na).CommonPrefixLength(bb.AsSpan(0, nb));
            if (common != na || na != nb)
            {
                return offset + common;
            }

            if (na == 0)
            {
                return -1;
            }

            offset += na;
        }
    }
}
