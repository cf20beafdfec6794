using System.Buffers.Binary;
using PrlFuse.Core;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.Images;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.IO;

/// <summary>
/// I/O errors injected under the Core (a wrapping ImageFile): a failing range of a file fails exactly the reads and
/// writes that touch it, with an IOException that carries the errno and never with wrong data; the disk keeps
/// serving; and after a failed write or flush the image is still consistent (qemu-img check) with earlier data intact.
/// </summary>
[Trait("Needs", "Qemu")]
public sealed class IoFaultTests : IDisposable
{
    private const long Cluster = 256 * 1024;
    private const long DiskSectors = 32768; // 16 MiB: 64 clusters of 256 KiB
    private static readonly Guid Base = new("22222222-3333-4444-5555-666666666661");

    private readonly TempFolder _temp = new("prlfuse-faults");

    public void Dispose() => _temp.Dispose();

    /// <summary>No cluster leaked: the file ends right after its last used cluster and every slot before is used.</summary>
    private static void AssertCompact(string path)
    {
        var bytes = File.ReadAllBytes(path);
        uint tracks = BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(28));
        uint count = BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(32));
        long dataOff = BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(48)) * 512L;
        int used = 0;
        for (int i = 0; i < count; i++)
        {
            used += BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(64 + (4 * i))) != 0 ? 1 : 0;
        }

        Assert.True(bytes.Length == dataOff + (used * tracks * 512L), $"{path}: {bytes.Length} bytes for {used} clusters after data_off {dataOff}: clusters leaked");
    }

    private static IOException AssertIoError(Action action, int errno = FaultPlan.EIO)
    {
        var e = Assert.ThrowsAny<IOException>(action);
        Assert.Equal(errno, e.HResult);
        return e;
    }

    private static void AssertRange(SnapshotView view, long offset, int length, Func<long, byte> expected)
    {
        var buffer = new byte[length];
        Assert.Equal(length, view.Read(buffer, offset));
        for (int i = 0; i < length; i++)
        {
            if (buffer[i] != expected(offset + i))
            {
                Assert.Fail($"guest byte {offset + i} is 0x{buffer[i]:x2}, expected 0x{expected(offset + i):x2}");
            }
        }
    }

    /// <summary>A base with every cluster allocated under a top with a few, as a bundle.</summary>
    private (string Folder, BuiltImage BaseImage, BuiltImage Top) Chain()
    {
        string folder = Directory.CreateDirectory(_temp.Combine("chain")).FullName;
        var baseImage = new ParallelsImageBuilder(DiskSectors, 512, ParallelsMagic.WithouFreSpacExt) { Content = ParallelsImageBuilder.Pattern(1) }
            .AllocateAll().Build(Path.Combine(folder, "base.hds"));
        var top = new ParallelsImageBuilder(DiskSectors, 512, ParallelsMagic.WithouFreSpacExt) { Content = ParallelsImageBuilder.Pattern(2), ShuffleHostOrder = false }
            .Allocate([0, 10]).Build(Path.Combine(folder, "top.hds"));
        new DescriptorBuilder(DiskSectors)
            .SingleStorage(512, (Base, "Compressed", "base.hds"), (DescriptorBuilder.PredefinedTop, "Compressed", "top.hds"))
            .Chain(Base, DescriptorBuilder.PredefinedTop)
            .WriteTo(folder);
        return (folder, baseImage, top);
    }

    private static Func<long, byte> ChainContent(BuiltImage baseImage, BuiltImage top) =>
        g => top.IsAllocated(g / Cluster) ? top.ExpectedByte(g) : baseImage.ExpectedByte(g);

    [Theory]
    [InlineData(0L)]
    [InlineData(DiskOpenOptions.DefaultCacheBytes)]
    public void Read_error_fails_only_reads_of_the_faulty_range(long cacheBytes)
    {
        string path = _temp.Combine("img.hds");
        var image = new ParallelsImageBuilder(DiskSectors, 512, ParallelsMagic.WithouFreSpacExt).AllocateAll().Build(path);
        long host = image.HostOffsetOf(5);
        var plan = new FaultPlan { FileName = "img.hds", Start = host + 70_000, End = host + 75_000, FailReads = true };
        using var disk = VirtualDisk.Open(path, plan.Options(readOnly: true, cacheBytes));
        var view = disk.Top;
        long faultyGuest = (5 * Cluster) + 70_000;

        AssertRange(view, 0, 65536, image.ExpectedByte);
        AssertRange(view, 4 * Cluster, (int)Cluster, image.ExpectedByte);

        // Any read touching the faulty bytes fails, whether it starts, ends or lies inside them; never with data.
        AssertIoError(() => view.Read(new byte[512], faultyGuest));
        AssertIoError(() => view.Read(new byte[4096], faultyGuest - 4000));
        AssertIoError(() => view.Read(new byte[1 << 20], 4 * Cluster));
        AssertIoError(() => view.Read(new byte[1], faultyGuest + 4999));
        AssertIoError(() => view.Read(new byte[512], faultyGuest)); // again: nothing was cached from the failure

        // The same cluster away from the fault (and outside the 64 KiB cache block that holds it) reads fine.
        AssertRange(view, (5 * Cluster) + (128 * 1024), 4096, image.ExpectedByte);
        if (cacheBytes == 0)
        {
            AssertRange(view, faultyGuest - 4096, 4096, image.ExpectedByte);
            AssertRange(view, faultyGuest + 5000, 4096, image.ExpectedByte);
        }

        // The rest of the disk still serves, and the allocation map needs no data reads.
        CoreReads(view, image, exclude: (5 * Cluster, 6 * Cluster));
        Assert.Equal(64 * Cluster, view.CountAllocatedBytes());
        Assert.True(plan.Hits >= 5);

        // The medium recovers: the same bytes now read right.
        plan.Armed = false;
        AssertRange(view, 4 * Cluster, (int)(3 * Cluster), image.ExpectedByte);
    }

    private static void CoreReads(SnapshotView view, BuiltImage image, (long Start, long End) exclude)
    {
        var random = new Random(5);
        for (int i = 0; i < 60; i++)
        {
            int length = random.Next(1, 200_000);
            long offset = random.NextInt64(0, view.Size - length);
            if (offset < exclude.End && offset + length > exclude.Start)
            {
                continue;
            }

            AssertRange(view, offset, length, image.ExpectedByte);
        }
    }

    /// <summary>
    /// A read error in the base: reads through the top fail only where the top does not hold the data; a partial
    /// write there (copy-on-write needs the base cluster) fails cleanly, leaks nothing, and the top stays consistent.
    /// </summary>
    [Fact]
    public void Read_error_below_fails_reads_and_copy_on_write_of_that_cluster_only()
    {
        var (folder, baseImage, top) = Chain();
        long host = baseImage.HostOffsetOf(7);
        var plan = new FaultPlan { FileName = "base.hds", Start = host, End = host + Cluster, FailReads = true };
        var expected = ChainContent(baseImage, top);
        var written = new List<(long Offset, byte[] Data)>();
        using (var disk = VirtualDisk.Open(folder, plan.Options(readOnly: false)))
        {
            var view = disk.Top;
            AssertRange(view, 0, (int)Cluster, expected); // top's own cluster
            AssertRange(view, 6 * Cluster, (int)Cluster, expected); // base's cluster 6
            AssertIoError(() => view.Read(new byte[100], (7 * Cluster) + 5));

            var a = Fill(10_000, 1);
            view.Write(a, (3 * Cluster) + 100); // copy-on-write from a healthy base cluster
            written.Add(((3 * Cluster) + 100, a));

            AssertIoError(() => view.Write(Fill(10_000, 2), (7 * Cluster) + 100));
            AssertIoError(() => view.Read(new byte[100], (7 * Cluster) + 5));

            var b = Fill(20_000, 3);
            view.Write(b, (9 * Cluster) + 5000);
            written.Add(((9 * Cluster) + 5000, b));

            // A whole-cluster write needs nothing from below, so it succeeds even over the bad base cluster.
            var c = Fill((int)Cluster, 4);
            view.Write(c, 7 * Cluster);
            written.Add((7 * Cluster, c));
            AssertWritten(view, written, expected);
            view.Flush();
        }

        Qemu.AssertClean(Path.Combine(folder, "top.hds"));
        AssertCompact(Path.Combine(folder, "top.hds"));
        using var again = VirtualDisk.Open(folder);
        AssertWritten(again.Top, written, expected);
    }

    private static byte[] Fill(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    /// <summary>Checks each written range plus a margin around it against the writes overlaid on the old content.</summary>
    private static void AssertWritten(SnapshotView view, List<(long Offset, byte[] Data)> written, Func<long, byte> old)
    {
        byte Expected(long g)
        {
            for (int i = written.Count - 1; i >= 0; i--)
            {
                var (o, d) = written[i];
                if (g >= o && g < o + d.Length)
                {
                    return d[g - o];
                }
            }

            return old(g);
        }

        foreach (var (offset, data) in written)
        {
            long from = Math.Max(0, offset - 3000);
            long to = Math.Min(view.Size, offset + data.Length + 3000);
            AssertRange(view, from, (int)(to - from), Expected);
        }
    }

    /// <summary>
    /// A write error in the top: an in-place write to an allocated cluster and an allocating write both fail with
    /// EIO; what was there before is intact, other writes keep working, and the closed image is clean and compact.
    /// </summary>
    [Fact]
    public void Write_error_fails_the_write_and_leaves_the_image_consistent()
    {
        var (folder, baseImage, top) = Chain();
        string topPath = Path.Combine(folder, "top.hds");
        long topLength = new FileInfo(topPath).Length;
        long hostOf10 = top.HostOffsetOf(10);
        var expected = ChainContent(baseImage, top);
        var written = new List<(long Offset, byte[] Data)>();

        // First: writes into cluster 10's host bytes fail (in-place writes).
        var plan = new FaultPlan { FileName = "top.hds", Start = hostOf10 + 1000, End = hostOf10 + 2000, FailWrites = true };
        using (var disk = VirtualDisk.Open(folder, plan.Options(readOnly: false)))
        {
            var view = disk.Top;
            var a = Fill(5000, 1);
            view.Write(a, (2 * Cluster) + 10);
            written.Add(((2 * Cluster) + 10, a));

            AssertIoError(() => view.Write(Fill(4000, 2), (10 * Cluster) + 500));
            AssertWritten(view, written, expected);
            AssertRange(view, 10 * Cluster, (int)Cluster, expected); // the failed write changed nothing

            var b = Fill(3000, 3);
            view.Write(b, (10 * Cluster) + 5000); // same cluster, outside the bad bytes
            written.Add(((10 * Cluster) + 5000, b));
            view.Flush();
        }

        Qemu.AssertClean(topPath);
        AssertCompact(topPath);

        // Then: every write past the current end fails, so allocations fail; a transient error recovers.
        topLength = new FileInfo(topPath).Length;
        var grow = new FaultPlan { FileName = "top.hds", Start = topLength, FailWrites = true };
        using (var disk = VirtualDisk.Open(folder, grow.Options(readOnly: false)))
        {
            var view = disk.Top;
            AssertIoError(() => view.Write(Fill(1000, 4), (20 * Cluster) + 7));
            AssertIoError(() => view.Write(Fill((int)Cluster, 5), 21 * Cluster));
            AssertWritten(view, written, expected);
            AssertRange(view, 20 * Cluster, (int)(2 * Cluster), expected);

            var c = Fill(2000, 6);
            view.Write(c, (2 * Cluster) + 20_000); // an allocated cluster: in place, before the end
            written.Add(((2 * Cluster) + 20_000, c));

            grow.Armed = false;
            var d = Fill(1000, 7);
            view.Write(d, (20 * Cluster) + 7);
            written.Add(((20 * Cluster) + 7, d));
            AssertWritten(view, written, expected);
        }

        Qemu.AssertClean(topPath);
        AssertCompact(topPath);
        using var again = VirtualDisk.Open(folder);
        AssertWritten(again.Top, written, expected);
        Assert.Empty(again.Warnings);
    }

    /// <summary>
    /// A BAT write that fails during Flush must leave the entry to be written again: the next Flush (or the close)
    /// makes it durable, so data written before the error is never silently lost.
    /// </summary>
    [Fact]
    public void Bat_write_error_in_flush_is_retried_by_the_next_flush()
    {
        var (folder, baseImage, top) = Chain();
        string topPath = Path.Combine(folder, "top.hds");
        var expected = ChainContent(baseImage, top);
        var plan = new FaultPlan { FileName = "top.hds", Start = 64, End = 64 + (4 * 64), FailWrites = true, MaxHits = 1 };
        var data = Fill(50_000, 1);
        using (var disk = VirtualDisk.Open(folder, plan.Options(readOnly: false)))
        {
            disk.Top.Write(data, (30 * Cluster) + 1);
            AssertIoError(() => disk.Top.Flush());
            disk.Top.Flush();
            Assert.Equal(1, plan.Hits);
        }

        Qemu.AssertClean(topPath);
        using var again = VirtualDisk.Open(folder);
        AssertWritten(again.Top, [((30 * Cluster) + 1, data)], expected);
    }

    /// <summary>
    /// The first write marks the image open (in_use "Ynot"); when that header write fails, the write fails, and a
    /// later successful session must still restore the original in_use on close (not "Ynot").
    /// </summary>
    [Fact]
    public void Header_write_error_on_first_write_does_not_leave_the_image_unclean()
    {
        var (folder, baseImage, top) = Chain();
        string topPath = Path.Combine(folder, "top.hds");
        uint inUseBefore = BinaryPrimitives.ReadUInt32LittleEndian(File.ReadAllBytes(topPath).AsSpan(44));
        var expected = ChainContent(baseImage, top);
        var plan = new FaultPlan { FileName = "top.hds", Start = 0, End = 64, FailWrites = true, MaxHits = 1 };
        var data = Fill(3000, 9);
        using (var disk = VirtualDisk.Open(folder, plan.Options(readOnly: false)))
        {
            AssertIoError(() => disk.Top.Write(data, 100));
            disk.Top.Write(data, 100);
            AssertWritten(disk.Top, [(100, data)], expected);
        }

        Assert.Equal(inUseBefore, BinaryPrimitives.ReadUInt32LittleEndian(File.ReadAllBytes(topPath).AsSpan(44)));
        Qemu.AssertClean(topPath);
        using var again = VirtualDisk.Open(folder, new DiskOpenOptions { ReadOnly = false });
        Assert.False(((ExpandableImage)again.Storages[0].Images[DescriptorBuilder.PredefinedTop]).WasUnclean);
        Assert.True(again.Top.IsWritable);
        AssertWritten(again.Top, [(100, data)], expected);
    }

    /// <summary>fdatasync failing in Flush: the error reaches the caller; the next Flush and the close work.</summary>
    [Fact]
    public void Sync_error_in_flush_is_reported_and_the_next_flush_works()
    {
        var (folder, baseImage, top) = Chain();
        string topPath = Path.Combine(folder, "top.hds");
        var expected = ChainContent(baseImage, top);
        var plan = new FaultPlan { FileName = "top.hds", FailFlush = true, MaxHits = 1, Armed = false };
        var data = Fill(70_000, 5);
        using (var disk = VirtualDisk.Open(folder, plan.Options(readOnly: false)))
        {
            disk.Top.Write(data, (40 * Cluster) - 1000);
            plan.Armed = true;
            AssertIoError(() => disk.Top.Flush());
            disk.Top.Flush();
        }

        Qemu.AssertClean(topPath);
        using var again = VirtualDisk.Open(folder);
        AssertWritten(again.Top, [((40 * Cluster) - 1000, data)], expected);
    }

    /// <summary>
    /// The close itself failing (the final flush cannot write the BAT): Dispose reports it as a one-line
    /// PrlFuseException, and the image stays marked open ("Ynot"), so it is reopened read-only until repaired
    /// rather than trusted.
    /// </summary>
    [Fact]
    public void Close_error_is_reported_and_the_image_stays_marked_unclean()
    {
        var (folder, _, _) = Chain();
        var plan = new FaultPlan { FileName = "top.hds", Start = 64, End = 64 + (4 * 64), FailWrites = true };
        var disk = VirtualDisk.Open(folder, plan.Options(readOnly: false));
        disk.Top.Write(Fill(1000, 1), 50 * Cluster);
        var e = Assert.ThrowsAny<PrlFuseException>(disk.Dispose);
        Assert.DoesNotContain('\n', e.Message);
        Assert.Contains("closing the disk failed", e.Message, StringComparison.Ordinal);

        using var again = VirtualDisk.Open(folder, new DiskOpenOptions { ReadOnly = false });
        Assert.True(((ExpandableImage)again.Storages[0].Images[DescriptorBuilder.PredefinedTop]).WasUnclean);
        Assert.False(again.Top.IsWritable);
    }

    /// <summary>A read error in the header or BAT while opening is a clean error naming the file, not a crash.</summary>
    [Theory]
    [InlineData(0L, 64L)]
    [InlineData(64L, 100L)]
    public void Read_error_while_opening_is_a_clean_error(long start, long end)
    {
        var (folder, _, _) = Chain();
        var plan = new FaultPlan { FileName = "base.hds", Start = start, End = end, FailReads = true };
        var e = Assert.ThrowsAny<Exception>(() => VirtualDisk.Open(folder, plan.Options(readOnly: true)).Dispose());
        Assert.True(e is IOException or PrlFuseException, e.ToString());
        Assert.Contains("base.hds", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', e.Message);
    }
}
