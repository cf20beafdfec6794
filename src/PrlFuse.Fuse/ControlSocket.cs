using System.Buffers.Binary;
using System.Globalization;
using System.Net.Sockets;
using System.Text;
using PrlFuse.Core;
using PrlFuse.Core.IO;

namespace PrlFuse.Fuse;

/// <summary>What a daemon answered on its control socket: its text, or its one-line error.</summary>
public sealed record ControlReply(bool Ok, string Text);

/// <summary>
/// The private control socket of a read-write mount's daemon, through which commands act on the mounted disk (a live
/// snapshot). One request per connection: a line "VERB" or "VERB\tARGUMENT", answered with "ok\tTEXT" or
/// "error\tMESSAGE". The socket lives in a folder only the daemon's user may enter (0700), is itself 0600, and the
/// daemon answers only a peer of its own uid or root (SO_PEERCRED).
/// </summary>
public static class ControlSocket
{
    /// <summary>Take a snapshot; the argument, when given, is its name. Answers the new GUID.</summary>
    public const string SnapshotCreate = "snapshot-create";

    internal const string OkWord = "ok";
    internal const string ErrorWord = "error";

    /// <summary>Longest request or reply read: a name is one line of text.</summary>
    internal const int MaxMessageBytes = 64 * 1024;

    /// <summary>The folder a daemon of user <paramref name="uid"/> puts its socket in: in $XDG_RUNTIME_DIR, else the temporary folder.</summary>
    public static string Folder(uint uid)
    {
        string runtime = Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR") is { Length: > 0 } r && Directory.Exists(r) ? r : Path.GetTempPath();
        return Path.Combine(runtime, $"prlfuse-{uid.ToString(CultureInfo.InvariantCulture)}");
    }

    /// <summary>The socket's file name for the daemon <paramref name="pid"/>.</summary>
    public static string FileName(int pid) => $"mount-{pid.ToString(CultureInfo.InvariantCulture)}.sock";

    /// <summary>
    /// The socket the daemon <paramref name="pid"/> listens on, or null when it has none (an older prlfuse). Found among
    /// the daemon's own sockets through /proc (its environment, and so its folder, may differ from ours), else at the
    /// path this process would use.
    /// </summary>
    public static string? Find(int pid)
    {
        string name = FileName(pid);
        var inodes = new HashSet<string>(StringComparer.Ordinal);
        try
        {
            foreach (var fd in Directory.EnumerateFileSystemEntries($"/proc/{pid}/fd"))
            {
                if (new FileInfo(fd).LinkTarget is { } target && target.StartsWith("socket:[", StringComparison.Ordinal) && target.EndsWith(']'))
                {
                    inodes.Add(target["socket:[".Length..^1]);
                }
            }

            // Num RefCount Protocol Flags Type St Inode Path
            foreach (var line in File.ReadLines("/proc/net/unix").Skip(1))
            {
                var fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                if (fields.Length >= 8 && inodes.Contains(fields[6]) && Path.GetFileName(fields[7]) == name && fields[7].StartsWith('/'))
                {
                    return fields[7];
                }
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Not ours to look at, or gone: try where we would put it.
        }

        string guess = Path.Combine(Folder(Posix.GetEffectiveUid()), name);
        return PathRules.FileKind(guess) == "socket" ? guess : null;
    }

    /// <summary>
    /// Sends one request and waits up to <paramref name="timeout"/> for the reply. Throws <see cref="SocketException"/>
    /// or <see cref="IOException"/> when the daemon cannot be reached or does not answer.
    /// </summary>
    public static ControlReply Ask(string socketPath, string verb, string? argument, TimeSpan timeout)
    {
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        socket.SendTimeout = 10_000;
        socket.ReceiveTimeout = (int)Math.Min(int.MaxValue, timeout.TotalMilliseconds);
        socket.Connect(new UnixDomainSocketEndPoint(socketPath));
        string request = argument is null ? verb : verb + "\t" + argument;
        socket.Send(Encoding.UTF8.GetBytes(request + "\n"));
        socket.Shutdown(SocketShutdown.Send);
        string reply = ReadLine(socket) ?? throw new IOException("the daemon closed the connection without answering");
        int tab = reply.IndexOf('\t', StringComparison.Ordinal);
        string word = tab < 0 ? reply : reply[..tab];
        string text = tab < 0 ? "" : reply[(tab + 1)..];
        return word switch
        {
            OkWord => new ControlReply(true, text),
            ErrorWord => new ControlReply(false, text),
            _ => throw new IOException($"the daemon answered something unknown: {reply}"),
        };
    }

    /// <summary>Reads up to the first newline (or the end), at most <see cref="MaxMessageBytes"/>; null when nothing came.</summary>
    internal static string? ReadLine(Socket socket)
    {
        var buffer = new byte[MaxMessageBytes];
        int used = 0;
        while (used < buffer.Length)
        {
            int n = socket.Receive(buffer, used, buffer.Length - used, SocketFlags.None);
            if (n == 0)
            {
                break;
            }

            int newline = Array.IndexOf(buffer, (byte)'\n', used, n);
            used += n;
            if (newline >= 0)
            {
                return Encoding.UTF8.GetString(buffer, 0, newline);
            }
        }

        return used == 0 ? null : Encoding.UTF8.GetString(buffer, 0, used);
    }
}

/// <summary>
/// A daemon's end of its <see cref="ControlSocket"/>: one thread accepts and serves requests one at a time with
/// <c>handle(verb, argument)</c>, whose text is the reply (a <see cref="PrlFuseException"/> becomes the error reply).
/// </summary>
public sealed class ControlServer : IDisposable
{
    private const int SolSocket = 1;
    private const int SoPeerCred = 17;

