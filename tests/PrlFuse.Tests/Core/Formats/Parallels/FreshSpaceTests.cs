using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.IO;
using PrlFuse.Tests.Core.IO;
using PrlFuse.Tests.Support;
using static PrlFuse.Tests.Core.Formats.Parallels.WriteTestSupport;

namespace PrlFuse.Tests.Core.Formats.Parallels;

/// <summary>
/// Space the top image grew in this session reads as zeros until written: a write into a new cluster there, over zeros
/// below, writes only its own bytes, and large aligned writes there go past the host page cache (O_DIRECT). Space that
/// was in the file before (leaked clusters) or that a failed write may have touched is never taken for zeros.
/// </summary>
[Trait("Needs", "Qemu")]
public sealed class FreshSpaceTests
{
    private const long Cluster = 1L << 20;

    [Fact]
    public void DirectWritesLandAndOnlyLargeAlignedOnesAreTaken()
    {
        using var temp = new TempFolder();
        string path = temp.Combine("f.bin");
        File.WriteAllBytes(path, new byte[4 << 20]);
        using var file = PositionalImageFile.Open(path, writable: true);
        Assert.True(file.EnableDirectWrites(), "O_DIRECT open refused on the test folder's filesystem");

        var random = new Random(7);
        byte[] source = new byte[(3 << 20) + 80];
        random.NextBytes(source);
        var payload = source.AsSpan(80); // unaligned in memory, like a FUSE request's payload
        Assert.True(file.TryWriteDirect(payload[..(256 << 10)], 512 << 10));
        Assert.True(file.TryWriteDirect(payload[..(3 << 20)], 3 << 20)); // larger than the bounce buffer, and past the end
        Assert.Equal((6L << 20), file.Length);

        Assert.False(file.TryWriteDirect(payload[..4096], 0), "a small write went direct");
        Assert.False(file.TryWriteDirect(payload[..(256 << 10)], (512 << 10) + 512), "an unaligned offset went direct");
        Assert.False(file.TryWriteDirect(payload[..((256 << 10) + 512)], 0), "an unaligned length went direct");

        var back = new byte[3 << 20];
        Assert.Equal(256 << 10, file.Read(back.AsSpan(0, 256 << 10), 512 << 10));
        Assert.True(back.AsSpan(0, 256 << 10).SequenceEqual(payload[..(256 << 10)]));
        Assert.Equal(3 << 20, file.Read(back, 3 << 20));
        Assert.True(back.AsSpan().SequenceEqual(payload[..(3 << 20)]));
        Assert.True(new byte[512 << 10].AsSpan().SequenceEqual(File.ReadAllBytes(path).AsSpan(0, 512 << 10)), "bytes before the first write changed");

        using var buffered = PositionalImageFile.Open(path, writable: true, exclusive: false, directWrites: false);
        Assert.False(buffered.EnableDirectWrites());
        Assert.False(buffered.TryWriteDirect(payload[..(256 << 10)], 0));
        using var readOnly = PositionalImageFile.Open(path, writable: false);
        Assert.False(readOnly.EnableDirectWrites());
    }

    [Fact]
    public void PartialWriteIntoFreshSpaceOverZerosWritesOnlyItsBytesDirect()
    {
        using var temp = new TempFolder();
        string image = CreateImage(temp, "top.hds");
        var log = new OpLog();
        long dataOffset;
        var model = new byte[64 << 20];
        var half = Pattern(512 << 10, 0x5A);
        using (var disk = VirtualDisk.Open(image, new DiskOpenOptions { ReadOnly = false, OpenFile = RecordingImageFile.Opener(log, _ => true) }))
        {
            dataOffset = ((ExpandableImage)disk.Top.Storages[0].TopLayer).DataOffsetBytes;
            disk.Top.Write(half, (3 * Cluster) + (256 << 10));
            half.CopyTo(model, (3 * Cluster) + (256 << 10));
            AssertWholeViewEquals(disk.Top, model, "after the write");
        }

        var dataWrites = DataWrites(log, dataOffset);
        var only = Assert.Single(dataWrites);
        Assert.Equal(half.Length, only.Data.Length);
        Assert.Equal(dataOffset + (256 << 10), only.Offset);
        Assert.True(only.Direct, "a 512 KiB aligned write into fresh space went through the page cache");
        Assert.Equal(model, QemuRaw(temp, image));
    }

