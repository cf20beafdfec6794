using System.Text.Json;
using PrlFuse.Core.Engine;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.Formats.Qcow2;

/// <summary>
/// qemu-img and qemu-io on qcow2 images, run in the image's folder (QEMU 7.2 resolves a data_file name from the current
/// folder), and the comparison of our view of an image with QEMU's: every byte, random unaligned reads, data ranges.
/// </summary>
internal static class Qcow2Oracle
{
    public static void Img(string folder, params string[] args) => ProcessRunner.Run("qemu-img", args, workingDirectory: folder);

    /// <summary>qemu-io -f FORMAT -c COMMAND... IMAGE in <paramref name="folder"/>.</summary>
    public static void Io(string folder, string format, string image, params string[] commands)
    {
        var args = new List<string> { "-f", format };
        foreach (string c in commands)
        {
            args.AddRange(["-c", c]);
        }

        args.Add(image);
        ProcessRunner.Run("qemu-io", args, workingDirectory: folder);
    }

    /// <summary>QEMU's view of <paramref name="image"/> with its backing chain: qemu-img convert -O raw.</summary>
    public static byte[] QemuView(string folder, string image)
    {
        string raw = Path.Combine(folder, "qemu-view.raw");
        Img(folder, "convert", "-O", "raw", image, raw);
        try
        {
            return File.ReadAllBytes(raw);
        }
        finally
        {
            File.Delete(raw);
        }
    }

    /// <summary>The guest ranges qemu-img map calls data, adjacent ones joined.</summary>
    public static List<(long Start, long End)> QemuDataRanges(string folder, string image)
    {
        var result = ProcessRunner.Run("qemu-img", ["map", "--output=json", image], workingDirectory: folder);
        using var json = JsonDocument.Parse(result.Stdout);
        var entries = new List<QemuMap.Entry>();
        foreach (var e in json.RootElement.EnumerateArray())
        {
            long? offset = e.TryGetProperty("offset", out var o) ? o.GetInt64() : null;
            QemuMap.Add(entries, new QemuMap.Entry(e.GetProperty("start").GetInt64(), e.GetProperty("length").GetInt64(), e.GetProperty("depth").GetInt32(), e.GetProperty("data").GetBoolean(), offset));
        }

        return QemuMap.DataRanges(entries);
    }

    /// <summary>Our data ranges of a view, walked with SeekData/SeekHole.</summary>
    public static List<(long Start, long End)> OurDataRanges(SnapshotView view)
    {
        var ranges = new List<(long Start, long End)>();
        for (long data = view.SeekData(0); data >= 0;)
        {
            long hole = view.SeekHole(data);
            Assert.True(hole > data, $"SEEK_DATA found data at {data} but SEEK_HOLE finds a hole there");
            ranges.Add((data, hole));
            data = hole < view.Size ? view.SeekData(hole) : -1;
        }

        return ranges;
    }

    /// <summary>
    /// Our view of <paramref name="image"/> (in <paramref name="folder"/>) equals QEMU's byte for byte, read whole and
    /// in random unaligned pieces, and SEEK_DATA/SEEK_HOLE find the data ranges qemu-img map reports.
    /// </summary>
    public static void AssertSameAsQemu(string folder, string image, int seed = 1, bool compareDataRanges = true)
    {
        byte[] expected = QemuView(folder, image);
        using var disk = VirtualDisk.Open(Path.Combine(folder, image), new DiskOpenOptions { CacheBytes = 1 << 20 });
        var view = disk.Top;
        Assert.Equal(expected.LongLength, view.Size);
        byte[] ours = new byte[expected.Length];
        Assert.Equal(ours.Length, view.Read(ours, 0));
        AssertEqualBytes(expected, ours, 0);

        var random = new Random(seed);
        byte[] piece = new byte[300_000];
        for (int i = 0; i < 400; i++)
        {
            long offset = random.NextInt64(expected.Length);
            int length = (int)Math.Min(random.Next(1, i % 10 == 0 ? piece.Length : 9000), expected.Length - offset);
            Assert.Equal(length, view.Read(piece.AsSpan(0, length), offset));
            AssertEqualBytes(expected.AsSpan((int)offset, length).ToArray(), piece.AsSpan(0, length).ToArray(), offset);
        }

        if (compareDataRanges)
        {
            Assert.Equal(QemuDataRanges(folder, image), OurDataRanges(view));
        }
    }

    private static void AssertEqualBytes(byte[] expected, byte[] actual, long at)
    {
        int differs = expected.AsSpan().CommonPrefixLength(actual);
        Assert.True(differs == expected.Length, $"guest byte {at + differs} differs from QEMU's: ours {(differs < actual.Length ? actual[differs] : -1)}, qemu's {(differs < expected.Length ? expected[differs] : -1)}");
    }
}
