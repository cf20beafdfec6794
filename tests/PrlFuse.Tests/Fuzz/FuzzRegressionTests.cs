using System.Diagnostics;
using System.Text;
using PrlFuse.Core;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.Images;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Fuzz;

/// <summary>
/// Every case the fuzzer ever failed on: first as minimal inputs built by hand (what the bug was), then as the
/// original (seed, case index) pairs replayed through the harness.
/// </summary>
public sealed class FuzzRegressionTests : IDisposable
{
    private readonly TempFolder _temp = new("prlfuse-fuzz-regress");

    public void Dispose() => _temp.Dispose();

    private string SingleBundle(Func<DescriptorBuilder, DescriptorBuilder>? edit = null, long sectors = 32768, ParallelsImageBuilder? image = null)
    {
        string folder = Directory.CreateDirectory(_temp.Combine("b" + Guid.NewGuid().ToString("N")[..6])).FullName;
        (image ?? new ParallelsImageBuilder(32768, 512, ParallelsMagic.WithouFreSpacExt).Allocate([0, 5, 63])).Build(Path.Combine(folder, "single.hds"));
        var d = new DescriptorBuilder(sectors).SingleStorage(512, (DescriptorBuilder.PredefinedTop, "Compressed", "single.hds")).Shot(DescriptorBuilder.PredefinedTop, Guid.Empty);
        (edit?.Invoke(d) ?? d).WriteTo(folder);
        return folder;
    }

    /// <summary>
    /// Found: seed 1 cases 121 and 180. 100,000 nested unknown elements made XDocument.Load take 14 s (500,000: over
    /// two minutes) for a 4 MiB descriptor. Fixed: a streaming pass refuses more than 64 levels first.
    /// </summary>
    [Fact]
    public void Deeply_nested_descriptor_is_refused_at_once()
    {
        var deep = new StringBuilder();
        for (int i = 0; i < 100_000; i++)
        {
            deep.Append("<a>");
        }

        for (int i = 0; i < 100_000; i++)
        {
            deep.Append("</a>");
        }

        string folder = SingleBundle();
        string xml = Path.Combine(folder, "DiskDescriptor.xml");
        File.WriteAllText(xml, File.ReadAllText(xml).Replace("<Snapshots>", "<Snapshots>" + deep, StringComparison.Ordinal));
        var clock = Stopwatch.StartNew();
        var e = Assert.Throws<DescriptorException>(() => VirtualDisk.Open(folder).Dispose());
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(2), $"took {clock.Elapsed}");
        Assert.Contains("nested more than 64 deep", e.Message, StringComparison.Ordinal);