    private readonly Socket _listener;
    private readonly Func<string, string?, string> _handle;
    private readonly Action<string> _log;
    private volatile bool _stopped;

    private ControlServer(Socket listener, string path, Func<string, string?, string> handle, Action<string> log)
    {
        _listener = listener;
        SocketPath = path;
        _handle = handle;
        _log = log;
    }

    public string SocketPath { get; }

    /// <summary>
    /// Makes the private folder (or checks the one there: a real folder of ours, 0700), listens on this process's socket
    /// in it, and starts serving. Throws <see cref="PrlFuseException"/> when the folder is not private or the socket
    /// cannot be made.
    /// </summary>
    public static ControlServer Start(Func<string, string?, string> handle, Action<string> log)
    {
        uint uid = Posix.GetEffectiveUid();
        string folder = ControlSocket.Folder(uid);
        if (PathRules.FolderOwnerAndMode(folder) is null && PathRules.FileKind(folder) == "missing file")
        {
            Directory.CreateDirectory(folder, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }

        var (owner, mode) = PathRules.FolderOwnerAndMode(folder)
            ?? throw new PrlFuseException(folder, "is not a folder; remove it so the mount's control socket can be made there");
        if (owner != uid || (mode & 0x3F) != 0)
        {
            throw new PrlFuseException(folder, $"is not private to this user (owner uid {owner}, mode {Convert.ToString(mode, 8)}); remove it so a private one is made");
        }

        string path = Path.Combine(folder, ControlSocket.FileName(Environment.ProcessId));

        // A socket of a dead process that had our PID.
        File.Delete(path);
        var socket = OwnerOnlySocket.Listen(path, backlog: 8, "the mount's control socket");

        var server = new ControlServer(socket, path, handle, log);
        new Thread(server.AcceptLoop) { IsBackground = true, Name = "prlfuse-control" }.Start();
        return server;
    }

    private void AcceptLoop()
    {
        while (!_stopped)
        {
            Socket client;
            try
            {
                client = _listener.Accept();
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                if (_stopped)
                {
                    return;
                }

                Thread.Sleep(100);
                continue;
            }

            using (client)
            {
                try
                {
                    Serve(client);
                }
                catch (Exception e) when (e is SocketException or IOException or ObjectDisposedException)
                {
                    _log($"control socket: {e.Message}");
                }
            }
        }
    }

    private void Serve(Socket client)
    {
        client.ReceiveTimeout = 10_000;
        client.SendTimeout = 10_000;
        uint peer = PeerUid(client);
        if (peer != Posix.GetEffectiveUid() && peer != 0)
        {
            Reply(client, ControlSocket.ErrorWord, $"refused: uid {peer} does not own this mount");
            return;
        }

        string? request = ControlSocket.ReadLine(client);
        if (request is null)
        {
            return;
        }

        int tab = request.IndexOf('\t', StringComparison.Ordinal);
        string verb = tab < 0 ? request : request[..tab];
        string? argument = tab < 0 ? null : request[(tab + 1)..];
        try
        {
            Reply(client, ControlSocket.OkWord, _handle(verb, argument));
        }
        catch (PrlFuseException e)
        {
            Reply(client, ControlSocket.ErrorWord, e.Message);
        }
#pragma warning disable CA1031 // the daemon keeps serving its mount whatever one request did; the client gets the reason
        catch (Exception e)
#pragma warning restore CA1031
        {
            _log($"control request {verb} failed: {e}");
            Reply(client, ControlSocket.ErrorWord, $"the mount's daemon failed: {e.Message}");
        }
    }

    /// <summary>The peer's uid (struct ucred: pid, uid, gid), or uint.MaxValue when the kernel does not say.</summary>
    private static uint PeerUid(Socket client)
    {
        Span<byte> credentials = stackalloc byte[12];
        int n = client.GetRawSocketOption(SolSocket, SoPeerCred, credentials);
        return n >= 8 ? BinaryPrimitives.ReadUInt32LittleEndian(credentials[4..]) : uint.MaxValue;
    }

    private static void Reply(Socket client, string word, string text)
    {
        // A reply is one line: a message with a newline in it would end early.
        string line = word + "\t" + text.Replace('\n', ' ').Replace('\r', ' ') + "\n";
        client.Send(Encoding.UTF8.GetBytes(line));
    }

    public void Dispose()
    {
        _stopped = true;
        try
        {
            File.Delete(SocketPath);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }

        _listener.Dispose();
    }
}
