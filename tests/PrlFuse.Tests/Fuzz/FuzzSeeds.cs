using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Fuzz;

/// <summary>
/// One valid starting point for mutation: the files of a bundle (or one bare image) held in memory, and the file
/// to open. Image names end in .hds, the descriptor is DiskDescriptor.xml.
/// </summary>
public sealed record FuzzSeed(string Name, string Entry, IReadOnlyDictionary<string, byte[]> Files)
{
    public const string DescriptorName = "DiskDescriptor.xml";

    public bool IsBundle => Files.ContainsKey(DescriptorName);

    /// <summary>
    /// Bytes a case of this seed may allocate above the runner's limit. Buffers come in clusters: an image of 2 MiB
    /// clusters has 2 MiB tables and refcount blocks, each read once by the check before the first write.
    /// </summary>
    public long AllocationBudget { get; init; }

    /// <summary>
    /// The files mutations aim at: images (.hds, .qcow2, .qed); a qcow2 external data file (.data) and a raw backing
    /// file (.raw) hold only guest bytes.
    /// </summary>
    public IEnumerable<string> ImageNames => Files.Keys.Where(n => n.EndsWith(".hds", StringComparison.Ordinal) || n.EndsWith(".qcow2", StringComparison.Ordinal) || n.EndsWith(".qed", StringComparison.Ordinal)).Order(StringComparer.Ordinal);

    public Dictionary<string, byte[]> CopyFiles() => Files.ToDictionary(kv => kv.Key, kv => (byte[])kv.Value.Clone(), StringComparer.Ordinal);
}

/// <summary>
/// The seed corpus: valid images of both magics at 63-sector, 256 KiB and 1 MiB clusters, some with a format
/// extension and a dirty bitmap, and valid bundles (one image, a 3-level chain, a split disk, a raw root). All built
/// with the test builders, deterministically, and small (a few MiB at most) so a case is cheap to write.
/// </summary>
public static class FuzzSeeds
{
    private static readonly Guid G1 = new("11111111-2222-3333-4444-555555555551");
    private static readonly Guid G2 = new("11111111-2222-3333-4444-555555555552");
    private static readonly Guid G3 = new("11111111-2222-3333-4444-555555555553");
    private static readonly Guid BitmapId = new("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0");
    private static readonly Lazy<IReadOnlyList<FuzzSeed>> AllSeeds = new(BuildAll);

    private static readonly Lazy<IReadOnlyList<FuzzSeed>> Qcow2Seeds = new(BuildQcow2);

    private static readonly Lazy<IReadOnlyList<FuzzSeed>> QedSeeds = new(BuildQed);

    /// <summary>The Parallels seeds (images and bundles).</summary>
    public static IReadOnlyList<FuzzSeed> All => AllSeeds.Value;

    /// <summary>The qcow2 seeds, made by qemu-img and qemu-io (the tests using them need QEMU).</summary>
    public static IReadOnlyList<FuzzSeed> Qcow2 => Qcow2Seeds.Value;

    /// <summary>The QED seeds, made by qemu-img and qemu-io (the tests using them need QEMU).</summary>
    public static IReadOnlyList<FuzzSeed> Qed => QedSeeds.Value;

    /// <summary>The seeds of a format named in PRLFUSE_FUZZ_FORMAT: parallels (the default), qcow2 or qed.</summary>
    public static IReadOnlyList<FuzzSeed> ForFormat(string? format) => format switch
    {
        null or "" or "parallels" => All,
        "qcow2" => Qcow2,
        "qed" => Qed,
        _ => throw new ArgumentException($"PRLFUSE_FUZZ_FORMAT={format}: parallels, qcow2 or qed"),
    };

