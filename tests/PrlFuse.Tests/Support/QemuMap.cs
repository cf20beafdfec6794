using System.Globalization;
using System.Text.Json;

namespace PrlFuse.Tests.Support;

/// <summary>
/// QEMU's allocation map of a chain (`qemu-img map --output=json`), the oracle for our allocation queries: entries in
/// guest order, adjacent ones merged as qemu merges them (same kind, same depth, contiguous host offsets for data).
/// </summary>
public static class QemuMap
{
    public readonly record struct Entry(long Start, long Length, int Depth, bool Data, long? Offset)
    {
        public long End => Start + Length;
    }

    /// <summary>The map of a chain of Parallels images (top first), shifted by <paramref name="shift"/> bytes.</summary>
    public static List<Entry> Of(IReadOnlyList<string> topFirst, long shift = 0)
    {
        var result = ProcessRunner.Run("qemu-img", ["map", "--output=json", "--image-opts", Qemu.ChainOptions(topFirst)]);
        using var json = JsonDocument.Parse(result.Stdout);
        var entries = new List<Entry>();
        foreach (var e in json.RootElement.EnumerateArray())
        {
            long? offset = e.TryGetProperty("offset", out var o) ? o.GetInt64() : null;
            Add(entries, new Entry(e.GetProperty("start").GetInt64() + shift, e.GetProperty("length").GetInt64(), e.GetProperty("depth").GetInt32(), e.GetProperty("data").GetBoolean(), offset));
        }

        return entries;
    }

    /// <summary>The map of level <paramref name="level"/> (0 = root) of <paramref name="chain"/>, every storage, in guest offsets.</summary>
    public static List<Entry> Of(QemuChain chain, int level)
    {
        var all = new List<Entry>();
        for (int s = 0; s < chain.Storages.Count; s++)
        {
            all.AddRange(Of(chain.ChainFiles(level, s), chain.Storages[s].Start * 512));
        }

        return all;
    }

    /// <summary>Guest ranges that hold data, adjacent ones joined (what SEEK_DATA/SEEK_HOLE walk).</summary>
    public static List<(long Start, long End)> DataRanges(IEnumerable<Entry> entries)
    {
        var ranges = new List<(long Start, long End)>();
        foreach (var e in entries.Where(e => e.Data))
        {
            if (ranges.Count > 0 && ranges[^1].End == e.Start)
            {
                ranges[^1] = (ranges[^1].Start, e.End);
            }
            else
            {
                ranges.Add((e.Start, e.End));
            }
        }

        return ranges;
    }

    /// <summary>Appends <paramref name="entry"/>, merged into the last one when qemu would have merged them.</summary>
    public static void Add(List<Entry> entries, Entry entry)
    {
        if (entries.Count > 0)
        {
            var last = entries[^1];
            bool mergeable = last.End == entry.Start && last.Data == entry.Data
                && (!entry.Data ? true : last.Depth == entry.Depth && last.Offset + last.Length == entry.Offset);
            if (mergeable)
            {
                entries[^1] = last with { Length = last.Length + entry.Length };
                return;
            }
        }

        entries.Add(entry);
    }

    /// <summary>Allocated bytes of a host file (st_blocks * 512), as du counts them.</summary>
    public static long HostAllocatedBytes(string path) =>
        long.Parse(ProcessRunner.Run("stat", ["-c", "%b", path]).Stdout.Trim(), CultureInfo.InvariantCulture) * 512;
}
