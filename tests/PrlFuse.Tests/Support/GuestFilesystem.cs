using System.Globalization;
using System.Security.Cryptography;

namespace PrlFuse.Tests.Support;

/// <summary>
/// A guest filesystem on a disk file (a mount's current.raw): made with mkfs through a loop device, mounted to write
/// and read files, its files checked against their checksums. Every loop device and mount is undone, whatever happens.
/// </summary>
public static class GuestFilesystem
{
    /// <summary>Files under <see cref="Root"/> by their path from it ("/d0/e1/f3.bin"), with their SHA-256.</summary>
    public sealed record Tree(string Root, Dictionary<string, string> Files);

    /// <summary>A folder of files of random sizes and content, with their checksums.</summary>
    public static Tree MakeTree(string root, int seed, int count = 60)
    {
        var random = new Random(seed);
        var files = new Dictionary<string, string>(StringComparer.Ordinal);
        for (int i = 0; i < count; i++)
        {
            string dir = $"/d{i % 7}/e{i % 3}";
            Directory.CreateDirectory(root + dir);
            var bytes = new byte[random.Next(4) == 0 ? random.Next(1 << 20, 6 << 20) : random.Next(0, 70_000)];
            random.NextBytes(bytes);
            string path = string.Create(CultureInfo.InvariantCulture, $"{dir}/f{i}.bin");
            File.WriteAllBytes(root + path, bytes);
            files[path] = Convert.ToHexStringLower(SHA256.HashData(bytes));
        }

        return new Tree(root, files);
    }

    /// <summary>Makes a <paramref name="fs"/> (ext4, xfs) filesystem on <paramref name="file"/> and copies <paramref name="tree"/> into it.</summary>
    public static void Make(string file, string fs, string mountAt, Tree tree) =>
        WithLoop(file, device =>
        {
            ProcessRunner.Run(fs == "xfs" ? "mkfs.xfs" : "mkfs.ext4", fs == "xfs" ? ["-q", "-f", device] : ["-q", "-F", device]);
            WithMounted(device, mountAt, guest => ProcessRunner.Run("cp", "-a", tree.Root + "/.", guest));
        });

    /// <summary>Attaches <paramref name="file"/> to a loop device for <paramref name="use"/>, and detaches it.</summary>
    public static void WithLoop(string file, Action<string> use)
    {
        string device = ProcessRunner.Run("losetup", "--find", "--show", file).Stdout.Trim();
        try
        {
            use(device);
        }
        finally
        {
            ProcessRunner.Run("losetup", "-d", device);
        }
    }

    /// <summary>Mounts <paramref name="device"/> at <paramref name="at"/> for <paramref name="use"/>, syncs what it wrote, and unmounts it.</summary>
    public static void WithMounted(string device, string at, Action<string> use)
    {
        Directory.CreateDirectory(at);
        ProcessRunner.Run("mount", device, at);
        try
        {
            use(at);
            ProcessRunner.Run("sync", "-f", at);
        }
        finally
        {
            ProcessRunner.Run("umount", at);
        }
    }

    /// <summary>Every file of <paramref name="files"/> is under <paramref name="root"/> with its checksum, and no other file is.</summary>
    public static void AssertFiles(string root, IReadOnlyDictionary<string, string> files, string what)
    {
        foreach (var (path, sha) in files)
        {
            Assert.True(File.Exists(root + path), $"{what}: {path} is missing");
            Assert.True(sha == Hashing.Sha256File(root + path), $"{what}: {path} has other content");
        }

        var present = Directory.GetFiles(root, "*.bin", SearchOption.AllDirectories).Select(f => f[root.Length..]).Order(StringComparer.Ordinal);
        Assert.Equal(files.Keys.Order(StringComparer.Ordinal), present);
    }
}
