using PrlFuse.Core;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.Management;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.Management;

/// <summary>DescriptorStore rewrites DiskDescriptor.xml as Parallels Desktop does, and readers fall back to its backup.</summary>
public sealed class DescriptorStoreTests
{
    public static TheoryData<string> SampleNames() => new() { "expanding", "plain", "split" };

    [Theory]
    [MemberData(nameof(SampleNames))]
    public void ARewriteOfARealDescriptorIsByteForByteWhatParallelsWrote(string sample)
    {
        using var temp = new TempFolder();
        string original = Path.Combine(Samples.Root, sample + ".hdd", DescriptorStore.FileName);
        string xml = temp.Combine(DescriptorStore.FileName);
        File.Copy(original, xml);

        DescriptorStore.Write(xml, DescriptorParser.ParseFile(xml));

        // Every newer element (PhysicalSectorSize, Encryption, UID, Name, Miscellaneous) kept, in place, in Parallels' layout.
        Assert.Equal(File.ReadAllText(original), File.ReadAllText(xml));
        Assert.Equal(File.ReadAllBytes(original), File.ReadAllBytes(DescriptorStore.BackupPath(xml)));
        Assert.False(File.Exists(xml + DescriptorStore.TemporarySuffix));
    }

    [Fact]
    public void TheBackupIsThePreviousVersionAndABrokenDescriptorNeverBecomesOne()
    {
        using var temp = new TempFolder();
        string xml = temp.Combine(DescriptorStore.FileName);
        var first = BundleCreator.NewDescriptor("d", 2048, 2048, ImageType.Compressed, "a.hds");
        var second = first with { Parameters = first.Parameters with { DiskSizeSectors = 4096 } };
        DescriptorStore.Write(xml, first);
        Assert.False(File.Exists(DescriptorStore.BackupPath(xml)));
        string firstText = File.ReadAllText(xml);

        DescriptorStore.Write(xml, second);
        Assert.Equal(firstText, File.ReadAllText(DescriptorStore.BackupPath(xml)));
        Assert.Equal(4096, DescriptorParser.ParseFile(xml).Parameters.DiskSizeSectors);

        File.WriteAllText(xml, "<Parallels_disk_image Version=\"1.0\"><Disk_Para");
        DescriptorStore.Write(xml, second);
        Assert.Equal(firstText, File.ReadAllText(DescriptorStore.BackupPath(xml)));
    }

    [Theory]
    [InlineData("missing")]
    [InlineData("torn")]
    [InlineData("empty")]
    public void ABundleWhoseDescriptorIsLostOrUnreadableOpensFromItsBackupWithAWarning(string damage)
    {
        using var temp = new TempFolder();
        string bundle = BundleCreator.Create(temp.Combine("d.hdd"), 8 << 20, plain: false, 1 << 20);
        string xml = Path.Combine(bundle, DescriptorStore.FileName);
        File.Copy(xml, DescriptorStore.BackupPath(xml));
        switch (damage)
        {
            case "missing":
                File.Delete(xml);
                break;
            case "torn":
                File.WriteAllBytes(xml, File.ReadAllBytes(xml)[..200]);
                break;
            default:
                File.WriteAllBytes(xml, []);
                break;
        }

        using var disk = VirtualDisk.Open(bundle);
        Assert.Equal(8 << 20, disk.Size);
        var warning = Assert.Single(disk.DiskWarnings, w => w.Code == WarningCodes.DescriptorFromBackup);
        Assert.Contains(DescriptorStore.FileName + DescriptorStore.BackupSuffix, warning.Message, StringComparison.Ordinal);
        Assert.Contains(bundle, DiskSource.ImageFiles(bundle)[0], StringComparison.Ordinal);
    }

    [Fact]
    public void WithoutABackupAnUnreadableDescriptorIsStillAnError()
    {
        using var temp = new TempFolder();
        string bundle = BundleCreator.Create(temp.Combine("d.hdd"), 8 << 20, plain: false, 1 << 20);
        string xml = Path.Combine(bundle, DescriptorStore.FileName);
        File.WriteAllText(xml, "<oops");
        var e = Assert.Throws<DescriptorException>(() => VirtualDisk.Open(bundle));
        Assert.Contains("not well-formed", e.Message, StringComparison.Ordinal);

        File.Delete(xml);
        Assert.Throws<PrlFuseException>(() => VirtualDisk.Open(bundle));
    }

    [Theory]
    [InlineData("{3c9c8c2b-1f4d-4d9b-9a59-7a9b1d2c3e4f}", "AAECAwQFBgcICQ==")]
    [InlineData("{3c9c8c2b-1f4d-4d9b-9a59-7a9b1d2c3e4f}", "")]
    [InlineData("{00000000-0000-0000-0000-000000000000}", "AAECAwQFBgcICQ==")]
    public void AnEncryptedDiskIsRefusedInOneLineEvenWithAPlainBackup(string engine, string data)
    {
        using var temp = new TempFolder();
        string bundle = BundleCreator.Create(temp.Combine("d.hdd"), 8 << 20, plain: false, 1 << 20);
        string xml = Path.Combine(bundle, DescriptorStore.FileName);
        File.Copy(xml, DescriptorStore.BackupPath(xml));
        string text = File.ReadAllText(xml)
            .Replace("<Engine>{00000000-0000-0000-0000-000000000000}</Engine>", $"<Engine>{engine}</Engine>", StringComparison.Ordinal)
            .Replace("<Data></Data>", $"<Data>{data}</Data>", StringComparison.Ordinal);
        File.WriteAllText(xml, text);

        var e = Assert.Throws<EncryptedDiskException>(() => VirtualDisk.Open(bundle));
        Assert.Contains("encrypted", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', e.Message);
        Assert.Throws<EncryptedDiskException>(() => SnapshotCreator.Create(bundle, null));
    }

    [Fact]
    public void ANewDescriptorIsLaidOutAsTheRealSampleApartFromItsOwnNamesAndUid()
    {
        using var temp = new TempFolder();
        string bundle = BundleCreator.Create(temp.Combine("expanding.hdd"), 100 << 20, plain: false, ParallelsImageCreator.DefaultClusterBytes);
        string made = File.ReadAllText(Path.Combine(bundle, DescriptorStore.FileName));
        string real = File.ReadAllText(Path.Combine(Samples.Root, "expanding.hdd", DescriptorStore.FileName));
        static string WithoutUid(string xml) => System.Text.RegularExpressions.Regex.Replace(xml, "<UID>[^<]*</UID>", "<UID/>");
        Assert.Equal(WithoutUid(real), WithoutUid(made));
        Assert.Equal(["DiskDescriptor.xml", "expanding.hdd", "expanding.hdd.0.{5fbaabe3-6958-40ff-92a7-860e329aab41}.hds"], Directory.GetFiles(bundle).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        Assert.Equal(0, new FileInfo(Path.Combine(bundle, "expanding.hdd")).Length);
    }
}
