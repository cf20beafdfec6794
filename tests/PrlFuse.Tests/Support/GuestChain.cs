using System.Globalization;
using System.Security.Cryptography;
using System.Text;

namespace PrlFuse.Tests.Support;

/// <summary>
/// A guest ext4 filesystem in three versions (base, a snapshot with changes, the top with more changes), put into a
/// Parallels chain by qemu-img/qemu-io: each overlay holds the 1 MiB clusters in which its version differs from the
/// one before. The versions' raw files are kept as the expected content, and each version's files and checksums
/// are known. Needs no mount: mkfs.ext4 -d and debugfs build the versions.
/// </summary>
public sealed class GuestChain
{
    public const int SizeMiB = 64;

    private GuestChain(string bundle, Guid[] guids, string[] raws, Dictionary<string, string>[] files)
    {
        Bundle = bundle;
        Guids = guids;
        RawVersions = raws;
        Files = files;
    }

    public string Bundle { get; }

    /// <summary>Snapshot GUIDs, base first, top last.</summary>
    public Guid[] Guids { get; }

    /// <summary>Raw files of each version (the expected content of each snapshot).</summary>
    public string[] RawVersions { get; }

    /// <summary>Per version: guest path -> sha256 of its content.</summary>
    public Dictionary<string, string>[] Files { get; }

    public static GuestChain Build(string folder, long[]? storageSectors = null, int seed = 1)
    {
        storageSectors ??= [SizeMiB * 2048L];
        var random = new Random(seed);
        string work = Path.Combine(folder, "work");
        string tree = Path.Combine(work, "tree");
        Directory.CreateDirectory(Path.Combine(tree, "etc"));
        Directory.CreateDirectory(Path.Combine(tree, "data"));
        var content = new Dictionary<string, byte[]>(StringComparer.Ordinal)
        {
            ["/hello.txt"] = "hello from the base snapshot\n"u8.ToArray(),
            ["/etc/hosts"] = "127.0.0.1 localhost\n"u8.ToArray(),
        };
        for (int i = 0; i < 6; i++)
        {
            var bytes = new byte[random.Next(1000, 900_000)];
            random.NextBytes(bytes);
            content[$"/data/blob{i}.bin"] = bytes;
        }

        foreach (var (path, bytes) in content)
        {
            File.WriteAllBytes(tree + path, bytes);
        }

        var versions = new List<Dictionary<string, byte[]>> { new(content) };
        string v1 = Path.Combine(work, "v1.raw");
        ProcessRunner.Run("mkfs.ext4", "-q", "-F", "-b", "4096", "-d", tree, v1, $"{SizeMiB}M");

        // Version 2: rewrite, remove and add files.
        var v2Content = new Dictionary<string, byte[]>(content);
        var script = new StringBuilder();
        Change(work, script, v2Content, "/hello.txt", "hello from the second snapshot\n"u8.ToArray(), replace: true);
        Remove(script, v2Content, "/data/blob1.bin");
        Change(work, script, v2Content, "/data/new-in-2.bin", RandomBytes(random, 700_000), replace: false);
        Change(work, script, v2Content, "/data/blob3.bin", RandomBytes(random, 50_000), replace: true);
        string v2 = Path.Combine(work, "v2.raw");
        File.Copy(v1, v2);
        Debugfs(work, v2, script.ToString());
        versions.Add(v2Content);

        var v3Content = new Dictionary<string, byte[]>(v2Content);
        script.Clear();
        Change(work, script, v3Content, "/hello.txt", "hello from the current state\n"u8.ToArray(), replace: true);
        script.Append("mkdir /home\n");
        Change(work, script, v3Content, "/home/todo.txt", "buy milk\n"u8.ToArray(), replace: false);
        Change(work, script, v3Content, "/data/blob4.bin", RandomBytes(random, 1_500_000), replace: true);
        string v3 = Path.Combine(work, "v3.raw");
        File.Copy(v2, v3);
        Debugfs(work, v3, script.ToString());
        versions.Add(v3Content);

        string bundle = Path.Combine(folder, "guest.hdd");
        Directory.CreateDirectory(bundle);
        var guids = new[] { Guid.NewGuid(), Guid.NewGuid(), new Guid("5fbaabe3-6958-40ff-92a7-860e329aab41") };
        string[] raws = [v1, v2, v3];
        long start = 0;
        var storages = new List<(long Start, long End)>();
        foreach (long s in storageSectors)
        {
            storages.Add((start, start + s));
            start += s;
        }

        for (int level = 0; level < 3; level++)
        {
            for (int s = 0; s < storages.Count; s++)
            {
                string image = Path.Combine(bundle, ImageName(s, guids[level]));
                long bytes = (storages[s].End - storages[s].Start) * 512;
                Qemu.Create(image, bytes.ToString(CultureInfo.InvariantCulture));
                WriteDifferences(work, level == 0 ? null : raws[level - 1], raws[level], storages[s].Start * 512, bytes, image);
            }
        }

        Descriptor(guids, storages).WriteTo(bundle);
        File.WriteAllBytes(Path.Combine(bundle, "guest.hdd"), []);
        var sums = versions.Select(v => v.ToDictionary(kv => kv.Key, kv => Convert.ToHexStringLower(SHA256.HashData(kv.Value)), StringComparer.Ordinal)).ToArray();
        return new GuestChain(bundle, guids, raws, sums);
    }

