using PrlFuse.Core;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.IO;
using PrlFuse.Core.Images;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.Formats.Parallels;

/// <summary>
/// Broken headers are refused with a message that names the file and what is wrong. Damaged BAT entries are not: the
/// image opens read-only with the damage in its warnings, reads of those clusters fail, and a read-write open is
/// refused with what to do.
/// </summary>
public sealed class ImageRefusalTests : IDisposable
{
    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    /// <summary>Ten 63-sector clusters, six allocated, BAT big enough to span three sectors.</summary>
    private BuiltImage Valid(ParallelsMagic magic = ParallelsMagic.WithoutFreeSpace, string name = "img.hds", uint? dataOffsetSectors = null)
    {
        var b = new ParallelsImageBuilder(63 * 10, 63, magic) { BatEntries = 300, DataOffsetSectors = dataOffsetSectors };
        b.Allocate([0, 1, 3, 5, 6, 9]);
        return b.Build(_temp.Combine(name));
    }

    /// <summary>Opens the image bare and inside a bundle; both must refuse with the same problem.</summary>
    private ImageFormatException Refused(BuiltImage image, string expected)
    {
        var bare = Assert.Throws<ImageFormatException>(() => VirtualDisk.Open(image.Path).Dispose());
        Assert.Equal(image.Path, bare.File);
        Assert.Contains(expected, bare.Problem, StringComparison.Ordinal);
        Assert.StartsWith(image.Path + ": ", bare.Message, StringComparison.Ordinal);

        string folder = InBundle(image, out string inBundle);
        var bundled = Assert.Throws<ImageFormatException>(() => VirtualDisk.Open(folder).Dispose());
        Assert.Equal(inBundle, bundled.File);
        Assert.Contains(expected, bundled.Problem, StringComparison.Ordinal);
        return bare;
    }

    /// <summary>A bundle folder holding a copy of the image as its only snapshot.</summary>
    private string InBundle(BuiltImage image, out string inBundle)
    {
        string folder = _temp.Folder("bundle-" + Path.GetFileNameWithoutExtension(image.Path));
        inBundle = Path.Combine(folder, "img.hds");
        File.Copy(image.Path, inBundle);
        new DescriptorBuilder(image.VirtualSize / 512)
            .SingleStorage(63, (DescriptorBuilder.PredefinedTop, "Compressed", "img.hds"))
            .Shot(DescriptorBuilder.PredefinedTop, Guid.Empty)
            .WriteTo(folder);
        return folder;
    }