    /// <summary>
    /// Small QED images: clusters of 4 KiB and 64 KiB, tables of 2 and 4 clusters (qemu-img cannot open a fresh image of 1-cluster tables), zero clusters (write -z), a QED over a
    /// QED over a raw file, a QED over a Parallels image, a qcow2 over a QED.
    /// </summary>
    private static IReadOnlyList<FuzzSeed> BuildQed()
    {
        using var temp = new TempFolder("prlfuse-fuzz-qed-seeds");
        var seeds = new List<FuzzSeed>();
        void Run(string tool, params string[] args) => ProcessRunner.Run(tool, args, workingDirectory: temp.Path);
        FuzzSeed Seed(string name, string entry, params string[] files) =>
            new(name, entry, files.ToDictionary(f => f, f => File.ReadAllBytes(temp.Combine(f)), StringComparer.Ordinal));
        void Write(string format, string file, params string[] writes)
        {
            foreach (string w in writes)
            {
                Run("qemu-io", "-f", format, "-c", w, file);
            }
        }

        Run("qemu-img", "create", "-q", "-f", "qed", "-o", "cluster_size=4096,table_size=2", "c4k.qed", "4M");
        Write("qed", "c4k.qed", "write -P 1 0 20k", "write -z 64k 16k", "write -P 2 3000k 5000");
        seeds.Add(Seed("qed-4k-table2-zero", "c4k.qed", "c4k.qed"));

        Run("qemu-img", "create", "-q", "-f", "qed", "-o", "cluster_size=65536,table_size=2", "c64k.qed", "6M");
        Write("qed", "c64k.qed", "write -P 3 0 200k", "write -z 1M 128k", "write -P 4 5M 70000");
        seeds.Add(Seed("qed-64k-table2-zero", "c64k.qed", "c64k.qed"));

        Run("qemu-img", "create", "-q", "-f", "qed", "-o", "cluster_size=4096,table_size=4", "t4.qed", "40M");
        Write("qed", "t4.qed", "write -P 5 0 4k", "write -P 6 17M 9000", "write -z 39M 8k");
        seeds.Add(Seed("qed-4k-table4-sparse", "t4.qed", "t4.qed"));

        var raw = new byte[1 << 20];
        new Random(11).NextBytes(raw);
        File.WriteAllBytes(temp.Combine("base.raw"), raw);
        Run("qemu-img", "create", "-q", "-f", "qed", "-o", "cluster_size=4096", "-b", "base.raw", "-F", "raw", "mid.qed", "1M");
        Write("qed", "mid.qed", "write -P 7 8k 8k", "write -z 64k 64k");
        Run("qemu-img", "create", "-q", "-f", "qed", "-o", "cluster_size=4096", "-b", "mid.qed", "-F", "qed", "top.qed", "1M");
        Write("qed", "top.qed", "write -P 8 6k 20k", "write -z 200k 4k");
        seeds.Add(Seed("qed-chain-over-qed-over-raw", "top.qed", "top.qed", "mid.qed", "base.raw"));

        Run("qemu-img", "create", "-q", "-f", "parallels", "pbase.hds", "2M");
        Write("parallels", "pbase.hds", "write -P 9 0 2M");
        Run("qemu-img", "create", "-q", "-f", "qed", "-o", "cluster_size=4096", "-b", "pbase.hds", "-F", "parallels", "over-prl.qed", "2M");
        Write("qed", "over-prl.qed", "write -P 10 4k 12k", "write -z 1M 64k");
        seeds.Add(Seed("qed-over-parallels", "over-prl.qed", "over-prl.qed", "pbase.hds"));

        Run("qemu-img", "create", "-q", "-f", "qed", "-o", "cluster_size=4096", "qbase.qed", "2M");
        Write("qed", "qbase.qed", "write -P 11 0 1M", "write -z 1M 64k");
        Run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b", "qbase.qed", "-F", "qed", "over-qed.qcow2", "2M");
        Write("qcow2", "over-qed.qcow2", "write -P 12 512k 16k");
        seeds.Add(Seed("qcow2-over-qed", "over-qed.qcow2", "over-qed.qcow2", "qbase.qed"));
        return seeds;
    }

