using System.Globalization;
using System.Text.Json;
using PrlFuse.Core.Engine;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.Management;

internal static class ManagementTestSupport
{
    /// <summary>QEMU's raw view of a chain of parallels images (top first): as long as QEMU says the top is.</summary>
    public static byte[] QemuView(IReadOnlyList<string> topFirst, string scratch)
    {
        string raw = Path.Combine(scratch, $"qemu-view-{Guid.NewGuid():N}.raw");
        Qemu.ConvertChain(topFirst, raw);
        byte[] bytes = File.ReadAllBytes(raw);
        File.Delete(raw);
        return bytes;
    }

    /// <summary>qemu-img info's virtual size of a parallels image.</summary>
    public static long QemuVirtualSize(string image)
    {
        var r = Qemu.Info("--output=json", "-f", "parallels", image);
        Assert.True(r.ExitCode == 0, r.Stderr);
        using var doc = JsonDocument.Parse(r.Stdout);
        return doc.RootElement.GetProperty("virtual-size").GetInt64();
    }

    /// <summary>Every image of the chain passes qemu-img check with nothing found and has the size.</summary>
    public static void AssertQemuCleanAndSized(QemuChain chain, long size)
    {
        foreach (var level in chain.Levels)
        {
            string image = Path.Combine(chain.Bundle, level.Files[0]);
            Qemu.AssertClean(image);
            Assert.Equal(size, QemuVirtualSize(image));
        }
    }

    /// <summary>Every view we serve equals QEMU's view of the same chain, and <paramref name="expected"/> (level by level, zero-extended or cut to the disk size).</summary>
    public static void AssertViews(QemuChain chain, IReadOnlyList<byte[]> expected, long size, string scratch, string what)
    {
        using var disk = Reopen.Retrying(() => VirtualDisk.Open(chain.Bundle));
        Assert.Equal(size, disk.Size);
        for (int level = 0; level < chain.Levels.Count; level++)
        {
            var view = disk.Views[chain.Levels[level].Guid];
            byte[] ours = new byte[size];
            Assert.Equal(ours.Length, view.Read(ours, 0));
            byte[] qemu = QemuView(chain.ChainFiles(level, 0), scratch);
            Assert.Equal(size, qemu.LongLength);
            AssertSame(qemu, ours, $"{what}: level {level}, ours against QEMU's");
            byte[] model = new byte[size];
            expected[level].AsSpan(0, (int)Math.Min(size, expected[level].Length)).CopyTo(model);
            AssertSame(model, ours, $"{what}: level {level}, against the view before");
        }
    }

    public static void AssertSame(byte[] expected, byte[] actual, string what)
    {
        Assert.True(expected.Length == actual.Length, $"{what}: length {actual.Length}, expected {expected.Length}");
        int at = expected.AsSpan().CommonPrefixLength(actual);
        Assert.True(at == expected.Length, $"{what}: first difference at byte {at.ToString(CultureInfo.InvariantCulture)}");
    }

    /// <summary>Every level's view as QEMU reads it now.</summary>
    public static List<byte[]> OracleViews(QemuChain chain, string scratch) =>
        [.. Enumerable.Range(0, chain.Levels.Count).Select(l => QemuView(chain.ChainFiles(l, 0), scratch))];
}
