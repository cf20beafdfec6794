namespace PrlFuse.Tests.Support;

/// <summary>
/// A bundle with a linear chain of many small expandable images (64 KiB clusters), written by
/// <see cref="ParallelsImageBuilder"/>: level i fills two clusters with the byte of its level, so what each view
/// reads is known without QEMU (whose command line cannot name a chain a thousand images deep).
/// </summary>
public sealed class DeepChain
{
    private const uint ClusterSectors = 128;
    private const long ClusterBytes = ClusterSectors * 512;

    private DeepChain(string path, Guid[] guids, long clusters)
    {
        Path = path;
        Guids = guids;
        Clusters = clusters;
    }

    public string Path { get; }

    /// <summary>Root first.</summary>
    public Guid[] Guids { get; }

    public long Clusters { get; }

    public static DeepChain Build(string folder, int depth, long clusters)
    {
        string bundle = System.IO.Path.Combine(folder, "deep.hdd");
        Directory.CreateDirectory(bundle);
        var guids = Enumerable.Range(0, depth).Select(_ => Guid.NewGuid()).ToArray();
        var d = new DescriptorBuilder(clusters * ClusterSectors) { TopGuid = guids[^1] };
        var storage = d.Storage(0, clusters * ClusterSectors, ClusterSectors);
        for (int level = 0; level < depth; level++)
        {
            string name = $"deep.hdd.0.{guids[level]:B}.hds";
            byte value = ValueOf(level);
            var image = new ParallelsImageBuilder(clusters * ClusterSectors, ClusterSectors) { Content = _ => value };
            foreach (long cluster in ClustersOf(level, clusters))
            {
                image.Allocate(cluster);
            }

            image.Build(System.IO.Path.Combine(bundle, name));
            storage.Image(guids[level], "Compressed", name);
            d.Shot(guids[level], level == 0 ? Guid.Empty : guids[level - 1]);
        }

        d.WriteTo(bundle);
        return new DeepChain(bundle, guids, clusters);
    }

    /// <summary>What the view of <paramref name="level"/> reads: each cluster holds the byte of the last level up to it that wrote it, else zeros.</summary>
    public byte[] Expected(int level)
    {
        var bytes = new byte[Clusters * ClusterBytes];
        for (int l = 0; l <= level; l++)
        {
            foreach (long cluster in ClustersOf(l, Clusters))
            {
                bytes.AsSpan((int)(cluster * ClusterBytes), (int)ClusterBytes).Fill(ValueOf(l));
            }
        }

        return bytes;
    }

    private static byte ValueOf(int level) => (byte)((level % 250) + 1);

    private static long[] ClustersOf(int level, long clusters) => [((level * 37L) + 11) % clusters, (level * 101L) % clusters];
}
