using System.Buffers.Binary;
using System.Security.Cryptography;
using PrlFuse.Core.Checking;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.Images;
using PrlFuse.Tests.Core.Checking;
using PrlFuse.Tests.Support;
using static PrlFuse.Tests.Core.Formats.Parallels.WriteTestSupport;

namespace PrlFuse.Tests.Core.Formats.Parallels;

/// <summary>
/// Format extensions built by hand on a qemu-built top image: a write never leaves a dirty bitmap that lies, an
/// unknown NECESSARY feature keeps the image read-only, an unknown TRANSIT feature survives with a valid MD5; and the
/// empty-image flag (which our reader honours) keeps the image read-only rather than losing writes.
/// </summary>
[Trait("Needs", "Qemu")]
public sealed class ExtensionWriteTests
{
    private const ulong UnknownMagic = 0x1122334455667788;

    private sealed record Feature(ulong Magic, ulong Flags, byte[] Data);

    /// <summary>Appends a format extension cluster (and a bitmap cluster when asked) and points ext_off at it.</summary>
    private static void AddExtension(string image, bool dirtyBitmap, params Feature[] others)
    {
        byte[] file = File.ReadAllBytes(image);
        Assert.True(ParallelsHeader.TryRead(file, out var header, out _));
        int cluster = (int)header.ClusterBytes;
        long extOffset = file.Length;
        Assert.Equal(0, (extOffset - (header.DataOffsetSectors * 512L)) % cluster);
        long bitmapOffset = extOffset + cluster;
        var ext = new byte[cluster];
        BinaryPrimitives.WriteUInt64LittleEndian(ext, FormatExtension.Magic);
        int pos = FormatExtension.HeaderSize;
        var features = new List<Feature>(others);
        byte[]? bitmapCluster = null;
        if (dirtyBitmap)
        {
            // Granularity one cluster; granules 1 and 3 dirty.
            var data = new byte[DirtyBitmapFeature.FixedSize + 8];
            BinaryPrimitives.WriteUInt64LittleEndian(data, header.SectorCount);
            Guid.NewGuid().TryWriteBytes(data.AsSpan(8, 16), bigEndian: true, out _);
            BinaryPrimitives.WriteUInt32LittleEndian(data.AsSpan(24), header.ClusterSectors);
            BinaryPrimitives.WriteUInt32LittleEndian(data.AsSpan(28), 1);
            BinaryPrimitives.WriteUInt64LittleEndian(data.AsSpan(32), (ulong)(bitmapOffset / 512));
            features.Insert(0, new Feature(FormatExtension.DirtyBitmapMagic, 0, data));
            bitmapCluster = new byte[cluster];
            bitmapCluster[0] = 0b1010;
        }

        foreach (var f in features)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(ext.AsSpan(pos), f.Magic);
            BinaryPrimitives.WriteUInt64LittleEndian(ext.AsSpan(pos + 8), f.Flags);
            BinaryPrimitives.WriteUInt32LittleEndian(ext.AsSpan(pos + 16), (uint)f.Data.Length);
            f.Data.CopyTo(ext, pos + FormatExtension.FeatureHeaderSize);
            pos += FormatExtension.FeatureHeaderSize + ((f.Data.Length + 7) & ~7);
        }

        MD5.HashData(ext.AsSpan(FormatExtension.HeaderSize), ext.AsSpan(8, 16));
        using var stream = new FileStream(image, FileMode.Open, FileAccess.ReadWrite);
        stream.Position = extOffset;
        stream.Write(ext);
        if (bitmapCluster is not null)
        {
            stream.Write(bitmapCluster);
        }

