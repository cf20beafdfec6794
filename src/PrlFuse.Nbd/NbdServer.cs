using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using PrlFuse.Core;
using PrlFuse.Core.IO;

namespace PrlFuse.Nbd;

/// <summary>How the server runs.</summary>
public sealed record NbdServerOptions
{
    /// <summary>When set, TLS is required: every option but STARTTLS and ABORT is refused until the client starts it.</summary>
    public X509Certificate2? TlsCertificate { get; init; }

    /// <summary>Connections open at once; one more is accepted and closed at once.</summary>
    public int MaxConnections { get; init; } = 64;

    /// <summary>Requests of one connection served at once (clients such as nbdcopy and qemu keep many in flight).</summary>
    public int WorkersPerConnection { get; init; } = 4;

    /// <summary>A client that has not finished the handshake by then is dropped (qemu-nbd's default limit too).</summary>
    public TimeSpan HandshakeTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>A client that takes no reply bytes for this long is dropped (it holds buffers and workers).</summary>
    public TimeSpan SendTimeout { get; init; } = TimeSpan.FromMinutes(2);

    /// <summary>Request buffers held at once by all connections, and by one.</summary>
    public long MaxBufferedBytes { get; init; } = 512L << 20;

    public long MaxConnectionBufferedBytes { get; init; } = 64L << 20;

    /// <summary>Problems worth a line (I/O errors of the disk, internal errors).</summary>
    public Action<string>? Log { get; init; }

    /// <summary>Every connection's events (opened, dropped and why, closed): --debug.</summary>
    public Action<string>? Debug { get; init; }
}

/// <summary>
/// A Network Block Device server over <see cref="NbdExport"/>s: listens on Unix sockets and TCP endpoints, runs each
/// connection on its own thread (see <see cref="NbdConnection"/>), caps how many are open, and stops gracefully: it
/// stops accepting, stops reading new requests, lets those in flight finish and be answered, flushes, and closes.
/// </summary>
public sealed class NbdServer : IDisposable
{
    private readonly List<Listener> _listeners = [];
    private readonly HashSet<NbdConnection> _connections = [];
    private readonly object _lock = new();
    private readonly ManualResetEventSlim _idle = new(true);
    private int _nextId;
    private bool _started;
    private bool _stopping;
    private int _reportedPunchFallback;

    // Damaged clusters already said (image, cluster): a client retries an unreadable block many times.
    private readonly ConcurrentDictionary<(string Image, long Cluster), byte> _reportedDamage = new();

    public NbdServer(IReadOnlyList<NbdExport> exports, NbdServerOptions options)
    {
        if (exports.Count == 0)
        {
            throw new ArgumentException("a server needs at least one export", nameof(exports));
        }

        Exports = exports;
        Options = options;
        Budget = new ByteBudget(options.MaxBufferedBytes);
    }

    /// <summary>The exports; the first is the default one (an empty name).</summary>
    public IReadOnlyList<NbdExport> Exports { get; }

    public NbdServerOptions Options { get; }

    /// <summary>Connections open now (handshake or transmission).</summary>
    public int ConnectionCount
    {
        get
        {
            lock (_lock)
            {
                return _connections.Count;
            }
        }
    }

    internal ByteBudget Budget { get; }

    private sealed record Listener(Socket Socket, string? UnixPath, string Description);

    /// <summary>
    /// Listens on a Unix socket at <paramref name="path"/>, mode 0600 (set before it accepts anyone). A socket left
    /// there by a server that is gone is replaced; one that answers, or anything else at that path, is refused.
    /// </summary>
    public void ListenUnix(string path)
    {
        string full = Path.GetFullPath(path);
        string kind = PathRules.FileKind(full);
        if (kind == "socket")
        {
            if (Answers(new UnixDomainSocketEndPoint(full)))
            {
                throw new PrlFuseException(full, "another server listens on this socket; stop it or choose another --socket path");
            }

            File.Delete(full);
        }
        else if (kind != "missing file")
        {
            throw new PrlFuseException(full, $"exists and is a {kind}, not a socket; choose another --socket path");
        }

        if (Path.GetDirectoryName(full) is { } folder && !Directory.Exists(folder))
        {
            throw new PrlFuseException(full, $"folder {folder} does not exist; create it first or choose another --socket path");
        }

        var socket = OwnerOnlySocket.Listen(full, backlog: 128, "this socket");

        lock (_lock)
        {
            _listeners.Add(new Listener(socket, full, $"unix socket {full}"));
        }
    }

    /// <summary>Listens on a TCP endpoint (port 0: any free port; see <see cref="TcpEndPoints"/>).</summary>
    public void ListenTcp(IPEndPoint endpoint)
    {
        var socket = new Socket(endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            socket.Bind(endpoint);
            socket.Listen(128);
        }
        catch (SocketException e)
        {
            socket.Dispose();
            throw new PrlFuseException(null, $"cannot listen on {endpoint}: {e.Message}", e);
        }

        lock (_lock)
        {
            _listeners.Add(new Listener(socket, null, $"TCP {socket.LocalEndPoint}"));
        }
    }

