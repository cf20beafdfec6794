using System.Net.Sockets;

namespace PrlFuse.Core.IO;

/// <summary>A listening Unix stream socket that only its owner (and root) may connect to.</summary>
public static class OwnerOnlySocket
{
    /// <summary>
    /// Binds <paramref name="path"/>, makes it owner-only and listens. Connecting needs write permission on the socket
    /// and nobody can connect before listen(), so no client gets in between bind and the mode change. A failure is one
    /// error naming the path and <paramref name="what"/> ("the mount's control socket").
    /// </summary>
    public static Socket Listen(string path, int backlog, string what)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            socket.Bind(new UnixDomainSocketEndPoint(path));
            File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            socket.Listen(backlog);
            return socket;
        }
        catch (SocketException e)
        {
            socket.Dispose();
            throw new PrlFuseException(path, $"cannot listen on {what}: {e.Message}", e);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }
}