    /// <summary>
    /// Small qcow2 images of every kind the reader and writer handle: versions 2 and 3, clusters of 512 B to 2 MiB,
    /// zero and compressed (zlib, zstd) clusters, extended L2 entries, refcounts of 1 and 64 bits, internal snapshots,
    /// persistent dirty bitmaps, a backing chain over a Parallels image, an external data file.
    /// </summary>
    private static IReadOnlyList<FuzzSeed> BuildQcow2()
    {
        using var temp = new TempFolder("prlfuse-fuzz-qcow2-seeds");
        var seeds = new List<FuzzSeed>();
        void Run(string tool, params string[] args) => ProcessRunner.Run(tool, args, workingDirectory: temp.Path);
        FuzzSeed Seed(string name, string entry, params string[] files) =>
            new(name, entry, files.ToDictionary(f => f, f => File.ReadAllBytes(temp.Combine(f)), StringComparer.Ordinal));

        string Make(string name, string options, string size, params string[] writes)
        {
            string file = name + ".qcow2";
            Run("qemu-img", "create", "-q", "-f", "qcow2", "-o", options, file, size);
            foreach (string w in writes)
            {
                Run("qemu-io", "-f", "qcow2", "-c", w, file);
            }

            return file;
        }

        seeds.Add(Seed("qcow2-v2-512", Make("v2-512", "compat=0.10,cluster_size=512", "1M", "write -P 1 0 20k", "write -P 2 600k 3000"), "v2-512.qcow2"));
        seeds.Add(Seed("qcow2-v3-64k-zero-compressed", Make("v3-64k", "compat=1.1,cluster_size=65536", "4M", "write -P 3 0 200k", "write -z 64k 64k", "write -c -P 4 1M 64k", "write -z 2M 128k"), "v3-64k.qcow2"));
        seeds.Add(Seed("qcow2-v3-2M", Make("v3-2m", "cluster_size=2097152", "8M", "write -P 5 1M 2M"), "v3-2m.qcow2") with { AllocationBudget = 48L * (2 << 20) });
        seeds.Add(Seed("qcow2-extended-l2", Make("ext-l2", "extended_l2=on,cluster_size=16384", "2M", "write -P 6 0 3000", "write -z 20000 4096", "write -P 7 100000 50000"), "ext-l2.qcow2"));
        seeds.Add(Seed("qcow2-refcount1", Make("rc1", "refcount_bits=1,cluster_size=4096", "2M", "write -P 8 0 100k"), "rc1.qcow2"));
        seeds.Add(Seed("qcow2-refcount64-zstd", Make("rc64", "refcount_bits=64,compression_type=zstd,cluster_size=4096", "2M", "write -c -P 9 0 16k", "write -P 10 64k 8k"), "rc64.qcow2"));

        string snap = Make("snap", "cluster_size=4096", "1M", "write -P 11 0 64k");
        Run("qemu-img", "snapshot", "-c", "one", snap);
        Run("qemu-io", "-f", "qcow2", "-c", "write -P 12 32k 64k", snap);
        Run("qemu-img", "snapshot", "-c", "two", snap);
        Run("qemu-io", "-f", "qcow2", "-c", "write -z 0 16k", snap);
        seeds.Add(Seed("qcow2-snapshots", snap, snap));

        Run("qemu-img", "create", "-q", "-f", "parallels", "base.hds", "2M");
        Run("qemu-io", "-f", "parallels", "-c", "write -P 13 0 2M", "base.hds");
        Run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b", "base.hds", "-F", "parallels", "mid.qcow2", "2M");
        Run("qemu-io", "-f", "qcow2", "-c", "write -P 14 4k 8k", "-c", "write -z 64k 64k", "mid.qcow2");
        Run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2", "2M");
        Run("qemu-io", "-f", "qcow2", "-c", "write -P 15 6k 20k", "top.qcow2");
        seeds.Add(Seed("qcow2-chain-over-parallels", "top.qcow2", "top.qcow2", "mid.qcow2", "base.hds"));

        // Persistent dirty bitmaps: the bitmaps extension, its directory, bitmap tables and bitmap clusters.
        string bitmaps = Make("bitmaps", "cluster_size=4096", "2M", "write -P 17 0 64k");
        Run("qemu-img", "bitmap", "--add", "-g", "65536", bitmaps, "b0");
        Run("qemu-img", "bitmap", "--add", "-g", "4096", bitmaps, "second");
        Run("qemu-io", "-f", "qcow2", "-c", "write -P 18 1M 300k", "-c", "write -z 32k 8k", bitmaps);
        seeds.Add(Seed("qcow2-bitmaps", bitmaps, bitmaps));

        Run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file=ext.data,cluster_size=4096", "ext.qcow2", "1M");
        Run("qemu-io", "-f", "qcow2", "-c", "write -P 16 0 40k", "ext.qcow2");
        seeds.Add(Seed("qcow2-external-data", "ext.qcow2", "ext.qcow2", "ext.data"));
        return seeds;
    }

