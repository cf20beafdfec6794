using System.Globalization;
using System.Text;

namespace PrlFuse.Tests.Support;

/// <summary>
/// A snapshot chain built by qemu-img and qemu-io (an implementation independent of ours), with a
/// DiskDescriptor.xml written for it, and qemu's own raw view of every snapshot as the oracle.
/// </summary>
public sealed class QemuChain
{
    private QemuChain(string bundle, IReadOnlyList<Level> levels, IReadOnlyList<(long Start, long End)> storages)
    {
        Bundle = bundle;
        Levels = levels;
        Storages = storages;
    }

    public sealed record Level(Guid Guid, string[] Files, int ClusterKiB);

    public string Bundle { get; }

    /// <summary>Root first, top last.</summary>
    public IReadOnlyList<Level> Levels { get; }

    public IReadOnlyList<(long Start, long End)> Storages { get; }

    public long SizeBytes => Storages[^1].End * 512;

    /// <summary>
    /// Builds a chain of <paramref name="depth"/> images per storage. Each level gets random writes (whole and
    /// partial clusters, unaligned, random patterns, some of zeros) at a random cluster size.
    /// </summary>
    public static QemuChain Build(string folder, int depth, long[] storageSectors, int seed, bool predefinedTop = false, bool useTopGuid = true, bool shuffleShots = true)
    {
        var random = new Random(seed);
        string bundle = Path.Combine(folder, "disk.hdd");
        Directory.CreateDirectory(bundle);
        var storages = new List<(long, long)>();
        long start = 0;
        foreach (long s in storageSectors)
        {
            storages.Add((start, start + s));
            start += s;
        }

        var levels = new List<Level>();
        int[] clusterChoices = [64, 256, 1024];
        for (int level = 0; level < depth; level++)
        {
            Guid guid = predefinedTop && level == depth - 1 ? new Guid("5fbaabe3-6958-40ff-92a7-860e329aab41") : Guid.NewGuid();
            int clusterKiB = clusterChoices[random.Next(clusterChoices.Length)];
            var files = new string[storages.Count];
            for (int s = 0; s < storages.Count; s++)
            {
                string name = $"disk.hdd.{s}.{guid:B}.hds";
                files[s] = name;
                string path = Path.Combine(bundle, name);
                long bytes = (storages[s].Item2 - storages[s].Item1) * 512;
                Qemu.Create(path, bytes.ToString(CultureInfo.InvariantCulture), clusterSize: $"{clusterKiB}k");
                var commands = new List<string>();
                int writes = 6 + random.Next(10);
                for (int w = 0; w < writes; w++)
                {
                    long length = random.Next(4) switch
                    {
                        0 => 512L * (1 + random.Next(16)),
                        1 => clusterKiB * 1024L,
                        2 => 1 + random.Next(200_000),
                        _ => clusterKiB * 1024L * (1 + random.Next(4)),
                    };
                    length = Math.Min(length, bytes);
                    long offset = random.Next(3) == 0
                        ? random.NextInt64(bytes / (clusterKiB * 1024L)) * clusterKiB * 1024L
                        : random.NextInt64(bytes - length + 1);
                    offset = Math.Min(offset, bytes - length);
                    int pattern = random.Next(8) == 0 ? 0 : 1 + random.Next(255);
                    commands.Add(string.Create(CultureInfo.InvariantCulture, $"write -P {pattern} {offset} {length}"));
                }

                Qemu.Write(path, commands);
            }

            levels.Add(new Level(guid, files, clusterKiB));
        }

        var chain = new QemuChain(bundle, levels, storages);
        File.WriteAllText(Path.Combine(bundle, "DiskDescriptor.xml"), chain.Descriptor(useTopGuid, shuffleShots ? random : null));
        return chain;
    }

    private string Descriptor(bool useTopGuid, Random? shuffle)
    {
        long size = Storages[^1].End;
        var sb = new StringBuilder();
        sb.Append("<?xml version='1.0' encoding='UTF-8'?>\r\n<Parallels_disk_image Version=\"1.0\">\r\n");
        sb.Append(CultureInfo.InvariantCulture, $"  <Disk_Parameters>\r\n    <Disk_size>{size}</Disk_size>\r\n    <Cylinders>{size / 32}</Cylinders>\r\n    <Heads>1</Heads>\r\n    <Sectors>32</Sectors>\r\n    <Padding>0</Padding>\r\n    <Name>oracle</Name>\r\n  </Disk_Parameters>\r\n");
        sb.Append("  <StorageData>\r\n");
        for (int s = 0; s < Storages.Count; s++)
        {
            sb.Append(CultureInfo.InvariantCulture, $"    <Storage>\r\n      <Start>{Storages[s].Start}</Start>\r\n      <End>{Storages[s].End}</End>\r\n      <Blocksize>2048</Blocksize>\r\n");
            foreach (var level in Levels)
            {
                sb.Append(CultureInfo.InvariantCulture, $"      <Image>\r\n        <GUID>{level.Guid:B}</GUID>\r\n        <Type>Compressed</Type>\r\n        <File>{level.Files[s]}</File>\r\n      </Image>\r\n");
            }

            sb.Append("    </Storage>\r\n");
        }

        sb.Append("  </StorageData>\r\n  <Snapshots>\r\n");
        if (useTopGuid)
        {
            sb.Append(CultureInfo.InvariantCulture, $"    <TopGUID>{Levels[^1].Guid:B}</TopGUID>\r\n");
        }

        var order = Enumerable.Range(0, Levels.Count).ToList();
        if (shuffle is not null)
        {
            order = order.OrderBy(_ => shuffle.Next()).ToList();
        }

        foreach (int i in order)
        {
            var parent = i == 0 ? Guid.Empty : Levels[i - 1].Guid;
            sb.Append(CultureInfo.InvariantCulture, $"    <Shot>\r\n      <GUID>{Levels[i].Guid:B}</GUID>\r\n      <ParentGUID>{parent:B}</ParentGUID>\r\n    </Shot>\r\n");
        }

        sb.Append("  </Snapshots>\r\n</Parallels_disk_image>\r\n");
        return sb.ToString();
    }

    /// <summary>qemu's raw view of level <paramref name="level"/> (0 = root), all storages concatenated.</summary>
    public byte[] OracleView(int level, string scratch)
    {
        var result = new byte[SizeBytes];
        for (int s = 0; s < Storages.Count; s++)
        {
            var topFirst = Enumerable.Range(0, level + 1).Reverse().Select(l => Path.Combine(Bundle, Levels[l].Files[s])).ToList();
            string raw = Path.Combine(scratch, $"oracle-{level}-{s}.raw");
            Qemu.ConvertChain(topFirst, raw);
            byte[] bytes = File.ReadAllBytes(raw);
            File.Delete(raw);
            bytes.CopyTo(result, Storages[s].Start * 512);
        }

        return result;
    }
}
