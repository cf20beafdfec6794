using PrlFuse.Core;
using PrlFuse.Core.Checking;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.Descriptor;

/// <summary>Every command takes the same inputs: a bundle folder, its DiskDescriptor.xml, or a bare image.</summary>
public sealed class DiskSourceTests
{
    [Fact]
    public void ABareRawImageIsADiskToOpenAndHasNothingToRepair()
    {
        using var temp = new TempFolder();
        string raw = temp.Combine("disk.img");
        var bytes = new byte[1 << 20];
        new Random(1).NextBytes(bytes);
        File.WriteAllBytes(raw, bytes);

        Assert.Equal(DiskSourceKind.RawImage, DiskSource.Resolve(raw).Kind);
        using (var disk = VirtualDisk.Open(raw))
        {
            Assert.True(disk.IsBareImage);
            Assert.Equal(bytes.Length, disk.Size);
        }

        // Before the shared resolver, check parsed a raw image as XML and failed.
        var report = DiskChecker.Check(raw);
        Assert.Equal(0, report.ExitCode);
        Assert.Empty(report.DiskProblems);
    }

    [Fact]
    public void AFolderWithoutADescriptorIsReportedByCheckAndRefusedByOpen()
    {
        using var temp = new TempFolder();
        var report = DiskChecker.Check(temp.Path);
        Assert.Equal(1, report.ExitCode);
        Assert.Contains(report.DiskProblems, p => p.What.Contains("no DiskDescriptor.xml", StringComparison.Ordinal));
        Assert.Contains("no DiskDescriptor.xml", Assert.Throws<PrlFuseException>(() => VirtualDisk.Open(temp.Path)).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ABundleFolderAndItsDescriptorAreTheSameSource()
    {
        using var temp = new TempFolder();
        string bundle = Samples.Extract("expanding", temp.Path);
        var viaFolder = DiskSource.Resolve(bundle);
        var viaXml = DiskSource.Resolve(Path.Combine(bundle, "DiskDescriptor.xml"));
        Assert.Equal(viaXml, viaFolder);
        Assert.Equal(DiskSourceKind.Descriptor, viaFolder.Kind);
        string image = Directory.GetFiles(bundle, "*.hds").Single();
        Assert.Equal(DiskSourceKind.ExpandableImage, DiskSource.Resolve(image).Kind);
    }
}