    private static IReadOnlyList<FuzzSeed> BuildAll()
    {
        using var temp = new TempFolder("prlfuse-fuzz-seeds");
        var seeds = new List<FuzzSeed>();

        string Img(string name, ParallelsImageBuilder b) => b.Build(temp.Combine(name)).Path;

        FuzzSeed Bare(string name, ParallelsImageBuilder b)
        {
            string file = name + ".hds";
            Img(file, b);
            return new FuzzSeed(name, file, new Dictionary<string, byte[]> { [file] = File.ReadAllBytes(temp.Combine(file)) });
        }

        FuzzSeed Bundle(string name, DescriptorBuilder d, params string[] files)
        {
            var map = new Dictionary<string, byte[]>(StringComparer.Ordinal) { [FuzzSeed.DescriptorName] = System.Text.Encoding.UTF8.GetBytes(d.Build()) };
            foreach (string f in files)
            {
                map[f] = File.ReadAllBytes(temp.Combine(f));
            }

            return new FuzzSeed(name, FuzzSeed.DescriptorName, map);
        }

        // 8 MiB at 63-sector clusters (the oldest layout), every 7th cluster allocated.
        seeds.Add(Bare("old-63s-8M", new ParallelsImageBuilder(16384, 63).AllocateEvery(7)));

        // 16 MiB at 256 KiB clusters, new magic.
        seeds.Add(Bare("ext-256K-16M", new ParallelsImageBuilder(32768, 512, ParallelsMagic.WithouFreSpacExt).Allocate([0, 1, 13, 63])));

        // 8 MiB at 63-sector clusters with the new magic (data_off rounded to a cluster).
        seeds.Add(Bare("ext-63s-8M", new ParallelsImageBuilder(16384, 63, ParallelsMagic.WithouFreSpacExt).AllocateEvery(11, 3)));

        // 32 MiB at 1 MiB clusters, new magic, format extension with a dirty bitmap cluster.
        var bits = new byte[64];
        bits[0] = 0b1000_0001;
        bits[63] = 0x80;
        seeds.Add(Bare("ext-1M-32M-bitmap", new ParallelsImageBuilder(65536, 2048, ParallelsMagic.WithouFreSpacExt)
        {
            Extension = new FormatExtensionSpec { DirtyBitmap = new DirtyBitmapSpec(BitmapId, 128, [L1Entry.Cluster(bits)]) },
        }.Allocate([0, 7, 31])));

        // 64 MiB at 1 MiB clusters, old magic, dirty bitmap (one all-dirty L1 entry) and an unknown TRANSIT feature.
        seeds.Add(Bare("old-1M-64M-bitmap-transit", new ParallelsImageBuilder(131072, 2048)
        {
            Extension = new FormatExtensionSpec
            {
                DirtyBitmap = new DirtyBitmapSpec(BitmapId, 1, [L1Entry.AllDirty, L1Entry.AllClean]),
                Features = [new ExtensionFeatureSpec(0x1122334455667788, ExtensionFeatureSpec.Transit, [1, 2, 3, 4, 5, 6, 7, 8, 9])],
            },
        }.Allocate([3, 60])));

        // 16 MiB at 256 KiB clusters, old magic, data_off 0 (computed), a closed-by-Parallels in_use tag.
        seeds.Add(Bare("old-256K-dataoff0", new ParallelsImageBuilder(32768, 512) { DataOffsetSectors = 0, InUse = ParallelsImageBuilder.Tag("pd17") }.Allocate([1, 2, 30])));

        // 64 MiB at 1 MiB clusters with nothing allocated: a fresh image of one sector.
        seeds.Add(Bare("old-1M-64M-empty", new ParallelsImageBuilder(131072, 2048) { InUse = ParallelsImageBuilder.InUseClosed }));

        // Bundle: one image.
        Img("single.hds", new ParallelsImageBuilder(32768, 512, ParallelsMagic.WithouFreSpacExt).Allocate([0, 5, 63]));
        seeds.Add(Bundle(
            "bundle-single",
            new DescriptorBuilder(32768).SingleStorage(512, (DescriptorBuilder.PredefinedTop, "Compressed", "single.hds")).Shot(DescriptorBuilder.PredefinedTop, Guid.Empty),
            "single.hds"));

        // Bundle: a 3-level chain, 1 MiB clusters below and a 256 KiB top (a Blocksize mismatch warning).
        Img("chain-base.hds", new ParallelsImageBuilder(32768, 2048) { Content = ParallelsImageBuilder.Pattern(1) }.Allocate([0, 5, 15]));
        Img("chain-mid.hds", new ParallelsImageBuilder(32768, 2048, ParallelsMagic.WithouFreSpacExt) { Content = ParallelsImageBuilder.Pattern(2) }.Allocate([5, 6]));
        Img("chain-top.hds", new ParallelsImageBuilder(32768, 512, ParallelsMagic.WithouFreSpacExt) { Content = ParallelsImageBuilder.Pattern(3) }.Allocate([0, 63]));
        seeds.Add(Bundle(
            "bundle-chain3",
            new DescriptorBuilder(32768).SingleStorage(2048, (G1, "Compressed", "chain-base.hds"), (G2, "Compressed", "chain-mid.hds"), (G3, "Compressed", "chain-top.hds")).Chain(G1, G2, G3),
            "chain-base.hds",
            "chain-mid.hds",
            "chain-top.hds"));

        // Bundle: a split disk of two storages, two snapshots, explicit TopGUID, unknown elements, CRLF, comments.
        Img("s0-base.hds", new ParallelsImageBuilder(16384, 512, ParallelsMagic.WithouFreSpacExt).Allocate([0, 31]));
        Img("s0-top.hds", new ParallelsImageBuilder(16384, 512, ParallelsMagic.WithouFreSpacExt) { Content = ParallelsImageBuilder.Pattern(4) }.Allocate([1]));
        Img("s1-base.hds", new ParallelsImageBuilder(32768, 512) { Content = ParallelsImageBuilder.Pattern(5) }.Allocate([0, 63]));
        Img("s1-top.hds", new ParallelsImageBuilder(32768, 63) { Content = ParallelsImageBuilder.Pattern(6) }.Allocate([10, 500]));
        var split = new DescriptorBuilder(49152) { TopGuid = G2, Crlf = true, Comments = true, UnknownElementsEverywhere = true };
        split.Storage(0, 16384, 512).Image(G1, "Compressed", "s0-base.hds").Image(G2, "Compressed", "s0-top.hds");
        split.Storage(16384, 49152, 512).Image(G1, "Compressed", "s1-base.hds").Image(G2, "Compressed", "s1-top.hds");
        split.Chain(G1, G2);
        seeds.Add(Bundle("bundle-split", split, "s0-base.hds", "s0-top.hds", "s1-base.hds", "s1-top.hds"));

        // Bundle: a raw root (Plain) with an expandable overlay.
        var raw = new byte[4 << 20];
        new Random(7).NextBytes(raw.AsSpan(0, 1 << 20));
        raw.AsSpan(0, 1 << 20).CopyTo(raw.AsSpan(3 << 20));
        File.WriteAllBytes(temp.Combine("plain-root.hds"), raw);
        Img("plain-top.hds", new ParallelsImageBuilder(8192, 2048, ParallelsMagic.WithouFreSpacExt) { Content = ParallelsImageBuilder.Pattern(8) }.Allocate([2]));
        seeds.Add(Bundle(
            "bundle-plain-root",
            new DescriptorBuilder(8192).SingleStorage(2048, (G1, "Plain", "plain-root.hds"), (DescriptorBuilder.PredefinedTop, "Compressed", "plain-top.hds")).Chain(G1, DescriptorBuilder.PredefinedTop),
            "plain-root.hds",
            "plain-top.hds"));

        return seeds;
    }
}
