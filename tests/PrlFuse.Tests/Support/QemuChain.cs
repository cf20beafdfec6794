using System.Globalization;

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
        chain.Descriptor(useTopGuid, shuffleShots ? random : null).WriteTo(bundle);
        return chain;
    }

    private DescriptorBuilder Descriptor(bool useTopGuid, Random? shuffle)
    {
        long size = Storages[^1].End;
        var d = new DescriptorBuilder(size) { Cylinders = size / 32, Heads = 1, SectorsPerTrack = 32, Crlf = true, TopGuid = useTopGuid ? Levels[^1].Guid : null };
        d.AddElement("Disk_Parameters", "<Name>oracle</Name>");
        for (int s = 0; s < Storages.Count; s++)
        {
            var storage = d.Storage(Storages[s].Start, Storages[s].End);
            foreach (var level in Levels)
            {
                storage.Image(level.Guid, "Compressed", level.Files[s]);
            }
        }

        var order = Enumerable.Range(0, Levels.Count).ToList();
        if (shuffle is not null)
        {
            order = order.OrderBy(_ => shuffle.Next()).ToList();
        }

        foreach (int i in order)
        {
            d.Shot(Levels[i].Guid, i == 0 ? Guid.Empty : Levels[i - 1].Guid);
        }

        return d;
    }

    /// <summary>The layer files of level <paramref name="level"/>'s chain in storage <paramref name="storage"/>, top first.</summary>
    public List<string> ChainFiles(int level, int storage) =>
        Enumerable.Range(0, level + 1).Reverse().Select(l => Path.Combine(Bundle, Levels[l].Files[storage])).ToList();

    /// <summary>QEMU's data ranges (start, end) of level <paramref name="level"/>, all storages, merged where they meet.</summary>
    public List<(long Start, long End)> DataRanges(int level) => QemuMap.DataRanges(QemuMap.Of(this, level));

    /// <summary>qemu's raw view of level <paramref name="level"/> (0 = root), all storages concatenated.</summary>
    public byte[] OracleView(int level, string scratch)
    {
        var result = new byte[SizeBytes];
        for (int s = 0; s < Storages.Count; s++)
        {
            var topFirst = ChainFiles(level, s);
            string raw = Path.Combine(scratch, $"oracle-{level}-{s}.raw");
            Qemu.ConvertChain(topFirst, raw);
            byte[] bytes = File.ReadAllBytes(raw);
            File.Delete(raw);
            bytes.CopyTo(result, Storages[s].Start * 512);
        }

        return result;
    }
}
