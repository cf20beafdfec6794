using PrlFuse.Core;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.Management;
using PrlFuse.Tests.Support;
using static PrlFuse.Tests.Core.Management.ManagementTestSupport;

namespace PrlFuse.Tests.Core.Management;

/// <summary>
/// 'resize' against QEMU as the oracle: after a grow or shrink every image passes qemu-img check, has the new virtual
/// size, and every view equals QEMU's view of the same chain, which is the old view with a zero tail.
/// </summary>
[Trait("Needs", "Qemu")]
public sealed class ResizeTests
{
    [Theory]
    [InlineData(501)]
    [InlineData(502)]
    public void GrowingAChainKeepsEveryViewAndZerosTheTail(int seed)
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 3, [16 * 2048], seed);
        var before = OracleViews(chain, temp.Path);
        long size = 80L << 20;

        var result = DiskResizer.Resize(chain.Bundle, size, shrink: false);

        Assert.Equal(16L << 20, result.OldBytes);
        AssertQemuCleanAndSized(chain, size);
        AssertViews(chain, before, size, temp.Path, "grown");
        var d = DescriptorParser.ParseFile(Path.Combine(chain.Bundle, "DiskDescriptor.xml"));
        Assert.Equal(size / 512, d.Parameters.DiskSizeSectors);
        Assert.Equal(size / 512, d.Storages[0].EndSector);
        Assert.Equal(d.Parameters.DiskSizeSectors, d.Parameters.Cylinders * d.Parameters.Heads * d.Parameters.Sectors);
        Assert.Contains("<Name>oracle</Name>", File.ReadAllText(Path.Combine(chain.Bundle, "DiskDescriptor.xml")), StringComparison.Ordinal);
        Assert.Equal(16L << 20, DescriptorParser.ParseFile(Path.Combine(chain.Bundle, "DiskDescriptor.xml.Backup")).DiskSizeBytes);
    }

    [Fact]
    public void ARunAgainAfterAKillReusesTheCopiesTheKilledRunLeftPastTheData()
    {
        // A resize killed while it copied clusters out of the BAT's way leaves copies no entry points at past the data;
        // the next run puts its copies there again instead of after them, so the image ends where an uninterrupted run
        // ends it (the kill -9 test found the leak).
        using var temp = new TempFolder();
        var clean = SmallClusterChain(temp.Folder("clean"), 8 << 20);
        var killed = SmallClusterChain(temp.Folder("killed"), 8 << 20);
        string cleanRoot = Path.Combine(clean.Bundle, clean.Levels[0].Files[0]);
        string killedRoot = Path.Combine(killed.Bundle, killed.Levels[0].Files[0]);
        Assert.Equal(File.ReadAllBytes(cleanRoot), File.ReadAllBytes(killedRoot));
        var before = OracleViews(killed, temp.Path);
        using (var stream = new FileStream(killedRoot, FileMode.Append))
        {
            stream.Write(new byte[8 * 4096].Select((_, i) => (byte)(i % 251)).ToArray());
        }

        long size = 256L << 20;
        DiskResizer.Resize(clean.Bundle, size, shrink: false);
        DiskResizer.Resize(killed.Bundle, size, shrink: false);

        Assert.Equal(new FileInfo(cleanRoot).Length, new FileInfo(killedRoot).Length);
        AssertQemuCleanAndSized(killed, size);
        AssertViews(killed, before, size, temp.Path, "grown over a killed run's copies");
    }

    [Fact]
    public void GrowingMovesTheDataClustersThatLieWhereTheLargerBatGoes()
    {
        using var temp = new TempFolder();
        var chain = SmallClusterChain(temp.Path, 8 << 20);
        string root = Path.Combine(chain.Bundle, chain.Levels[0].Files[0]);
        var header = ReadHeader(root);
        long dataOff = header.DataOffsetSectors * 512L;
        var before = OracleViews(chain, temp.Path);
        long size = 256L << 20;

        DiskResizer.Resize(chain.Bundle, size, shrink: false);

        var after = ReadHeader(root);
        Assert.True(after.DataOffsetSectors * 512L >= FieldLocations.BatEnd(after.BatEntries), "data_off lies inside the grown BAT");
        Assert.True(after.DataOffsetSectors > header.DataOffsetSectors, "the data area did not move: no cluster was in the way, so the test shows nothing");
        Assert.Equal((uint)(size / 4096), after.BatEntries);
        Assert.Equal((ulong)(size / 512), after.SectorCount);
        Assert.Equal((uint)(size / 512 / 16 / 32), after.Cylinders);
        Assert.True(dataOff < after.DataOffsetSectors * 512L);
        AssertQemuCleanAndSized(chain, size);
        AssertViews(chain, before, size, temp.Path, "grown over moved clusters");
    }

    [Fact]
    public void TheParallelsDesktopSampleGrowsPastItsDataAreaAndShrinksBack()
    {
        using var temp = new TempFolder();
        string bundle = Samples.Extract("expanding", temp.Path);
        string image = Path.Combine(bundle, "expanding.hdd.0.{5fbaabe3-6958-40ff-92a7-860e329aab41}.hds");
        string raw = temp.Combine("before.raw");
        Qemu.Convert(image, raw);
        var header = ReadHeader(image);

        // 300 GiB of 1 MiB clusters: a BAT of 1.2 MB, past the 1 MiB data_off, where the first data cluster lies.
        long size = 300L << 30;
        DiskResizer.Resize(bundle, size, shrink: false);

        var after = ReadHeader(image);
        Assert.Equal(header.DataOffsetSectors + 2048, after.DataOffsetSectors);
        Assert.Equal(header.InUse, after.InUse);
        Assert.Equal(16u, after.Heads);
        Assert.Equal((uint)(size / 512 / 16 / 32), after.Cylinders);
        Qemu.AssertClean(image);
        Assert.Equal(size, QemuVirtualSize(image));
        var compare = Qemu.Img("compare", "-f", "parallels", "-F", "raw", image, raw);
        Assert.True(compare.ExitCode == 0, compare.Stdout + compare.Stderr);
        string xml = File.ReadAllText(Path.Combine(bundle, "DiskDescriptor.xml"));
        Assert.Contains($"<Disk_size>{size / 512}</Disk_size>", xml, StringComparison.Ordinal);
        Assert.Contains($"<Cylinders>{size / 512 / 512}</Cylinders>", xml, StringComparison.Ordinal);
        Assert.Contains("<PhysicalSectorSize>4096</PhysicalSectorSize>", xml, StringComparison.Ordinal);

        DiskResizer.Resize(bundle, 100L << 20, shrink: true);

        Qemu.AssertClean(image);
        Assert.Equal(100L << 20, QemuVirtualSize(image));
        compare = Qemu.Img("compare", "-f", "parallels", "-F", "raw", image, raw);
        Assert.True(compare.ExitCode == 0, compare.Stdout + compare.Stderr);
        Assert.Contains("<Cylinders>400</Cylinders>", File.ReadAllText(Path.Combine(bundle, "DiskDescriptor.xml")), StringComparison.Ordinal);
    }

    [Fact]
    public void ABareImageGrowsAndAPlainRootGrowsByItsFile()
    {
        using var temp = new TempFolder();
        string image = temp.Combine("bare.hds");
        Qemu.Create(image, "4M", clusterSize: "4k");
        Qemu.Write(image, "write -P 9 0 1M", "write -P 3 3M 4k");
        byte[] before = QemuView([image], temp.Path);

        DiskResizer.Resize(image, 64L << 20, shrink: false);

        Qemu.AssertClean(image);
        Assert.Equal(64L << 20, QemuVirtualSize(image));
        byte[] after = QemuView([image], temp.Path);
        Assert.Equal(before, after.AsSpan(0, before.Length).ToArray());
        Assert.False(after.AsSpan(before.Length).ContainsAnyExcept((byte)0));

        string raw = temp.Combine("bare.raw");
        File.WriteAllBytes(raw, Enumerable.Repeat((byte)7, 1 << 20).ToArray());
        DiskResizer.Resize(raw, 3L << 20, shrink: false);
        Assert.Equal(3L << 20, new FileInfo(raw).Length);
    }

    [Fact]
    public void ShrinkingIsRefusedOverDataAndWithoutShrink()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [16 * 2048], 503);
        var files = chain.Levels.Select(l => Path.Combine(chain.Bundle, l.Files[0])).Append(Path.Combine(chain.Bundle, "DiskDescriptor.xml")).ToList();
        var bytes = files.Select(File.ReadAllBytes).ToList();

        var noFlag = Assert.Throws<PrlFuseException>(() => DiskResizer.Resize(chain.Bundle, 8L << 20, shrink: false));
        Assert.Contains("--shrink", noFlag.Message, StringComparison.Ordinal);

        // The chain's writes reach its last MiB (qemu-io wrote from random offsets): make sure of it.
        Qemu.Write(Path.Combine(chain.Bundle, chain.Levels[^1].Files[0]), "write -P 5 15M 4k");
        bytes = files.Select(File.ReadAllBytes).ToList();
        var overData = Assert.Throws<ImageFormatException>(() => DiskResizer.Resize(chain.Bundle, 8L << 20, shrink: true));
        Assert.Contains("cannot shrink", overData.Message, StringComparison.Ordinal);
        Assert.Contains("past the new end", overData.Message, StringComparison.Ordinal);
        Assert.Contains("the disk was not changed", overData.Message, StringComparison.Ordinal);
        for (int i = 0; i < files.Count; i++)
        {
            Assert.True(bytes[i].AsSpan().SequenceEqual(File.ReadAllBytes(files[i])), $"{files[i]} changed by a refused shrink");
        }
    }

    [Fact]
    public void ShrinkingWhereNothingLiesPastTheNewEndKeepsTheRest()
    {
        using var temp = new TempFolder();
        var chain = SmallClusterChain(temp.Path, 32 << 20);
        var before = OracleViews(chain, temp.Path);
        long size = 24L << 20;

        DiskResizer.Resize(chain.Bundle, size, shrink: true);

        AssertQemuCleanAndSized(chain, size);
        AssertViews(chain, before, size, temp.Path, "shrunk");

        // And back: the tail that was cut reads as zeros.
        DiskResizer.Resize(chain.Bundle, 32L << 20, shrink: false);
        AssertQemuCleanAndSized(chain, 32L << 20);
        var cut = before.Select(b => b.AsSpan(0, (int)size).ToArray()).ToList();
        AssertViews(chain, cut, 32L << 20, temp.Path, "shrunk and grown");
    }

    [Fact]
    public void ResizeIsRefusedWhileAnImageIsInUse()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [8 * 2048], 504);
        string root = Path.Combine(chain.Bundle, chain.Levels[0].Files[0]);
        byte[] before = File.ReadAllBytes(root);
        using (QemuHolder.Start(root, readOnly: true))
        {
            var e = Assert.Throws<ImageInUseException>(() => DiskResizer.Resize(chain.Bundle, 32L << 20, shrink: false));
            Assert.EndsWith(chain.Levels[0].Files[0], e.File, StringComparison.Ordinal);
            Assert.Throws<ImageInUseException>(() => DiskCompactor.Compact(chain.Bundle));
        }

        Assert.Equal(before, File.ReadAllBytes(root));
    }

    /// <summary>
    /// A two-image chain of 4 KiB clusters whose root holds data from its first cluster on, right after the BAT, and
    /// nothing in its last quarter; the top changes a few clusters.
    /// </summary>
    internal static QemuChain SmallClusterChain(string folder, long bytes)
    {
        var chain = QemuChain.Build(folder, 2, [bytes / 512], 505);
        long quarter = bytes / 4;
        foreach (var level in chain.Levels)
        {
            string path = Path.Combine(chain.Bundle, level.Files[0]);
            File.Delete(path);
            Qemu.Create(path, bytes.ToString(System.Globalization.CultureInfo.InvariantCulture), clusterSize: "4k");
        }

        string root = Path.Combine(chain.Bundle, chain.Levels[0].Files[0]);
        string top = Path.Combine(chain.Bundle, chain.Levels[1].Files[0]);
        Qemu.Write(root, "write -P 1 0 256k", $"write -P 2 {quarter} 64k", $"write -P 0 {2 * quarter} 12k", $"write -P 4 {(3 * quarter) - 4096} 4k");
        Qemu.Write(top, "write -P 7 4k 8k", $"write -P 0 {quarter} 4k", $"write -P 8 {quarter + 100000} 3000");
        return chain;
    }

    internal static ParallelsHeader ReadHeader(string image)
    {
        byte[] head = new byte[FieldLocations.HeaderSize];
        using (var f = File.OpenRead(image))
        {
            f.ReadExactly(head);
        }

        Assert.True(ParallelsHeader.TryRead(head, out var header, out string error), error);
        Assert.NotEqual(ParallelsHeader.InUseOpen, header.InUse);
        return header;
    }
}
