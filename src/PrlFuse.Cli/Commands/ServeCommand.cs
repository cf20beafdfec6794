using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using PrlFuse.Core;
using PrlFuse.Core.Engine;
using PrlFuse.Fuse.Daemon;
using PrlFuse.Nbd;

namespace PrlFuse.Cli.Commands;

/// <summary>
/// `prlfuse serve`: the disk's snapshots as NBD exports (<see cref="NbdServer"/>) on a Unix socket and/or TCP, in the
/// foreground until SIGINT, SIGTERM or SIGHUP, then a graceful stop: requests in flight are answered, the images
/// flushed and closed cleanly. With -d it starts itself as a daemon (<see cref="DaemonLauncher"/>) and returns once
/// the server accepts connections.
/// </summary>
internal static class ServeCommand
{
    public const int DefaultMaxConnections = 64;
    public const int MaxConnectionsLimit = 1024;

    /// <summary>The port NBD has from IANA, for a --listen address given without one.</summary>
    public const int DefaultPort = 10809;

    /// <summary>How long a stop waits for clients to take their last replies before closing them.</summary>
    private static readonly TimeSpan StopGrace = TimeSpan.FromSeconds(30);

    public static int Run(ServeOptions o)
    {
        if (o.ForceShare && !o.ReadOnly)
        {
            throw new PrlFuseException(null, "--force-share opens images that another process may be writing, so it goes with --read-only only");
        }

        if ((o.TlsCertificate is null) != (o.TlsKey is null))
        {
            throw new PrlFuseException(null, "--tls-cert and --tls-key go together: give the certificate and its private key (PEM files)");
        }

        var endpoints = o.Listen.Select(ParseListen).ToList();
        bool tls = o.TlsCertificate is not null;
        if (endpoints.FirstOrDefault(e => !IPAddress.IsLoopback(e.Address)) is { } exposed && !tls && !o.Insecure)
        {
            throw new PrlFuseException(null, $"--listen {exposed}: not a loopback address, so anyone on the network could read and write the disk; give --tls-cert and --tls-key, or --insecure to serve it without TLS anyway");
        }

        o.Disk = Path.GetFullPath(o.Disk);
        o.Socket = o.Socket is not null ? Path.GetFullPath(o.Socket) : endpoints.Count == 0 ? DefaultSocketPath(o.Disk) : null;
        o.TlsCertificate = o.TlsCertificate is null ? null : Path.GetFullPath(o.TlsCertificate);
        o.TlsKey = o.TlsKey is null ? null : Path.GetFullPath(o.TlsKey);
        o.Log = o.Log is null ? null : Path.GetFullPath(o.Log);
        return o.Detach && !o.DaemonChild ? StartDaemon(o, endpoints) : Serve(o, endpoints);
    }

    /// <summary>
    /// Where the socket goes when neither --socket nor --listen is given: the user's runtime folder ($XDG_RUNTIME_DIR,
    /// else the temporary folder), named after the disk.
    /// </summary>
    private static string DefaultSocketPath(string disk)
    {
        string folder = Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR") is { Length: > 0 } runtime && Directory.Exists(runtime) ? runtime : Path.GetTempPath();
        string source = Path.TrimEndingDirectorySeparator(disk);
        string name = Path.GetFileName(source);
        if (name.Equals("DiskDescriptor.xml", StringComparison.OrdinalIgnoreCase))
        {
            name = Path.GetFileName(Path.GetDirectoryName(source) ?? "disk");
        }

        return Path.Combine(folder, $"prlfuse-{name}.sock");
    }

    /// <summary>ADDRESS, ADDRESS:PORT, [IPv6]:PORT or localhost[:PORT]; port 10809 when none is given.</summary>
    internal static IPEndPoint ParseListen(string text)
    {
        string t = text.Trim();
        if (t == "localhost" || t.StartsWith("localhost:", StringComparison.Ordinal))
        {
            t = "127.0.0.1" + t["localhost".Length..];
        }

        if (IPAddress.TryParse(t, out var address) && !t.StartsWith('['))
        {
            return new IPEndPoint(address, DefaultPort);
        }

        if (t.StartsWith('[') && t.EndsWith(']') && IPAddress.TryParse(t[1..^1], out address))
        {
            return new IPEndPoint(address, DefaultPort);
        }

        return IPEndPoint.TryParse(t, out var endpoint)
            ? endpoint
            : throw new PrlFuseException(null, $"--listen {text}: not an address and port (give e.g. 127.0.0.1:10809, [::1]:10809 or 0.0.0.0:10809)");
    }

