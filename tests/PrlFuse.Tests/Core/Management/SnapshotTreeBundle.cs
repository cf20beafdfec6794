using System.Globalization;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Engine;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.Management;

/// <summary>
/// A bundle whose snapshot tree is given by hand (branches allowed), each image made and written by qemu-img and
/// qemu-io, and QEMU's view of every snapshot of whatever the descriptor says now, as the oracle.
/// </summary>
internal sealed class SnapshotTreeBundle
{
    private SnapshotTreeBundle(string bundle, Dictionary<string, Guid> guids)
    {
        Bundle = bundle;
        Guids = guids;
    }

    public string Bundle { get; }

    public string Descriptor => Path.Combine(Bundle, "DiskDescriptor.xml");

    /// <summary>The snapshots by the names the test gave them.</summary>
    public Dictionary<string, Guid> Guids { get; }

    public Guid this[string name] => Guids[name];

    /// <summary>
    /// Builds the tree: each (name, parent name or null, cluster KiB), parents before children; the last one is the top
    /// (the predefined GUID). Every image gets random writes.
    /// </summary>
    public static SnapshotTreeBundle Build(string folder, int seed, long sizeBytes, params (string Name, string? Parent, int ClusterKiB)[] shots)
    {
        var random = new Random(seed);
        string bundle = Path.Combine(folder, "tree.hdd");
        Directory.CreateDirectory(bundle);
        long sectors = sizeBytes / 512;
        var d = new DescriptorBuilder(sectors) { Cylinders = sectors / 32, Heads = 1, SectorsPerTrack = 32 };
        var storage = d.Storage(0, sectors);
        var guids = new Dictionary<string, Guid>();
        for (int i = 0; i < shots.Length; i++)
        {
            var (name, parent, clusterKiB) = shots[i];
            var guid = i == shots.Length - 1 ? DescriptorBuilder.PredefinedTop : Guid.NewGuid();
            guids[name] = guid;
            string file = $"tree.hdd.0.{guid:B}.hds";
            string path = Path.Combine(bundle, file);
            Qemu.Create(path, sizeBytes.ToString(CultureInfo.InvariantCulture), clusterSize: $"{clusterKiB}k");
            var commands = new List<string>();
            for (int w = 0, writes = 4 + random.Next(6); w < writes; w++)
            {
                long length = Math.Min(sizeBytes, random.Next(3) == 0 ? clusterKiB * 1024L * (1 + random.Next(3)) : 1 + random.Next(150_000));
                long offset = random.NextInt64(sizeBytes - length + 1);
                commands.Add(string.Create(CultureInfo.InvariantCulture, $"write -P {1 + random.Next(255)} {offset} {length}"));
            }

            Qemu.Write(path, commands);
            storage.Image(guid, "Compressed", file);
            d.Shot(guid, parent is null ? Guid.Empty : guids[parent]);
        }

        d.AddElement("Disk_Parameters", "<Name>tree</Name>");
        d.WriteTo(bundle);
        return new SnapshotTreeBundle(bundle, guids);
    }

    /// <summary>QEMU's view of every snapshot the descriptor of <paramref name="bundle"/> lists now, all storages concatenated.</summary>
    public static Dictionary<Guid, byte[]> OracleViews(string bundle, string scratch)
    {
        string xml = Path.Combine(bundle, "DiskDescriptor.xml");
        var d = DescriptorParser.ParseFile(xml);
        var tree = SnapshotTree.Build(d, xml);
        var views = new Dictionary<Guid, byte[]>();
        foreach (var guid in tree.Snapshots)
        {
            var view = new byte[d.DiskSizeBytes];
            foreach (var sd in d.Storages)
            {
                var files = tree.ChainOf(guid).Select(g => Path.Combine(bundle, sd.FindImage(g)!.File)).ToList();
                string raw = Path.Combine(scratch, "oracle.raw");
                if (sd.FindImage(tree.Root)!.Type == ImageType.Plain && files.Count == 1)
                {
                    File.Copy(files[0], raw, overwrite: true);
                }
                else
                {
                    Qemu.ConvertChain(files, raw);
                }

                byte[] bytes = File.ReadAllBytes(raw);
                File.Delete(raw);
                bytes.AsSpan(0, (int)(sd.LengthBytes)).CopyTo(view.AsSpan((int)(sd.StartSector * 512)));
            }

            views[guid] = view;
        }

        return views;
    }

    /// <summary>Our view of every snapshot, read through the engine.</summary>
    public static Dictionary<Guid, byte[]> OurViews(string bundle)
    {
        using var disk = Reopen.Retrying(() => VirtualDisk.Open(bundle, new DiskOpenOptions { CacheBytes = 0 }));
        return disk.Views.ToDictionary(v => v.Key, v =>
        {
            var bytes = new byte[disk.Size];
            Assert.Equal(bytes.Length, v.Value.Read(bytes, 0));
            return bytes;
        });
    }

    /// <summary>Every image the descriptor names passes 'qemu-img check' with nothing found.</summary>
    public static void AssertQemuClean(string bundle)
    {
        string xml = Path.Combine(bundle, "DiskDescriptor.xml");
        var d = DescriptorParser.ParseFile(xml);
        foreach (var image in d.Storages.SelectMany(s => s.Images).Where(i => i.Type == ImageType.Compressed))
        {
            Qemu.AssertClean(Path.Combine(bundle, image.File));
        }
    }

    /// <summary>The image files the descriptor names (file names).</summary>
    public static HashSet<string> NamedFiles(string bundle)
    {
        var d = DescriptorParser.ParseFile(Path.Combine(bundle, "DiskDescriptor.xml"));
        return [.. d.Storages.SelectMany(s => s.Images).Select(i => i.File)];
    }

    public static void AssertViewsEqual(Dictionary<Guid, byte[]> expected, Dictionary<Guid, byte[]> actual, string context)
    {
        foreach (var (guid, bytes) in actual)
        {
            Assert.True(expected.ContainsKey(guid), $"{context}: unexpected snapshot {guid:B}");
            AssertSame(expected[guid], bytes, $"{context}: snapshot {guid:B}");
        }
    }

    public static void AssertSame(byte[] expected, byte[] actual, string context)
    {
        Assert.Equal(expected.Length, actual.Length);
        int diff = expected.AsSpan().CommonPrefixLength(actual);
        Assert.True(diff == expected.Length, $"{context}: differs at byte {diff}");
    }
}
