using PrlFuse.Core.Checking;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.IO;
using PrlFuse.Core.Management;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.Checking;

/// <summary>Images an interrupted snapshot command leaves in the bundle folder, not named by the descriptor.</summary>
public sealed class OrphanImageTests
{
    private const string NamedImage = "expanding.hdd.0.{5fbaabe3-6958-40ff-92a7-860e329aab41}.hds";

    [Fact]
    public void OnlyUnusedParallelsImagesThatNoDescriptorNamesAreRemoved()
    {
        using var temp = new TempFolder();
        string bundle = Samples.Extract("expanding", temp.Path);
        string descriptor = Path.Combine(bundle, "DiskDescriptor.xml");
        string named = Path.Combine(bundle, NamedImage);
        string orphan = Path.Combine(bundle, "expanding.hdd.0.{11111111-2222-3333-4444-555555555555}.hds");
        string held = Path.Combine(bundle, "expanding.hdd.0.{66666666-2222-3333-4444-555555555555}.hds");
        string junk = Path.Combine(bundle, "notes.hds");
        File.Copy(named, orphan);
        File.Copy(named, held);
        File.WriteAllText(junk, "not an image");
        string backupNamed = Path.Combine(bundle, "expanding.hdd.0.{77777777-2222-3333-4444-555555555555}.hds");
        File.Copy(named, backupNamed);
        File.WriteAllText(descriptor + ".Backup", File.ReadAllText(descriptor).Replace("5fbaabe3-6958-40ff-92a7-860e329aab41}.hds", "77777777-2222-3333-4444-555555555555}.hds", StringComparison.Ordinal));

        var found = OrphanImages.Find(descriptor);
        Assert.Equal([orphan, held, junk], found.Select(o => o.Path));
        Assert.Equal(new FileInfo(named).Length, found[0].Bytes);

        using (var holder = PositionalImageFile.Open(held, writable: true))
        {
            ImageLock.Acquire(holder, ImageLockMode.ReadWrite);
            var results = OrphanImages.Remove(found);
            Assert.Null(results.Single(r => r.Orphan.Path == orphan).Kept);
            Assert.Contains("in use", results.Single(r => r.Orphan.Path == held).Kept, StringComparison.Ordinal);
            Assert.Contains("not a Parallels image", results.Single(r => r.Orphan.Path == junk).Kept, StringComparison.Ordinal);
        }

        Assert.False(File.Exists(orphan));
        Assert.True(File.Exists(held) && File.Exists(junk) && File.Exists(named) && File.Exists(backupNamed));
    }

    /// <summary>
    /// What a crash leaves of an interrupted operation is an orphan: an empty image file (an image being created), and an
    /// image only a .Backup with an intent mark names (the descriptor a deletion or switch replaced before unlinking it).
    /// </summary>
    [Fact]
    public void AnEmptyImageAndAnImageOnlyAMarkedBackupNamesAreRemoved()
    {
        using var temp = new TempFolder();
        string bundle = Samples.Extract("expanding", temp.Path);
        string descriptor = Path.Combine(bundle, "DiskDescriptor.xml");
        string empty = Path.Combine(bundle, "expanding.hdd.0.{88888888-2222-3333-4444-555555555555}.hds");
        string dropped = Path.Combine(bundle, "expanding.hdd.0.{99999999-2222-3333-4444-555555555555}.hds");
        File.WriteAllBytes(empty, []);
        File.Copy(Path.Combine(bundle, NamedImage), dropped);
        string backup = File.ReadAllText(descriptor).Replace("5fbaabe3-6958-40ff-92a7-860e329aab41}.hds", "99999999-2222-3333-4444-555555555555}.hds", StringComparison.Ordinal);
        File.WriteAllText(descriptor + ".Backup", backup);
        Assert.Equal([empty], OrphanImages.Find(descriptor).Select(o => o.Path));

        var marked = IntentMark.Mark(DescriptorParser.ParseFile(descriptor + ".Backup"), [DiskDescriptor.PredefinedTopGuid]);
        File.WriteAllText(descriptor + ".Backup", DescriptorWriter.Write(marked));
        var found = OrphanImages.Find(descriptor);
        Assert.Equal([empty, dropped], found.Select(o => o.Path));
        Assert.All(OrphanImages.Remove(found), r => Assert.Null(r.Kept));
        Assert.False(File.Exists(empty) || File.Exists(dropped));
        Assert.True(File.Exists(Path.Combine(bundle, NamedImage)));
    }

    [Fact]
    public void AnImageNamedByAStaleAbsolutePathIsNoOrphan()
    {
        // A bundle moved from a Mac keeps <File>/Users/.../NAME.hds</File>; readers take the file of that name beside
        // the descriptor, so it is the disk itself and must never be removed.
        using var temp = new TempFolder();
        string bundle = Samples.Extract("expanding", temp.Path);
        string descriptor = Path.Combine(bundle, "DiskDescriptor.xml");
        File.SetAttributes(descriptor, FileAttributes.Normal);
        File.WriteAllText(descriptor, File.ReadAllText(descriptor).Replace("<File>expanding.hdd.0.", "<File>/Users/someone/Parallels/old.pvm/expanding.hdd/expanding.hdd.0.", StringComparison.Ordinal));

        Assert.Empty(OrphanImages.Find(descriptor));
        Assert.True(File.Exists(Path.Combine(bundle, NamedImage)));
    }

    [Fact]
    public void AnUnreadableDescriptorMakesNoOrphans()
    {
        using var temp = new TempFolder();
        string bundle = Samples.Extract("expanding", temp.Path);
        string descriptor = Path.Combine(bundle, "DiskDescriptor.xml");
        File.Copy(Path.Combine(bundle, NamedImage), Path.Combine(bundle, "other.hds"));
        File.WriteAllText(descriptor, "<Parallels_disk_image");
        Assert.Empty(OrphanImages.Find(descriptor));
    }
}