    private static int StartDaemon(ServeOptions o, List<IPEndPoint> endpoints)
    {
        // Fail fast on what the parent can see, so the common mistakes need no daemon round trip.
        using (LoadCertificate(o))
        {
        }

        string place = o.Socket ?? endpoints[0].ToString();
        var kind = new DaemonKind("NBD server", place, "without -d", () => ConfirmAccepts(o.Socket, endpoints));
        if (DaemonLauncher.Start(DaemonArguments(o), kind, Console.Error) is not { } failed)
        {
            return Program.ExitOk;
        }

        Console.Error.Write(failed.Said);
        return failed.ExitCode == 0 ? Program.ExitError : failed.ExitCode;
    }

    private static IEnumerable<string> DaemonArguments(ServeOptions o)
    {
        yield return "serve";
        yield return o.Disk;
        yield return "--daemon-child";
        yield return "--cache-size";
        yield return o.CacheBytes.ToString(CultureInfo.InvariantCulture);
        yield return "--max-connections";
        yield return o.MaxConnections.ToString(CultureInfo.InvariantCulture);
        foreach (var (set, flag) in new[]
        {
            (o.ReadOnly, "--read-only"), (o.Insecure, "--insecure"), (o.AllowOutsideImages, "--allow-outside-images"),
            (o.Debug, "--debug"), (o.ForceShare, "--force-share"),
        })
        {
            if (set)
            {
                yield return flag;
            }
        }

        foreach (var (value, option) in new[] { (o.Socket, "--socket"), (o.TlsCertificate, "--tls-cert"), (o.TlsKey, "--tls-key"), (o.Log, "--log"), (o.Format, "--format") })
        {
            if (value is not null)
            {
                yield return option;
                yield return value;
            }
        }

        foreach (string listen in o.Listen)
        {
            yield return "--listen";
            yield return listen;
        }
    }

    /// <summary>The daemon said it serves: a connection must be accepted before the launch counts as a success.</summary>
    private static void ConfirmAccepts(string? socketPath, List<IPEndPoint> endpoints)
    {
        EndPoint target = socketPath is not null ? new UnixDomainSocketEndPoint(socketPath) : Reachable(endpoints[0]);
        using var probe = new Socket(target.AddressFamily, SocketType.Stream, socketPath is null ? ProtocolType.Tcp : ProtocolType.Unspecified);
        try
        {
            var connect = probe.ConnectAsync(target);
            if (!connect.Wait(TimeSpan.FromSeconds(30)))
            {
                throw new PrlFuseException(socketPath ?? target.ToString(), "the NBD server reported ready but accepts no connection; see its --log");
            }
        }
        catch (AggregateException e) when (e.InnerException is SocketException s)
        {
            throw new PrlFuseException(socketPath ?? target.ToString(), $"the NBD server reported ready but refuses connections ({s.Message}); see its --log");
        }
    }

    /// <summary>Where a client on this machine reaches a listening endpoint (the wildcard address is not one to connect to).</summary>
    private static IPEndPoint Reachable(IPEndPoint endpoint) =>
        endpoint.Address.Equals(IPAddress.Any) ? new IPEndPoint(IPAddress.Loopback, endpoint.Port)
        : endpoint.Address.Equals(IPAddress.IPv6Any) ? new IPEndPoint(IPAddress.IPv6Loopback, endpoint.Port)
        : endpoint;

    private static X509Certificate2? LoadCertificate(ServeOptions o)
    {
        if (o.TlsCertificate is null || o.TlsKey is null)
        {
            return null;
        }

        foreach (string file in new[] { o.TlsCertificate, o.TlsKey })
        {
            if (!File.Exists(file))
            {
                throw new PrlFuseException(file, "no such file (--tls-cert and --tls-key take PEM files)");
            }
        }

        try
        {
            return X509Certificate2.CreateFromPemFile(o.TlsCertificate, o.TlsKey);
        }
        catch (CryptographicException e)
        {
            throw new PrlFuseException(o.TlsCertificate, $"cannot load the TLS certificate with the key {o.TlsKey}: {e.Message.TrimEnd('.')} (both must be PEM, and the key must match the certificate)", e);
        }
    }