    /// <summary>Where it listens, one line each ("unix socket PATH", "TCP ADDRESS:PORT").</summary>
    public IReadOnlyList<string> Endpoints
    {
        get
        {
            lock (_lock)
            {
                return [.. _listeners.Select(l => l.Description)];
            }
        }
    }

    /// <summary>The TCP endpoints actually bound (with the port chosen for port 0).</summary>
    public IReadOnlyList<IPEndPoint> TcpEndPoints
    {
        get
        {
            lock (_lock)
            {
                return [.. _listeners.Where(l => l.UnixPath is null).Select(l => (IPEndPoint)l.Socket.LocalEndPoint!)];
            }
        }
    }

    /// <summary>Starts accepting on every listener.</summary>
    public void Start()
    {
        lock (_lock)
        {
            if (_started || _listeners.Count == 0)
            {
                throw new InvalidOperationException(_started ? "the server was started already" : "the server listens nowhere");
            }

            _started = true;
            foreach (var listener in _listeners)
            {
                new Thread(() => AcceptLoop(listener)) { IsBackground = true, Name = "nbd-accept" }.Start();
            }
        }
    }

    /// <summary>
    /// Stops: no new connection; connections in the handshake are closed; the others stop reading requests, answer
    /// those in flight, flush and close. After <paramref name="grace"/>, the rest are closed hard (a client that does
    /// not take its replies). Removes the Unix sockets. Returns once every connection has ended.
    /// </summary>
    public void Stop(TimeSpan grace)
    {
        NbdConnection[] open;
        lock (_lock)
        {
            if (_stopping)
            {
                return;
            }

            _stopping = true;
            foreach (var listener in _listeners)
            {
                listener.Socket.Dispose();
                if (listener.UnixPath is { } path && PathRules.FileKind(path) == "socket")
                {
                    File.Delete(path);
                }
            }

            open = [.. _connections];
        }

        Budget.Close();
        foreach (var connection in open)
        {
            connection.BeginStop();
        }

        if (!_idle.Wait(grace))
        {
            lock (_lock)
            {
                open = [.. _connections];
            }

            Options.Log?.Invoke($"{open.Length} client{(open.Length == 1 ? "" : "s")} did not end within {grace.TotalSeconds:0} s of the stop; closing {(open.Length == 1 ? "it" : "them")}");
            foreach (var connection in open)
            {
                connection.Abort();
            }

            _idle.Wait(TimeSpan.FromSeconds(30));
        }
    }

    public void Dispose()
    {
        Stop(TimeSpan.Zero);
        _idle.Dispose();
    }

    /// <summary>The export a client names: "" is the first (current); a snapshot's GUID may be given in any form.</summary>
    internal NbdExport? FindExport(string name)
    {
        if (name.Length == 0)
        {
            return Exports[0];
        }

        foreach (var export in Exports)
        {
            if (export.Name == name)
            {
                return export;
            }
        }

        if (Guid.TryParse(name, out var guid))
        {
            foreach (var export in Exports)
            {
                if (export.Name != NbdExport.CurrentName && export.View.Id == guid)
                {
                    return export;
                }
            }
        }

        return null;
    }

    /// <summary>True the first time: the host's lack of hole punching is said once per server.</summary>
    internal bool FirstPunchFallback() => Interlocked.Exchange(ref _reportedPunchFallback, 1) == 0;

    /// <summary>True the first time this damaged cluster is met.</summary>
    internal bool FirstDamageReport(string image, long cluster) => _reportedDamage.TryAdd((image, cluster), 0);

    private static bool Answers(EndPoint endpoint)
    {
        using var probe = new Socket(endpoint.AddressFamily, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            probe.Connect(endpoint);
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    private void AcceptLoop(Listener listener)
    {
        while (true)
        {
            Socket socket;
            try
            {
                socket = listener.Socket.Accept();
            }
            catch (SocketException) when (Volatile.Read(ref _stopping))
            {
                return;
            }
            catch (ObjectDisposedException)
            {
                return;
            }
            catch (SocketException e)
            {
                // Out of descriptors and the like: say so, breathe, go on; the server itself must not end.
                Options.Log?.Invoke($"accepting a connection on {listener.Description} failed: {e.Message}");
                Thread.Sleep(100);
                continue;
            }

            Admit(socket, listener);
        }
    }

    private void Admit(Socket socket, Listener listener)
    {
        NbdConnection connection;
        lock (_lock)
        {
            if (_stopping || _connections.Count >= Options.MaxConnections)
            {
                Options.Debug?.Invoke(_stopping ? "refused a connection: stopping" : $"refused a connection: {Options.MaxConnections} are open already (--max-connections)");
                socket.Dispose();
                return;
            }

            connection = new NbdConnection(this, socket, ++_nextId, listener.UnixPath is null);
            _connections.Add(connection);
            _idle.Reset();
        }

        var thread = new Thread(() =>
        {
            try
            {
                connection.Run();
            }
            finally
            {
                lock (_lock)
                {
                    _connections.Remove(connection);
                    if (_connections.Count == 0)
                    {
                        _idle.Set();
                    }
                }
            }
        })
        { IsBackground = true, Name = $"nbd-{connection.Id}" };
        thread.Start();
    }
}
