using System.Globalization;
using System.Text;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Management;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.Management;

/// <summary>QEMU as the oracle for any bundle: each snapshot's chain read from its DiskDescriptor.xml, each image checked.</summary>
internal static class BundleOracle
{
    /// <summary>QEMU's raw view of <paramref name="snapshot"/>: per storage, the chain's images as --image-opts backing files (raw for a Plain root).</summary>
    public static byte[] View(string bundle, Guid snapshot, string scratch)
    {
        string xml = Path.Combine(bundle, DescriptorStore.FileName);
        var d = DescriptorParser.ParseFile(xml);
        var tree = SnapshotTree.Build(d, xml);
        var result = new byte[d.DiskSizeBytes];
        foreach (var storage in d.Storages)
        {
            var options = new StringBuilder();
            string prefix = "";
            foreach (var guid in tree.ChainOf(snapshot))
            {
                var image = storage.FindImage(guid)!;
                string driver = image.Type == ImageType.Plain ? "raw" : "parallels";
                string file = Path.Combine(bundle, image.File).Replace(",", ",,", StringComparison.Ordinal);
                options.Append(options.Length > 0 ? "," : "").Append(CultureInfo.InvariantCulture, $"{prefix}driver={driver},{prefix}file.filename={file}");
                prefix += "backing.";
            }

            string raw = Path.Combine(scratch, "oracle-" + Guid.NewGuid().ToString("N") + ".raw");
            ProcessRunner.Run("qemu-img", "convert", "--image-opts", options.ToString(), "-O", "raw", raw);
            byte[] bytes = File.ReadAllBytes(raw);
            File.Delete(raw);
            Assert.Equal(storage.LengthBytes, bytes.Length);
            bytes.CopyTo(result, storage.StartSector * 512);
        }

        return result;
    }

    /// <summary>
    /// qemu-img check is clean on every expandable image of the bundle. An empty image whose BAT ends inside a cluster
    /// smaller than 64 KiB is the exception QEMU makes itself: it reports its own new images of that shape as leaking.
    /// </summary>
    public static void AssertImagesClean(string bundle)
    {
        var d = DescriptorParser.ParseFile(Path.Combine(bundle, DescriptorStore.FileName));
        foreach (var storage in d.Storages)
        {
            foreach (var image in storage.Images.Where(i => i.Type == ImageType.Compressed))
            {
                var check = Qemu.Check(Path.Combine(bundle, image.File));
                bool qemusOwnLeak = check.ExitCode == 3 && storage.BlockSizeSectors * 512 < (64 << 10);
                Assert.True(check.ExitCode == 0 || qemusOwnLeak, $"{image.File}: {check.Stdout}{check.Stderr}");
            }
        }
    }

    /// <summary>Every view of the bundle equals QEMU's view of the same chain; returns them by GUID.</summary>
    public static Dictionary<Guid, byte[]> AssertEveryViewMatchesQemu(string bundle, string scratch)
    {
        AssertImagesClean(bundle);
        var views = ReadViews(bundle);
        foreach (var (guid, bytes) in views)
        {
            Assert.True(bytes.AsSpan().SequenceEqual(View(bundle, guid, scratch)), $"view {DiskDescriptor.FormatGuid(guid)} differs from QEMU's");
        }

        return views;
    }

    /// <summary>Every view of the disk, read through prlfuse.</summary>
    public static Dictionary<Guid, byte[]> ReadViews(string bundle)
    {
        using var disk = Reopen.Retrying(() => VirtualDisk.Open(bundle));
        return disk.Views.ToDictionary(v => v.Key, v => ReadAll(v.Value));
    }

    public static byte[] ReadAll(SnapshotView view)
    {
        var bytes = new byte[view.Size];
        Assert.Equal(bytes.Length, view.Read(bytes, 0));
        return bytes;
    }
}
