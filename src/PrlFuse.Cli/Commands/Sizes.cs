using System.Globalization;

namespace PrlFuse.Cli.Commands;

internal static class Sizes
{
    public const long DefaultCacheBytes = 64L << 20;

    /// <summary>The block cache is memory the daemon allocates up front: at most half the machine's, and 16 GiB.</summary>
    public static long MaxCacheBytes => Math.Min(16L << 30, GC.GetGCMemoryInfo().TotalAvailableMemoryBytes / 2);

    /// <summary>--cache-size: a size from 0 to <see cref="MaxCacheBytes"/>; FormatException with the range otherwise.</summary>
    public static long ParseCacheSize(string text)
    {
        long max = MaxCacheBytes;
        if (!TryParse(text, out long bytes))
        {
            throw new FormatException("is not a size (examples: 0, 4096, 64M, 1G)");
        }

        if (bytes > max)
        {
            throw new FormatException($"is too large: the cache may take 0 to {Human(max)} (half the memory, at most 16 GiB)");
        }

        return bytes;
    }

    /// <summary>Parses "64M", "1G", "4096", "0".</summary>
    public static bool TryParse(string text, out long bytes)
    {
        bytes = 0;
        string t = text.Trim();
        long unit = 1;
        if (t.Length > 0 && char.IsLetter(t[^1]))
        {
            unit = char.ToUpperInvariant(t[^1]) switch
            {
                'K' => 1L << 10,
                'M' => 1L << 20,
                'G' => 1L << 30,
                'T' => 1L << 40,
                _ => 0,
            };
            t = t[..^1];
        }

        if (unit == 0 || !long.TryParse(t, NumberStyles.None, CultureInfo.InvariantCulture, out long n) || n > long.MaxValue / unit)
        {
            return false;
        }

        bytes = n * unit;
        return true;
    }

    public static string Human(long bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
        double v = bytes;
        int u = 0;
        while (v >= 1024 && u < units.Length - 1)
        {
            v /= 1024;
            u++;
        }

        return u == 0 ? $"{bytes} B" : string.Create(CultureInfo.InvariantCulture, $"{v:0.##} {units[u]}");
    }
}