        // Ordinary unknown nesting (a vendor's own elements) still opens.
        string ok = SingleBundle(d => d.AddElement("Snapshots", "<V><W><X><Y><Z><Deeper>1</Deeper></Z></Y></X></W></V>"));
        using var disk = VirtualDisk.Open(ok);
        Assert.Equal(32768 * 512L, disk.Size);
    }

    /// <summary>
    /// Found: seed 1 case 198. A descriptor may claim a disk far larger than its images (a warning, not an error);
    /// CountAllocatedBytes then walked every cluster past the BAT: 2^32 sectors took 5 s, 2^54 forever. Fixed:
    /// past its BAT an image answers with one unallocated run.
    /// </summary>
    [Fact]
    public void Disk_far_larger_than_its_image_counts_allocation_at_once()
    {
        const long sectors = (long.MaxValue / 512) - 1;
        string folder = SingleBundle(d =>
        {
            d.Cylinders = sectors;
            d.Heads = 1;
            d.SectorsPerTrack = 1;
            return d;
        }, sectors);
        using var disk = VirtualDisk.Open(folder);
        Assert.Contains(disk.Warnings, w => w.Contains("less than its storage", StringComparison.Ordinal));
        var clock = Stopwatch.StartNew();
        Assert.Equal(3 * 256 * 1024L, disk.Top.CountAllocatedBytes());
        long run = disk.Top.GetAllocationStatus(64 * 256 * 1024L, disk.Size, out bool allocated);
        Assert.False(allocated);
        Assert.Equal(disk.Size - (64 * 256 * 1024L), run);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(1), $"took {clock.Elapsed}");

        var buffer = new byte[4096];
        Assert.Equal(4096, disk.Top.Read(buffer, disk.Size - 8192));
        Assert.All(buffer, b => Assert.Equal(0, b));
    }

    /// <summary>
    /// Found: seed 1 cases 275, 294, 731. Descriptor text quoted in an error ("&lt;GUID&gt; ... is "{...}\n{x}"") or a
    /// path with a newline split the one-line error over several lines. Fixed: PrlFuseException escapes control
    /// characters.
    /// </summary>
    [Theory]
    [InlineData("GUID", "{5fbaabe3-6958-40ff-92a7-860e329aab41}\n{x}")]
    [InlineData("Start", "0\r\n  1")]
    [InlineData("File", "no\nsuch\tfile.hds")]
    public void Control_characters_in_descriptor_values_keep_errors_on_one_line(string element, string value)
    {
        string folder = SingleBundle(d => d.SetValue(element, value));
        var e = Assert.ThrowsAny<PrlFuseException>(() => VirtualDisk.Open(folder).Dispose());
        Assert.DoesNotContain('\n', e.Message);
        Assert.DoesNotContain('\r', e.Message);
        Assert.DoesNotContain('\n', e.Problem);
        Assert.Contains("\\n", e.Message, StringComparison.Ordinal);
    }

    /// <summary>
    /// Found: seed 1 cases 890 and 1399. With the empty-image flag set, reads ignore the BAT but writes went into the
    /// clusters it still listed (and new ones), so nothing written could be read back. Fixed: the first write clears
    /// the image for real (BAT zeroed on disk, then the flag dropped).
    /// </summary>
    [Trait("Needs", "Qemu")]
    [Fact]
    public void Writes_to_an_image_with_the_empty_flag_read_back()
    {
        string path = _temp.Combine("empty-flag.hds");
        new ParallelsImageBuilder(16384, 63) { Flags = ParallelsHeader.FlagEmpty }.AllocateEvery(3).Build(path);
        var data = new byte[100_000];
        new Random(3).NextBytes(data);
        const long offset = 40_000;
        using (var disk = VirtualDisk.Open(path, new DiskOpenOptions { ReadOnly = false }))
        {
            var before = new byte[1 << 20];
            disk.Top.Read(before, 0);
            Assert.All(before, b => Assert.Equal(0, b));
            disk.Top.Write(data, offset);
            var back = new byte[data.Length + 64_000];
            disk.Top.Read(back, offset - 32_000);
            Assert.All(back.AsSpan(0, 32_000).ToArray(), b => Assert.Equal(0, b));
            Assert.Equal(data, back.AsSpan(32_000, data.Length).ToArray());
            Assert.All(back.AsSpan(32_000 + data.Length).ToArray(), b => Assert.Equal(0, b));
        }

        using (var again = VirtualDisk.Open(path))
        {
            var layer = (ExpandableImage)again.Storages[0].Images.Values.Single();
            Assert.False(layer.Header.IsEmpty);
            var back = new byte[data.Length];
            again.Top.Read(back, offset);
            Assert.Equal(data, back);
            Assert.Equal(((offset + data.Length - 1) / (63 * 512)) - (offset / (63 * 512)) + 1, layer.CountAllocatedClusters());
        }

        var check = Qemu.Check(path);
        Assert.True(check.ExitCode == 0, check.Stdout + check.Stderr);
    }

    /// <summary>
    /// Found: seed 2 case 3301. tracks = 787967 (385 MiB clusters) with one BAT entry is a valid header for a tiny
    /// file; a first write into a cluster built the whole cluster in memory (a 512 MiB buffer). Fixed: images with
    /// clusters over 16 MiB are served read-only.
    /// </summary>
    [Fact]
    public void Image_with_huge_clusters_is_served_read_only()
    {
        string path = _temp.Combine("huge-clusters.hds");
        new ParallelsImageBuilder(787967, 787967).Build(path);
        Assert.True(new FileInfo(path).Length < 4096);
        using var disk = VirtualDisk.Open(path, new DiskOpenOptions { ReadOnly = false });
        Assert.False(disk.Top.IsWritable);
        Assert.Contains(disk.Warnings, w => w.Contains("larger than PrlFuse writes", StringComparison.Ordinal));
        Assert.Throws<InvalidOperationException>(() => disk.Top.Write(new byte[512], 0));
        var buffer = new byte[65536];
        Assert.Equal(buffer.Length, disk.Top.Read(buffer, 1 << 28));
    }

    /// <summary>
    /// Found: seed 20250101 cases 1406, 12072, 16298, 18833. An image whose data_off lies past the end of its file (an
    /// image cut short, or an empty one with a data_off beyond its BAT) opened for writing: the reader's data area then
    /// starts at the minimum, new clusters went there, and on reopening (the file now reaching data_off) they lay before
    /// the data area and read as damaged. Fixed: such an image is damage, served read-only until a repair.
    /// </summary>
    [Fact]
    public void Image_whose_data_off_lies_past_its_end_is_not_written()
    {
        string path = _temp.Combine("data-off-past-end.hds");
        var built = new ParallelsImageBuilder(2048 * 64, 2048).Build(path);
        Assert.Equal(0u, built.ReadBatEntry(0));
        built.SetDataOffsetField((uint)(new FileInfo(path).Length / 512) + 1);
        using (var disk = VirtualDisk.Open(path, new DiskOpenOptions { ReadOnly = true }))
        {
            Assert.Contains(disk.Warnings, w => w.Contains("lies past the end of the file", StringComparison.Ordinal));
            var buffer = new byte[4096];
            Assert.Equal(buffer.Length, disk.Top.Read(buffer, 0));
            Assert.All(buffer, b => Assert.Equal(0, b));
        }

        var refused = Assert.Throws<ImageFormatException>(() => VirtualDisk.Open(path, new DiskOpenOptions { ReadOnly = false }).Dispose());
        Assert.Contains("data_off past the end of the file", refused.Problem, StringComparison.Ordinal);
        Assert.Contains("prlfuse check --repair", refused.Problem, StringComparison.Ordinal);
    }

    /// <summary>The original failing cases, replayed through the harness (they depend on the mutators as they are).</summary>
    [Theory]
    [InlineData(1, 121)]
    [InlineData(1, 180)]
    [InlineData(1, 198)]
    [InlineData(1, 275)]
    [InlineData(1, 294)]
    [InlineData(1, 731)]
    [InlineData(1, 890)]
    [InlineData(1, 1399)]
    [InlineData(2, 1003)]
    [InlineData(2, 3301)]
    [InlineData(20250101, 1406)]
    [InlineData(20250101, 12072)]
    [InlineData(20250101, 16298)]
    [InlineData(20250101, 18833)]
    public void Fuzz_case_that_once_failed(int seed, int index)
    {
        var c = FuzzCase.Generate(FuzzSeeds.All, seed, index);
        using var runner = new FuzzRunner();
        var result = runner.Run(c);
        Assert.True(result.Outcome != CaseOutcome.Finding, $"{c.Id}\n{string.Join("\n", c.Mutations)}\n{result.Finding}");
    }

    /// <summary>
    /// Found: QED seed 20250101 cases 802, 1350, 2178, 2382, 4145 and more. A QED L2 entry pointing at the L1 table or
    /// an L2 table, or at a data cluster another entry also maps, let a write through it overwrite the tables (reads
    /// then failed) or show through the other guest cluster. Fixed: such entries are damaged (EIO), the tables intact.
    /// </summary>
    [Trait("Needs", "Qemu")]
    [Theory]
    [InlineData("l2-table")]
    [InlineData("l1-table")]
    [InlineData("shared")]
    public void Qed_entry_on_a_table_or_shared_is_damaged_not_written(string target)
    {
        string folder = _temp.Path;
        string image = _temp.Combine($"alias-{target}.qed");
        PrlFuse.Tests.Core.Formats.Qcow2.Qcow2Oracle.Img(folder, "create", "-q", "-f", "qed", "-o", "cluster_size=4096", image, "4M");
        PrlFuse.Tests.Core.Formats.Qcow2.Qcow2Oracle.Io(folder, "qed", image, "write -P 1 0 8k");
        byte[] bytes = File.ReadAllBytes(image);
        Assert.True(PrlFuse.Core.Formats.Qed.QedHeader.TryRead(bytes, out var header, out _));
        long l2 = (long)System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan((int)header.L1TableOffset));
        ulong data0 = System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan((int)l2));
        ulong aliased = target switch { "l2-table" => (ulong)l2, "l1-table" => (ulong)header.L1TableOffset, _ => data0 };
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan((int)l2 + 8), aliased);
        File.WriteAllBytes(image, bytes);

        using (var disk = VirtualDisk.Open(image, new DiskOpenOptions { ReadOnly = false, CacheBytes = 0 }))
        {
            Assert.ThrowsAny<IOException>(() => disk.Top.Write(new byte[4096], 4096));
        }

        // Read-only, the tables and the data cluster are as they were: nothing was written through the bad entry.

        using var again = VirtualDisk.Open(image, new DiskOpenOptions { CacheBytes = 0 });
        var back = new byte[4096];
        again.Top.Read(back, 0);
        Assert.All(back, b => Assert.Equal(1, b));
    }

    /// <summary>
    /// Found: QED seed 20250101 case 178. A backing file name of /proc/self/mem (a regular file that cannot be read)
    /// made the open throw a bare IOException. Fixed: refused with a one-line message naming the file.
    /// </summary>
    [Trait("Needs", "Qemu")]
    [Fact]
    public void Unreadable_backing_file_is_refused_by_name()
    {
        string image = _temp.Combine("proc-backed.qed");
        PrlFuse.Tests.Core.Formats.Qcow2.Qcow2Oracle.Img(_temp.Path, "create", "-q", "-f", "qed", "-o", "cluster_size=4096", "-u", "-b", "/proc/self/mem", "-F", "qed", image, "1M");
        var e = Assert.ThrowsAny<PrlFuseException>(() => VirtualDisk.Open(image).Dispose());
        Assert.Contains("/proc/self/mem", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("\n", e.Message, StringComparison.Ordinal);
    }

    [Trait("Needs", "Qemu")]
    [Theory]
    [InlineData(20250101, 178)]
    [InlineData(20250101, 802)]
    [InlineData(20250101, 1350)]
    [InlineData(20250101, 2382)]
    [InlineData(20250101, 4914)]
    [InlineData(20250101, 5661)]
    public void Qed_fuzz_case_that_once_failed(int seed, int index)
    {
        var c = FuzzCase.Generate(FuzzSeeds.Qed, seed, index);
        using var runner = new FuzzRunner();
        var result = runner.Run(c);
        Assert.True(result.Outcome != CaseOutcome.Finding, $"{c.Id}\n{string.Join("\n", c.Mutations)}\n{result.Finding}");
    }
}
