using PrlFuse.Core;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.Management;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.Descriptor;

/// <summary>A Parallels VM bundle (NAME.pvm) stands for its disk, as its config.pvs lists them.</summary>
public sealed class VmBundleTests
{
    /// <summary>A config.pvs shaped as Parallels writes one, with one Hdd element per (SystemName, EmulatedType, Enabled).</summary>
    internal static string WriteConfig(string vm, params (string SystemName, string EmulatedType, string Enabled)[] hdds)
    {
        Directory.CreateDirectory(vm);
        var sb = new System.Text.StringBuilder();
        sb.AppendLine("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
        sb.AppendLine("<ParallelsVirtualMachine dyn_lists=\"\" schemaVersion=\"1.0\">");
        sb.AppendLine("  <AppVersion>17.1.1-51537</AppVersion>");
        sb.AppendLine("  <Identification dyn_lists=\"\"><VmName>Test</VmName></Identification>");
        sb.AppendLine("  <Hardware dyn_lists=\"\">");
        sb.AppendLine("    <Cpu dyn_lists=\"\"><Number>2</Number></Cpu>");
        for (int i = 0; i < hdds.Length; i++)
        {
            var (system, emulated, enabled) = hdds[i];
            sb.AppendLine(System.Globalization.CultureInfo.InvariantCulture, $"    <Hdd id=\"{i}\" dyn_lists=\"Partition 0\">");
            sb.AppendLine(System.Globalization.CultureInfo.InvariantCulture, $"      <Index>{i}</Index><Enabled>{enabled}</Enabled><Connected>1</Connected>");
            sb.AppendLine(System.Globalization.CultureInfo.InvariantCulture, $"      <EmulatedType>{emulated}</EmulatedType>");
            sb.AppendLine(System.Globalization.CultureInfo.InvariantCulture, $"      <SystemName>{System.Security.SecurityElement.Escape(system)}</SystemName>");
            sb.AppendLine(System.Globalization.CultureInfo.InvariantCulture, $"      <UserFriendlyName>{System.Security.SecurityElement.Escape(Path.GetFileName(system))}</UserFriendlyName>");
            sb.AppendLine("      <InterfaceType>1</InterfaceType><Size>100</Size>");
            sb.AppendLine("    </Hdd>");
        }

        sb.AppendLine("    <NetworkAdapter id=\"0\"><SystemName>eth0</SystemName></NetworkAdapter>");
        sb.AppendLine("  </Hardware>");
        sb.AppendLine("</ParallelsVirtualMachine>");
        File.WriteAllText(Path.Combine(vm, VmBundle.ConfigFileName), sb.ToString());
        return vm;
    }

    [Fact]
    public void AVmWithOneDiskIsThatDiskEverywhere()
    {
        using var temp = new TempFolder();
        string vm = temp.Combine("Test.pvm");
        WriteConfig(vm, ("expanding.hdd", "1", "1"), ("/dev/disk2", "0", "1"));
        string bundle = Samples.Extract("expanding", vm);

        Assert.Equal(DiskSource.Resolve(bundle), DiskSource.Resolve(vm));
        Assert.Equal([Path.Combine(bundle, "expanding.hdd.0.{5fbaabe3-6958-40ff-92a7-860e329aab41}.hds")], DiskSource.ImageFiles(vm));
        using var disk = VirtualDisk.Open(vm);
        Assert.Equal(100L << 20, disk.Size);
    }

    [Fact]
    public void AVmWithTwoDisksNeedsANumberAndListsThemWithout()
    {
        using var temp = new TempFolder();
        string vm = temp.Combine("Two.macvm");
        WriteConfig(vm, ("expanding.hdd", "1", "1"), ("second.hdd", "1", "0"));
        string first = Samples.Extract("expanding", vm);
        string second = BundleCreator.Create(Path.Combine(vm, "second.hdd"), 1 << 20, plain: false, ParallelsImageCreator.DefaultClusterBytes);

        var e = Assert.Throws<PrlFuseException>(() => DiskSource.Resolve(vm));
        Assert.Contains($"has 2 disks: 0 expanding.hdd ({first}), 1 second.hdd ({second}); choose one with --disk N", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', e.Message);
        Assert.Equal(second, VmBundle.SelectDisk(vm, 1));
        Assert.Equal(first, VmBundle.SelectDisk(vm, 0));
        Assert.Contains("has no disk 2", Assert.Throws<PrlFuseException>(() => VmBundle.SelectDisk(vm, 2)).Message, StringComparison.Ordinal);
        Assert.False(VmBundle.ReadDisks(vm)[1].Enabled);
    }

    [Fact]
    public void AStaleAbsolutePathFallsBackToTheVmFolder()
    {
        using var temp = new TempFolder();
        string vm = temp.Combine("Moved.pvm");
        WriteConfig(vm, ("/Users/someone/Parallels/Moved.pvm/expanding.hdd", "1", "1"));
        string bundle = Samples.Extract("expanding", vm);

        var disk = Assert.Single(VmBundle.ReadDisks(vm));
        Assert.Equal("/Users/someone/Parallels/Moved.pvm/expanding.hdd", disk.ConfiguredPath);
        Assert.Equal(bundle, disk.Path);
        Assert.Equal(Path.Combine(bundle, DescriptorStore.FileName), DiskSource.Resolve(vm).Path);
    }

    [Fact]
    public void AMissingDiskIsNamedInTheError()
    {
        using var temp = new TempFolder();
        string vm = WriteConfig(temp.Combine("Gone.pvm"), ("/Volumes/External/gone.hdd", "1", "1"));

        var e = Assert.Throws<PrlFuseException>(() => DiskSource.Resolve(vm));
        Assert.Contains("disk 0 (/Volumes/External/gone.hdd) is missing", e.Message, StringComparison.Ordinal);
        Assert.Null(Assert.Single(VmBundle.ReadDisks(vm)).Path);
    }

    [Theory]
    [InlineData("<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><ParallelsVirtualMachine><Hardware><Hdd><SystemName>&e;</SystemName></Hdd></Hardware></ParallelsVirtualMachine>", "DTD")]
    [InlineData("<ParallelsVirtualMachine><Hardware><Hdd><SystemName>a.hdd</Hdd></Hardware></ParallelsVirtualMachine>", "not well-formed")]
    [InlineData("<Parallels_disk_image Version=\"1.0\"/>", "not a Parallels VM config")]
    public void HostileConfigsAreRefusedInOneLine(string xml, string expected)
    {
        using var temp = new TempFolder();
        string vm = temp.Combine("Hostile.pvm");
        Directory.CreateDirectory(vm);
        File.WriteAllText(Path.Combine(vm, VmBundle.ConfigFileName), xml);

        var e = Assert.ThrowsAny<PrlFuseException>(() => DiskSource.Resolve(vm));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void HugeDeepOrEscapingConfigsAreRefused()
    {
        using var temp = new TempFolder();
        string vm = temp.Combine("Big.pvm");
        Directory.CreateDirectory(vm);
        string config = Path.Combine(vm, VmBundle.ConfigFileName);
        using (var file = File.Create(config))
        {
            file.SetLength(VmBundle.MaxConfigBytes + 1);
        }

        Assert.Contains("more than the", Assert.Throws<PrlFuseException>(() => DiskSource.Resolve(vm)).Message, StringComparison.Ordinal);

        File.WriteAllText(config, "<ParallelsVirtualMachine>" + string.Concat(Enumerable.Repeat("<a>", 200)) + string.Concat(Enumerable.Repeat("</a>", 200)) + "</ParallelsVirtualMachine>");
        Assert.Contains("nested more than", Assert.Throws<DescriptorException>(() => DiskSource.Resolve(vm)).Message, StringComparison.Ordinal);

        // A relative path out of the folder, or the VM folder itself, is not followed.
        string outside = Samples.Extract("expanding", temp.Path);
        WriteConfig(vm, ("../expanding.hdd", "1", "1"), (".", "1", "1"));
        Assert.All(VmBundle.ReadDisks(vm), d => Assert.Null(d.Path));
        Assert.True(Directory.Exists(outside));
    }
}
