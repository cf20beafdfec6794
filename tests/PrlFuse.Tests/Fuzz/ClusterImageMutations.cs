namespace PrlFuse.Tests.Fuzz;

/// <summary>
/// Mutations every cluster-based image format shares (qcow2, QED): values worth trying in a field, bit flips weighted
/// towards the metadata at the start of the file, and a cluster copied over another. Each takes the image's cluster
/// size, as the format's own mutator read it from the bytes as they are now.
/// </summary>
internal static class ClusterImageMutations
{
    /// <summary>Values worth trying in a field: caps, cluster offsets in and past the file, neighbours of the current value.</summary>
    public static ulong Value(Random r, ulong[] interesting, int clusterBits, long length, ulong current)
    {
        long clusters = Math.Max(1, length >> clusterBits);
        return r.Next(12) switch
        {
            < 4 => interesting[r.Next(interesting.Length)],
            4 => (ulong)(r.NextInt64(clusters + 2) << clusterBits),
            5 => (ulong)length + (ulong)r.Next(-2, 3),
            6 => current + (ulong)r.Next(-3, 4),
            7 => r.Next(2) == 0 ? current * 2 : current / 2,
            8 => current ^ (1UL << r.Next(64)),
            9 => (ulong)(r.NextInt64(clusters) << clusterBits) + (ulong)r.Next(1, 512),
            _ => (ulong)r.NextInt64() ^ ((ulong)r.Next() << 40),
        };
    }

    /// <summary>One to eight bits flipped: half in the first 256 KiB (header, extensions, small images' tables), half anywhere.</summary>
    public static string BitFlips(byte[] d, Random r)
    {
        if (d.Length == 0)
        {
            return "bitflip: empty";
        }

        int n = r.Next(1, 9);
        var where = new List<long>();
        for (int i = 0; i < n; i++)
        {
            long limit = r.Next(2) == 0 ? Math.Min(d.Length, 4 << 16) : d.Length;
            long pos = r.NextInt64(Math.Max(1, limit));
            d[pos] ^= (byte)(1 << r.Next(8));
            where.Add(pos);
        }

        return $"bitflip at {string.Join(",", where)}";
    }

    /// <summary>One cluster copied over another (a table over data, data over a table...).</summary>
    public static string Splice(byte[] d, Random r, int clusterBits)
    {
        long clusterBytes = 1L << clusterBits;
        long length = d.Length;
        if (length < 2 * clusterBytes)
        {
            return "splice: too short";
        }

        long clusters = Math.Max(1, length >> clusterBits);
        long from = r.NextInt64(clusters) << clusterBits;
        long to = r.NextInt64(clusters) << clusterBits;
        int n = (int)Math.Min(clusterBytes, Math.Min(length - from, length - to));
        Array.Copy(d, from, d, to, n);
        return $"splice cluster at {from} over {to}";
    }
}
