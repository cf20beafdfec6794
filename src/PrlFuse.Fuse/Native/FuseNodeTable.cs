using System.Text;

namespace PrlFuse.Fuse.Native;

/// <summary>
/// The node numbers the low-level API speaks in, each standing for one path below the mountpoint ("/" is node 1, as
/// the kernel expects). A number is made by the first lookup of its path and kept for the life of the mount (forget is
/// not tracked): a request finds its path by indexing an array, with no lock and no string built.
/// </summary>
internal sealed class FuseNodeTable
{
    public const ulong RootNode = 1;

    private readonly Lock _lock = new();
    private readonly Dictionary<string, ulong> _byPath = new(StringComparer.Ordinal);
    private byte[][] _paths; // index = node; 0 unused
    private int _count;

    public FuseNodeTable()
    {
        _paths = new byte[16][];
        _paths[0] = [];
        _paths[RootNode] = "/"u8.ToArray();
        _byPath["/"] = RootNode;
        _count = 2;
    }

    /// <summary>The path of <paramref name="node"/>, or an empty span for a number never given out.</summary>
    public ReadOnlySpan<byte> PathOf(ulong node)
    {
        var paths = Volatile.Read(ref _paths);
        return node < (ulong)paths.Length && paths[node] is { } path ? path : default;
    }

    /// <summary>The node of <paramref name="path"/>, made if it has none yet.</summary>
    public ulong NodeOf(ReadOnlySpan<byte> path)
    {
        string key = Encoding.UTF8.GetString(path);
        lock (_lock)
        {
            if (_byPath.TryGetValue(key, out ulong node))
            {
                return node;
            }

            var paths = _paths;
            if (_count == paths.Length)
            {
                // Readers index the array they read; a grown copy is published whole.
                var grown = new byte[paths.Length * 2][];
                Array.Copy(paths, grown, paths.Length);
                paths = grown;
            }

            node = (ulong)_count;
            paths[node] = path.ToArray();
            _count++;
            Volatile.Write(ref _paths, paths);
            _byPath[key] = node;
            return node;
        }
    }

    /// <summary>Writes "<paramref name="parent"/>/<paramref name="name"/>" into <paramref name="destination"/>; the length, or -1 if it does not fit.</summary>
    public static int Join(ReadOnlySpan<byte> parent, ReadOnlySpan<byte> name, Span<byte> destination)
    {
        int parentLength = parent.Length == 1 && parent[0] == (byte)'/' ? 0 : parent.Length;
        int length = parentLength + 1 + name.Length;
        if (length > destination.Length)
        {
            return -1;
        }

        parent[..parentLength].CopyTo(destination);
        destination[parentLength] = (byte)'/';
        name.CopyTo(destination[(parentLength + 1)..]);
        return length;
    }
}