        stream.Position = FieldLocations.ExtensionOffset;
        var off = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(off, (ulong)(extOffset / 512));
        stream.Write(off);
    }

    private static ExpandableImage OpenImage(string path) => ExpandableImage.Open(PrlFuse.Core.IO.PositionalImageFile.Open(path, false));

    [Fact]
    public void DirtyBitmapDisappearsOrStaysTruthfulAfterAWrite()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [16 * 2048], 501);
        string top = TopPath(chain);
        AddExtension(top, dirtyBitmap: true);
        using (var image = OpenImage(top))
        {
            Assert.NotNull(image.Extension?.DirtyBitmap);
            var dirty = image.DecodeDirtyClusters()!;
            Assert.Equal([1, 3], dirty.Select((d, i) => (d, i)).Where(x => x.d).Select(x => x.i).ToArray());
        }

        // Our checker counts the extension and bitmap clusters as used: no leak.
        Assert.DoesNotContain(ImageChecker.Check(top).Problems, p => p.Severity != CheckSeverity.Warning);

        byte[] model = chain.OracleView(1, temp.Path);
        long cluster;
        using (var disk = VirtualDisk.Open(chain.Bundle, new DiskOpenOptions { ReadOnly = false }))
        {
            Assert.True(disk.Top.IsWritable);
            cluster = disk.Top.Storages[0].TopLayer.ClusterBytes;
            var data = Enumerable.Repeat((byte)0x5A, 1000).ToArray();
            long offset = (6 * cluster) + 77;
            disk.Top.Write(data, offset);
            data.CopyTo(model, offset);
        }

        using (var image = OpenImage(top))
        {
            if (image.Header.ExtensionOffsetSectors != 0 && image.Extension?.DirtyBitmap is not null)
            {
                Assert.True(image.Extension.ChecksumValid);
                Assert.True(image.DecodeDirtyClusters()![6], "the bitmap kept after a write does not mark the written cluster dirty");
            }
            else
            {
                Assert.Null(image.Extension?.DirtyBitmap);
            }
        }

        AssertQemuClean(chain);
        Assert.Empty(ImageChecker.Check(top).Problems);
        CheckCommandTests.AssertSameData(model, chain.OracleView(1, temp.Path));
    }

    [Fact]
    public void UnknownNecessaryFeatureMakesTheTopReadOnly()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [16 * 2048], 502);
        string top = TopPath(chain);
        AddExtension(top, dirtyBitmap: false, new Feature(UnknownMagic, ExtensionFeature.FlagNecessary, new byte[12]));
        string hash = TestImage.Hash(top);
        using (var disk = VirtualDisk.Open(chain.Bundle, new DiskOpenOptions { ReadOnly = false }))
        {
            Assert.False(disk.Top.IsWritable);
            Assert.Contains(disk.Warnings, w => w.Contains("NECESSARY", StringComparison.Ordinal));
            Assert.Throws<InvalidOperationException>(() => disk.Top.Write(new byte[512], 0));
            Assert.Equal(512, disk.Top.Read(new byte[512], 0));
        }

        Assert.Equal(hash, TestImage.Hash(top));
        var report = ImageChecker.Check(top);
        Assert.Equal(0, report.ExitCode);
        Assert.Contains(report.Problems, p => p.Kind == CheckProblemKind.Extension && p.What.Contains("NECESSARY", StringComparison.Ordinal));
    }

    [Fact]
    public void UnknownTransitFeatureSurvivesAWriteWithAValidChecksum()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [16 * 2048], 503);
        string top = TopPath(chain);
        byte[] payload = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
        byte[] model = chain.OracleView(1, temp.Path); // qemu refuses any feature flags, so before the extension
        AddExtension(top, dirtyBitmap: true, new Feature(UnknownMagic, ExtensionFeature.FlagTransit, payload));
        using (var disk = VirtualDisk.Open(chain.Bundle, new DiskOpenOptions { ReadOnly = false }))
        {
            Assert.True(disk.Top.IsWritable);
            long cluster = disk.Top.Storages[0].TopLayer.ClusterBytes;
            var data = Enumerable.Repeat((byte)0xA5, (int)cluster).ToArray();
            disk.Top.Write(data, 2 * cluster);
            data.CopyTo(model, 2 * cluster);
        }

        using (var image = OpenImage(top))
        {
            var ext = image.Extension;
            Assert.NotNull(ext);
            Assert.True(ext!.ChecksumValid);
            Assert.Null(ext.DirtyBitmap);
            var feature = Assert.Single(ext.Features);
            Assert.Equal(UnknownMagic, feature.Magic);
            Assert.Equal((uint)payload.Length, feature.DataSize);
            using var view = VirtualDisk.Open(chain.Bundle);
            AssertWholeViewEquals(view.Top, model, "after write");
        }

        Assert.Empty(ImageChecker.Check(top).Problems);
    }

    // The empty-image flag: writes clear the image for real and read back (Fuzz/FuzzRegressionTests).
}