    private static int Serve(ServeOptions o, List<IPEndPoint> endpoints)
    {
        // A daemon child's stdout goes to the waiting parent, which shows these lines to the user.
        var notices = o.DaemonChild ? Console.Out : Console.Error;
        DaemonChild? detach = null;
        if (o.DaemonChild)
        {
            Directory.SetCurrentDirectory("/");
            detach = DaemonChild.Begin(o.Log);
        }

        using var certificate = LoadCertificate(o);
        bool readOnly = o.ReadOnly;
        var openOptions = new DiskOpenOptions { CacheBytes = o.CacheBytes, AllowImagesOutsideBundle = o.AllowOutsideImages, ForceShare = o.ForceShare, Format = o.DiskFormat };
        using var disk = DiskServing.Open(o.Disk, openOptions, ref readOnly, "serve", "export current", offersRepair: false, notices);
        foreach (var warning in disk.Warnings)
        {
            notices.WriteLine($"prlfuse: warning: {warning}");
        }

        var exports = NbdExport.FromDisk(disk, readOnly);
        using var server = new NbdServer(exports, new NbdServerOptions
        {
            TlsCertificate = certificate,
            MaxConnections = o.MaxConnections,

            // Console.Error is looked up each time: a daemon's moves to its log once it is ready.
            Log = message => Console.Error.WriteLine($"prlfuse: {message}"),
            Debug = o.Debug ? message => Console.Error.WriteLine($"prlfuse: {message}") : null,
        });
        if (o.Socket is not null)
        {
            if (Encoding.UTF8.GetByteCount(o.Socket) > 107)
            {
                throw new PrlFuseException(o.Socket, "socket path longer than a Unix socket's 107 bytes; give a shorter --socket");
            }

            server.ListenUnix(o.Socket);
        }

        foreach (var endpoint in endpoints)
        {
            server.ListenTcp(endpoint);
        }

        using var stop = new ManualResetEventSlim();
        using var signals = RegisterSignals(stop);
        server.Start();
        Announce(notices, disk, exports, server, o);
        if (detach is not null)
        {
            detach.ReportReady();
        }

        stop.Wait();
        Console.Error.WriteLine("prlfuse: stopping: answering the requests in flight, then closing the disk");
        server.Stop(StopGrace);
        disk.Flush();
        return Program.ExitOk; // disposing the disk flushes, trims and marks the top image clean; a failure there exits 1
    }

    private static void Announce(TextWriter notices, VirtualDisk disk, IReadOnlyList<NbdExport> exports, NbdServer server, ServeOptions o)
    {
        int snapshots = exports.Count - 1;
        string what = $"export current ({(exports[0].ReadOnly ? "read-only" : "read-write")})" + (snapshots > 0 ? $" and {snapshots} snapshot{(snapshots == 1 ? "" : "s")} (read-only)" : "");
        notices.WriteLine($"prlfuse: serving {disk.SourcePath} over NBD{(o.TlsCertificate is null ? "" : " with TLS required")}: {what}");
        if (o.Socket is not null)
        {
            notices.WriteLine($"prlfuse: listening on unix socket {o.Socket}: nbd{(o.TlsCertificate is null ? "" : "s")}+unix:///current?socket={o.Socket}");
        }

        foreach (var endpoint in server.TcpEndPoints)
        {
            string host = endpoint.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{endpoint.Address}]" : endpoint.Address.ToString();
            notices.WriteLine($"prlfuse: listening on TCP {host}:{endpoint.Port}: nbd{(o.TlsCertificate is null ? "" : "s")}://{host}:{endpoint.Port}/current");
        }

        notices.WriteLine(o.DaemonChild
            ? $"prlfuse: the server runs as process {Environment.ProcessId}; 'kill {Environment.ProcessId}' stops it"
            : "prlfuse: Ctrl-C (or SIGTERM) stops the server");
    }

    /// <summary>SIGINT, SIGTERM and SIGHUP stop the server gracefully (the main thread does the stopping).</summary>
    private static IDisposable RegisterSignals(ManualResetEventSlim stop)
    {
        var registrations = new List<PosixSignalRegistration>();
        foreach (var signal in new[] { PosixSignal.SIGINT, PosixSignal.SIGTERM, PosixSignal.SIGHUP })
        {
            registrations.Add(PosixSignalRegistration.Create(signal, context =>
            {
                context.Cancel = true;
                stop.Set();
            }));
        }

        return new Registrations(registrations);
    }

    private sealed class Registrations(List<PosixSignalRegistration> list) : IDisposable
    {
        public void Dispose() => list.ForEach(r => r.Dispose());
    }
}