    [Fact]
    public void PartialWriteOverDataBelowWritesTheWholeCluster()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [64 * 2048], 611);
        string topPath = TopPath(chain);
        byte[] model = chain.OracleView(1, temp.Path);
        byte[] below = chain.OracleView(0, temp.Path);
        var log = new OpLog();
        long dataOffset;
        long cluster;
        using (var disk = VirtualDisk.Open(chain.Bundle, new DiskOpenOptions { ReadOnly = false, OpenFile = RecordingImageFile.Opener(log, p => p == topPath) }))
        {
            var top = (ExpandableImage)disk.Top.Storages[0].TopLayer;
            dataOffset = top.DataOffsetBytes;
            cluster = top.ClusterBytes;

            // A cluster the top does not have, with data below in its first half; the write covers the second half.
            long target = Enumerable.Range(0, (int)(model.Length / cluster))
                .FirstOrDefault(c => top.Bat.GetHostOffset(c) == 0 && below.AsSpan((int)(c * cluster), (int)(cluster / 2)).ContainsAnyExcept((byte)0), -1);
            Assert.True(target >= 0, "the chain has no unallocated top cluster over data");
            var data = Pattern((int)(cluster / 2), 0xC3);
            disk.Top.Write(data, (target * cluster) + (cluster / 2));
            data.CopyTo(model, (target * cluster) + (cluster / 2));
            AssertWholeViewEquals(disk.Top, model, "after the write");
        }

        var only = Assert.Single(DataWrites(log, dataOffset));
        Assert.Equal(cluster, only.Data.Length);
        Assert.Equal(model, chain.OracleView(1, temp.Path));
    }

    [Fact]
    public void LeakedSpaceIsNotTakenForZeros()
    {
        using var temp = new TempFolder();
        string image = CreateImage(temp, "top.hds");
        Qemu.Write(image, "write -P 0x11 0 1M");

        // A leaked cluster full of old bytes after the last used one (what a crash leaves): the next allocation gets it.
        using (var stream = new FileStream(image, FileMode.Append))
        {
            stream.Write(Pattern((int)Cluster, 0xEE));
        }

        var log = new OpLog();
        var model = new byte[64 << 20];
        model.AsSpan(0, (int)Cluster).Fill(0x11);
        long dataOffset;
        using (var disk = VirtualDisk.Open(image, new DiskOpenOptions { ReadOnly = false, OpenFile = RecordingImageFile.Opener(log, _ => true) }))
        {
            dataOffset = ((ExpandableImage)disk.Top.Storages[0].TopLayer).DataOffsetBytes;
            var data = Pattern(512 << 10, 0x77);
            disk.Top.Write(data, (5 * Cluster) + (512 << 10));
            data.CopyTo(model, (5 * Cluster) + (512 << 10));
            AssertWholeViewEquals(disk.Top, model, "after the write");
        }

        var only = Assert.Single(DataWrites(log, dataOffset));
        Assert.Equal(dataOffset + Cluster, only.Offset);
        Assert.Equal(Cluster, only.Data.Length);
        Assert.Equal(model, QemuRaw(temp, image));
    }

    [Fact]
    public void SlotGivenBackAfterAFailedWriteIsNotTakenForZeros()
    {
        using var temp = new TempFolder();
        string image = CreateImage(temp, "top.hds");
        // Past the header and the BAT (64 MiB of 1 MiB clusters: 320 bytes): the first data write fails.
        var plan = new FaultPlan { FileName = "top.hds", Start = 4096, FailWrites = true, WriteHalfFirst = true, MaxHits = 1 };
        var model = new byte[64 << 20];
        using (var disk = VirtualDisk.Open(image, plan.Options(readOnly: false)))
        {
            // Cut short after half its bytes: the slot goes back, holding 256 KiB of 0xAB.
            Assert.Throws<IOException>(() => disk.Top.Write(Pattern(512 << 10, 0xAB), 2 * Cluster));
            Assert.Equal(1, plan.Hits);

            // The next new cluster gets the same slot; its first half must read as zeros, not as the failed write.
            var data = Pattern(512 << 10, 0x3C);
            disk.Top.Write(data, (7 * Cluster) + (512 << 10));
            data.CopyTo(model, (7 * Cluster) + (512 << 10));
            AssertWholeViewEquals(disk.Top, model, "after the failed and the good write");
        }

        Assert.Equal(model, QemuRaw(temp, image));
    }

    private static string CreateImage(TempFolder temp, string name)
    {
        string image = temp.Combine(name);
        Qemu.Create(image, "64M", clusterSize: "1M");
        return image;
    }

    private static byte[] Pattern(int length, byte value)
    {
        var data = new byte[length];
        data.AsSpan().Fill(value);
        return data;
    }

    private static List<WriteOp> DataWrites(OpLog log, long dataOffset) =>
        log.Snapshot().OfType<WriteOp>().Where(w => w.Offset >= dataOffset).ToList();

    private static byte[] QemuRaw(TempFolder temp, string image)
    {
        string raw = temp.Combine(Path.GetFileName(image) + ".raw");
        Qemu.Convert(image, raw);
        var check = Qemu.Check(image);
        Assert.True(check.ExitCode == 0, check.Stdout + check.Stderr);
        return File.ReadAllBytes(raw);
    }
}