    /// <summary>
    /// Opens the image bare and inside a bundle: both open read-only, warn with <paramref name="expected"/>, fail reads of
    /// guest cluster <paramref name="damagedCluster"/> (and only those: every other cluster reads as built), and refuse
    /// a read-write open with the way out.
    /// </summary>
    private void Damaged(BuiltImage image, string expected, long damagedCluster)
    {
        string folder = InBundle(image, out _);
        foreach (string source in new[] { image.Path, folder })
        {
            using (var disk = VirtualDisk.Open(source))
            {
                Assert.Contains(disk.Warnings, w => w.Contains(expected, StringComparison.Ordinal));
                Assert.Contains(disk.Warnings, w => w.Contains("1 damaged BAT entry", StringComparison.Ordinal));
                var top = disk.Top;
                long c = image.ClusterBytes;
                var buffer = new byte[c];
                var want = new byte[c];
                for (long cluster = 0; cluster * c < top.Size; cluster++)
                {
                    int n = (int)Math.Min(c, top.Size - (cluster * c));
                    if (cluster == damagedCluster)
                    {
                        var e = Assert.Throws<DamagedClusterException>(() => top.Read(buffer.AsSpan(0, n), cluster * c));
                        Assert.Equal(Errno.EIO, e.HResult);
                        Assert.Equal(cluster, e.Cluster);
                        Assert.Contains(expected, e.Message, StringComparison.Ordinal);

                        // One damaged byte in a large read fails the whole read; so does a spliced (mapped) one.
                        Assert.Throws<DamagedClusterException>(() => top.Read(new byte[top.Size], 0));
                        Assert.Throws<DamagedClusterException>(() => top.MapRange(0, (int)top.Size, new HostPiece[64]));
                        continue;
                    }

                    Assert.Equal(n, top.Read(buffer.AsSpan(0, n), cluster * c));
                    image.FillExpected(want.AsSpan(0, n), cluster * c);
                    Assert.True(want.AsSpan(0, n).SequenceEqual(buffer.AsSpan(0, n)), $"cluster {cluster} differs");
                }
            }

            var refused = Assert.Throws<ImageFormatException>(() => Reopen.Retrying(() => VirtualDisk.Open(source, new DiskOpenOptions { ReadOnly = false })).Dispose());
            Assert.Contains("prlfuse check --repair", refused.Problem, StringComparison.Ordinal);
            Assert.EndsWith(".hds", refused.File, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Valid_image_opens()
    {
        // The baseline every refusal below starts from.
        using var disk = VirtualDisk.Open(Valid(ParallelsMagic.WithoutFreeSpace).Path);
        using var disk2 = VirtualDisk.Open(Valid(ParallelsMagic.WithouFreSpacExt, "ext.hds").Path);
        Assert.Empty(disk.Warnings);
        Assert.Empty(disk2.Warnings);
    }

    [Theory]
    [InlineData(0u)]
    [InlineData(1u)]
    [InlineData(3u)]
    public void Version_other_than_2(uint version) =>
        Refused(Valid().SetVersion(version), $"version {version}");

    [Fact]
    public void Tracks_zero() => Refused(Valid().SetTracks(0), "cluster size (tracks) is 0");

    [Theory]
    [InlineData(uint.MaxValue)]
    [InlineData((uint)int.MaxValue / 513 + 1)]
    public void Absurd_tracks(uint tracks) => Refused(Valid().SetTracks(tracks), $"cluster size of {tracks} sectors is too big");

    [Fact]
    public void Bat_larger_than_the_file_could_hold()
    {
        var image = Valid();
        Refused(image.SetBatEntriesField(10_000_000), "BAT of 10000000 entries is larger than the file");
    }

    [Fact]
    public void Bat_beyond_qemu_cap() => Refused(Valid().SetBatEntriesField(uint.MaxValue), "is too large");

    [Fact]
    public void Bat_too_small_for_the_disk_size() =>
        Refused(Valid().SetBatEntriesField(9), "BAT of 9 clusters is too small for a disk of 630 sectors");

    [Fact]
    public void Huge_nb_sectors_of_the_ext_magic_is_refused_not_an_overflow()
    {
        // 2^55 sectors * 512 wraps a 64-bit byte count to 0: the size check must not be fooled by it.
        Refused(Valid(ParallelsMagic.WithouFreSpacExt).SetSectorCountField(1UL << 55), "too small for a disk of");
        Refused(Valid(ParallelsMagic.WithouFreSpacExt, "neg.hds").SetSectorCountField(ulong.MaxValue), "too small for a disk of");
    }

    [Fact]
    public void Data_off_zero_for_the_ext_magic() =>
        Refused(Valid(ParallelsMagic.WithouFreSpacExt).SetDataOffsetField(0), "data_off field has incorrect value 0: it is 0, which a WithouFreSpacExt image may not have; run 'prlfuse check --repair'");

    [Theory]
    [InlineData(ParallelsMagic.WithoutFreeSpace)]
    [InlineData(ParallelsMagic.WithouFreSpacExt)]
    public void Data_off_inside_the_bat(ParallelsMagic magic) =>
        Refused(Valid(magic).SetDataOffsetField(2), "data_off field has incorrect value 2: it lies inside the header and BAT (minimum ");

    [Fact]
    public void Data_off_misaligned_for_the_ext_magic() =>
        Refused(Valid(ParallelsMagic.WithouFreSpacExt).SetDataOffsetField(64), "data_off field has incorrect value 64: it is not aligned to the cluster size of 63 sectors");

    [Theory]
    [InlineData(ParallelsMagic.WithoutFreeSpace)]
    [InlineData(ParallelsMagic.WithouFreSpacExt)]
    public void File_cut_before_its_data_area_opens_with_every_allocated_cluster_damaged(ParallelsMagic magic)
    {
        // A truncated file: the header and BAT are whole, the data area is gone.
        var image = Valid(magic, dataOffsetSectors: 63 * 2);
        image.Truncate(image.DataOffsetBytes - 512);
        using var disk = VirtualDisk.Open(image.Path);
        Assert.Contains(disk.Warnings, w => w.Contains("data_off 126 lies past the end of the file", StringComparison.Ordinal));
        Assert.Contains(disk.Warnings, w => w.Contains("6 damaged BAT entries", StringComparison.Ordinal));
        var buffer = new byte[63 * 512];
        for (long cluster = 0; cluster < 10; cluster++)
        {
            if (image.IsAllocated(cluster))
            {
                Assert.Throws<DamagedClusterException>(() => disk.Top.Read(buffer, cluster * buffer.Length));
            }
            else
            {
                disk.Top.Read(buffer, cluster * buffer.Length);
                Assert.DoesNotContain(buffer, b => b != 0);
            }
        }
    }

    [Theory]
    [InlineData(ParallelsMagic.WithoutFreeSpace)]
    [InlineData(ParallelsMagic.WithouFreSpacExt)]
    public void Bat_entry_before_the_data_area(ParallelsMagic magic)
    {
        // Entry 1 is sector 1 (old magic) or cluster 1 (Ext); the data area starts at cluster 2 here.
        var image = Valid(magic, dataOffsetSectors: 63 * 2);
        image.SetBatEntry(3, 1);
        long offset = magic == ParallelsMagic.WithoutFreeSpace ? 512 : 63 * 512;
        Damaged(image, $"BAT entry 3 points at offset {offset}, before the data area", 3);
    }

    [Theory]
    [InlineData(ParallelsMagic.WithoutFreeSpace)]
    [InlineData(ParallelsMagic.WithouFreSpacExt)]
    public void Bat_entry_past_the_end_of_the_file(ParallelsMagic magic)
    {
        var image = Valid(magic);
        long end = image.FileLength;
        image.SetBatEntry(7, image.EntryFor(end));
        Damaged(image, $"BAT entry 7: cluster at offset {end} lies outside the file", 7);
    }

    [Fact]
    public void Truncated_file_cuts_the_last_cluster()
    {
        var image = Valid();
        long end = image.FileLength;
        image.Truncate(end - 512);
        long lastCluster = end - (63 * 512);
        long index = Enumerable.Range(0, 10).Single(i => image.IsAllocated(i) && image.HostOffsetOf(i) == lastCluster);
        Damaged(image, $"BAT entry {index}: cluster at offset {lastCluster} lies outside the file", index);
    }

    [Fact]
    public void Bat_entry_misaligned()
    {
        var image = Valid();
        uint entry = image.ReadBatEntry(5) + 1;
        image.SetBatEntry(5, entry);
        Damaged(image, $"BAT entry 5 points at offset {entry * 512L}, not aligned to the 32256-byte clusters", 5);
    }

    [Theory]
    [InlineData(ParallelsMagic.WithoutFreeSpace)]
    [InlineData(ParallelsMagic.WithouFreSpacExt)]
    public void Bat_entry_duplicated(ParallelsMagic magic)
    {
        var image = Valid(magic);
        uint entry = image.ReadBatEntry(1);
        image.SetBatEntry(8, entry);
        Damaged(image, $"BAT entry 8 points at offset {image.HostOffsetOf(1)}, which entry 1 uses too", 8);
    }

    [Fact]
    public void Not_a_parallels_image_in_a_bundle()
    {
        string folder = _temp.Folder("garbage.hdd");
        File.WriteAllBytes(Path.Combine(folder, "img.hds"), new byte[4096]);
        new DescriptorBuilder(8).SingleStorage(8, (DescriptorBuilder.PredefinedTop, "Compressed", "img.hds")).Shot(DescriptorBuilder.PredefinedTop, Guid.Empty).WriteTo(folder);
        var e = Assert.Throws<ImageFormatException>(() => VirtualDisk.Open(folder).Dispose());
        Assert.Contains("not a Parallels expandable image", e.Problem, StringComparison.Ordinal);
        Assert.EndsWith("img.hds", e.File, StringComparison.Ordinal);
    }

    [Fact]
    public void File_shorter_than_a_header()
    {
        var image = Valid();
        image.Truncate(40);
        var e = Assert.Throws<ImageFormatException>(() => VirtualDisk.Open(image.Path).Dispose());
        Assert.Contains("shorter than a Parallels header", e.Problem, StringComparison.Ordinal);
        Assert.Equal(image.Path, e.File);
    }

    [Fact]
    public void Direct_open_knows_every_damaged_cluster_and_will_not_write()
    {
        var image = Valid();
        image.SetBatEntry(2, 1);
        image.SetBatEntry(4, image.ReadBatEntry(3));
        using var file = PositionalImageFile.Open(image.Path, true);
        using var opened = ExpandableImage.Open(file);
        Assert.Equal(2, opened.DamagedClusterCount);
        Assert.Equal([2L, 4L], Enumerable.Range(0, 300).Where(c => opened.IsClusterDamaged(c)).Select(c => (long)c));
        Assert.Contains("prlfuse check --repair", opened.WriteBlockedReason, StringComparison.Ordinal);
        Assert.True(opened.IsImmutable);
    }

    [Fact]
    public void Find_problems_lists_every_kind()
    {
        var image = Valid();
        long dataOffset = image.DataOffsetBytes;
        image.SetBatEntry(2, 1); // before the data area
        image.SetBatEntry(4, image.ReadBatEntry(3) + 1); // misaligned
        image.SetBatEntry(7, image.EntryFor(image.FileLength)); // outside
        image.SetBatEntry(8, image.ReadBatEntry(0)); // duplicate of entry 0
        var raw = image.ReadBytes(64, 300 * 4);
        var bat = BlockAllocationTable.Parse(raw, 300, 512, 63 * 512);
        var problems = bat.FindProblems(dataOffset, image.FileLength);
        Assert.Equal(
            [(BatProblemKind.BeforeDataArea, 2L), (BatProblemKind.Misaligned, 4L), (BatProblemKind.OutsideFile, 7L), (BatProblemKind.Duplicate, 8L)],
            problems.Select(p => (p.Kind, p.Index)).ToArray());
        Assert.Equal(0, problems[3].OtherIndex);
    }
}
