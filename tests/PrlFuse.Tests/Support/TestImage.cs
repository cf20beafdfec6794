using System.Buffers.Binary;
using System.Globalization;
using System.Security.Cryptography;

namespace PrlFuse.Tests.Support;

/// <summary>Images built by qemu-img/qemu-io, and byte surgery to corrupt them on purpose.</summary>
internal static class TestImage
{
    public const int ClusterBytes = 64 * 1024;
    public const long SizeBytes = 8L << 20;

    /// <summary>An 8 MiB image with 64 KiB clusters: clusters 0-5 written whole with distinct patterns, cluster 7 in part.</summary>
    public static string Create(string folder, string name = "a.hds")
    {
        string path = Path.Combine(folder, name);
        Qemu.Create(path, SizeBytes.ToString(CultureInfo.InvariantCulture), clusterSize: "64k");
        var commands = new List<string>();
        for (int c = 0; c < 6; c++)
        {
            commands.Add(string.Create(CultureInfo.InvariantCulture, $"write -P {(c + 1) * 17} {c * ClusterBytes} {ClusterBytes}"));
        }

        commands.Add(string.Create(CultureInfo.InvariantCulture, $"write -P 99 {(7 * ClusterBytes) + 1000} 3000"));
        Qemu.Write(path, commands);
        return path;
    }

    /// <summary>qemu's raw view of an image.</summary>
    public static byte[] Raw(string image, string scratch)
    {
        string raw = Path.Combine(scratch, $"view-{Guid.NewGuid():N}.raw");
        Qemu.Convert(image, raw);
        byte[] bytes = File.ReadAllBytes(raw);
        File.Delete(raw);
        return bytes;
    }

    public static string Hash(string path) => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(path)));

    public static uint ReadU32(string path, long offset)
    {
        using var f = File.OpenHandle(path);
        Span<byte> b = stackalloc byte[4];
        RandomAccess.Read(f, b, offset);
        return BinaryPrimitives.ReadUInt32LittleEndian(b);
    }

    public static void WriteU32(string path, long offset, uint value)
    {
        using var f = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite);
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(b, value);
        RandomAccess.Write(f, b, offset);
    }

    public static uint Entry(string path, int index) => ReadU32(path, 64 + (4L * index));

    public static void SetEntry(string path, int index, uint value) => WriteU32(path, 64 + (4L * index), value);

    public static void SetInUse(string path, uint value) => WriteU32(path, 44, value);

    public const uint Ynot = 0x746F6E59;

    /// <summary>Rewrites a WithouFreSpacExt image as WithoutFreeSpace: BAT entries in sectors instead of clusters.</summary>
    public static void ToOldMagic(string path)
    {
        byte[] bytes = File.ReadAllBytes(path);
        "WithoutFreeSpace"u8.CopyTo(bytes);
        uint tracks = BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(28));
        uint entries = BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(32));
        for (int i = 0; i < entries; i++)
        {
            var span = bytes.AsSpan(64 + (4 * i));
            BinaryPrimitives.WriteUInt32LittleEndian(span, BinaryPrimitives.ReadUInt32LittleEndian(span) * tracks);
        }

        File.WriteAllBytes(path, bytes);
    }
}
