using System.Globalization;
using PrlFuse.Core;

namespace PrlFuse.Cli.Commands;

internal static class Sizes
{
    /// <summary>Parses "64M", "1G", "4096", "0".</summary>
    public static long Parse(string text, string option)
    {
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
            throw new PrlFuseException(null, $"{option} \"{text}\" is not a size (examples: 0, 4096, 64M, 1G)");
        }

        return n * unit;
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
