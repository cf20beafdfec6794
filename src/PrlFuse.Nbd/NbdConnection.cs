using System.Net.Security;
using System.Net.Sockets;
using PrlFuse.Nbd.Protocol;

namespace PrlFuse.Nbd;

/// <summary>
/// One client, on its own thread: the fixed newstyle handshake, then transmission. Every byte a client sends is
/// taken as hostile: lengths are checked before anything is allocated for them, option data and request sizes are
/// capped, and what cannot be answered (garbage where a magic number belongs, data too large to skip) drops the
/// connection, never the server. In transmission this thread reads and checks requests, sends itself the reads the
/// page cache holds, and hands the rest to a few workers, so requests are served concurrently (clients keep many in
/// flight); replies are written whole, one at a time, under one lock; buffers come from the shared pool and go back
/// after the reply. The handshake and transmission live in the two other files of this class.
/// </summary>
internal sealed partial class NbdConnection
{
    private const int QueueCapacity = 32;

    /// <summary>A READ's reply goes in at most this many chunks; what is left after that goes as data.</summary>
    private const int MaxReadChunks = 64;

    /// <summary>Extents per metadata context in one BLOCK_STATUS reply; the client asks again from where it ends.</summary>
    private const int MaxDescriptors = 1024;

    /// <summary>Host ranges one READ may be sent as by reference; more (a very fragmented image) and it is copied.</summary>
    private const int MaxHostPieces = 1024;

    /// <summary>Reads from this size on go by reference on plain sockets; smaller ones are copied (and use the block cache).</summary>
    private const int SendFileMinBytes = 16 * 1024;

    private const int ScratchBytes = (2 * (NbdStructuredReplyHeader.Size + 4 + (MaxDescriptors * 8))) + 1024;

    private static readonly byte[] s_zeros = new byte[1 << 20];

    private readonly NbdServer _server;
    private readonly Socket _socket;
    private readonly object _stateLock = new();
    private readonly object _sendLock = new();
    private readonly byte[] _requestHeader = new byte[NbdRequestHeader.Size];
    private Stream _stream;
    private SslStream? _tls;
    private bool _inTransmission;
    private bool _stopping;
    private bool _aborted;
    private volatile bool _broken;
    private bool _noZeroes;
    private bool _structured;
    private NbdExport? _export;
    private uint[] _contexts = [];
    private NbdExport? _contextExport;
    private int _written;
    private ByteBudget? _budget;

    public NbdConnection(NbdServer server, Socket socket, int id, bool tcp)
    {
        _server = server;
        _socket = socket;
        Id = id;
        if (tcp)
        {
            // Each reply is written whole; Nagle would only hold the last piece back for the client's ACK.
            socket.NoDelay = true;
        }

        // Replies go by sendfile on the socket's descriptor too, which the socket's own timeout bounds while it blocks.
        socket.Blocking = true;
        _stream = new NetworkStream(socket, ownsSocket: false);
    }

    public int Id { get; }

    private NbdServerOptions Options => _server.Options;

    public void Run()
    {
        var timer = new Timer(_ => HandshakeExpired(), null, Options.HandshakeTimeout, Timeout.InfiniteTimeSpan);
        try
        {
            bool transmit = Handshake();
            timer.Dispose();
            if (!transmit)
            {
                return;
            }

            lock (_stateLock)
            {
                if (_stopping || _aborted)
                {
                    return;
                }

                _inTransmission = true;
            }

            Debug($"serves export {_export!.Name}{(_structured ? " with structured replies" : "")}{(_tls is null ? "" : " over TLS")}");
            _socket.SendTimeout = (int)Options.SendTimeout.TotalMilliseconds;
            Transmit(_export);
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
        {
            Debug($"connection lost: {e.Message}");
        }
#pragma warning disable CA1031 // a client's connection must never take the server down: anything else is a bug, said and survived
        catch (Exception e)
#pragma warning restore CA1031
        {
            Options.Log?.Invoke($"internal error serving client {Id}: {e}");
        }
        finally
        {
            timer.Dispose();
            Close();
        }
    }

    /// <summary>The server stops: a handshake ends now; in transmission no more requests are read (see <see cref="NbdServer.Stop"/>).</summary>
    public void BeginStop()
    {
        lock (_stateLock)
        {
            _stopping = true;
            if (!_inTransmission)
            {
                Abort();
                return;
            }
        }

        try
        {
            // The reader sees the end of the stream; replies still go out.
            _socket.Shutdown(SocketShutdown.Receive);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
    }

    /// <summary>Closes the socket under everything that waits on it.</summary>
    public void Abort()
    {
        lock (_stateLock)
        {
            _aborted = true;
        }

        try
        {
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }

        _socket.Dispose();
    }

    private void HandshakeExpired()
    {
        lock (_stateLock)
        {
            if (_inTransmission || _aborted)
            {
                return;
            }
        }

        Debug($"dropped: no export chosen within {Options.HandshakeTimeout.TotalSeconds:0} s");
        Abort();
    }

    private void Close()
    {
        if (_tls is not null && !_aborted)
        {
            try
            {
                _tls.ShutdownAsync().Wait(TimeSpan.FromSeconds(1));
            }
#pragma warning disable CA1031 // close_notify is a courtesy; the socket closes either way
            catch (Exception)
#pragma warning restore CA1031
            {
            }
        }

        try
        {
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }

        _stream.Dispose();
        _socket.Dispose();
        Debug("closed");
    }

    private void Debug(string message) => Options.Debug?.Invoke($"client {Id}: {message}");
}