    private static string ImageName(int storage, Guid guid) => $"guest.hdd.{storage}.{guid:B}.hds";

    private static byte[] RandomBytes(Random random, int length)
    {
        var bytes = new byte[length];
        random.NextBytes(bytes);
        return bytes;
    }

    private static void Change(string work, StringBuilder script, Dictionary<string, byte[]> content, string path, byte[] bytes, bool replace)
    {
        string local = Path.Combine(work, "f" + script.Length.ToString(CultureInfo.InvariantCulture));
        File.WriteAllBytes(local, bytes);
        if (replace)
        {
            script.Append(CultureInfo.InvariantCulture, $"rm {path}\n");
        }

        script.Append(CultureInfo.InvariantCulture, $"write {local} {path}\n");
        content[path] = bytes;
    }

    private static void Remove(StringBuilder script, Dictionary<string, byte[]> content, string path)
    {
        script.Append(CultureInfo.InvariantCulture, $"rm {path}\n");
        content.Remove(path);
    }

    private static void Debugfs(string work, string image, string script)
    {
        string file = Path.Combine(work, "debugfs.cmd");
        File.WriteAllText(file, script);
        ProcessRunner.Run("debugfs", "-w", "-f", file, image);
    }

    /// <summary>Writes into <paramref name="image"/> every 1 MiB cluster of the storage slice that differs from the older version.</summary>
    private static void WriteDifferences(string work, string? older, string newer, long sliceStart, long sliceBytes, string image)
    {
        const int Cluster = 1 << 20;
        using var n = File.OpenHandle(newer);
        using var o = older is null ? null : File.OpenHandle(older);
        var a = new byte[Cluster];
        var b = new byte[Cluster];
        var commands = new List<string>();
        for (long off = 0; off < sliceBytes; off += Cluster)
        {
            int len = (int)Math.Min(Cluster, sliceBytes - off);
            Array.Clear(a);
            Array.Clear(b);
            RandomAccess.Read(n, b.AsSpan(0, len), sliceStart + off);
            if (o is not null)
            {
                RandomAccess.Read(o, a.AsSpan(0, len), sliceStart + off);
            }

            if (a.AsSpan(0, len).SequenceEqual(b.AsSpan(0, len)))
            {
                continue;
            }

            string chunk = Path.Combine(work, $"chunk-{Path.GetFileName(image)}-{off}");
            File.WriteAllBytes(chunk, b.AsSpan(0, len).ToArray());
            commands.Add(string.Create(CultureInfo.InvariantCulture, $"write -q -s {chunk} {off} {len}"));
        }

        Qemu.Write(image, commands);
    }

    private static DescriptorBuilder Descriptor(Guid[] guids, List<(long Start, long End)> storages)
    {
        long size = storages[^1].End;
        var d = new DescriptorBuilder(size) { Cylinders = size / 512, Heads = 16, SectorsPerTrack = 32 };
        for (int s = 0; s < storages.Count; s++)
        {
            var storage = d.Storage(storages[s].Start, storages[s].End);
            foreach (var g in guids)
            {
                storage.Image(g, "Compressed", ImageName(s, g));
            }
        }

        for (int i = guids.Length - 1; i >= 0; i--)
        {
            d.Shot(guids[i], i == 0 ? Guid.Empty : guids[i - 1]);
        }

        return d;
    }
}
