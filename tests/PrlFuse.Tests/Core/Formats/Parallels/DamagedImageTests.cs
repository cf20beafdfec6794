using PrlFuse.Core;
using PrlFuse.Core.Checking;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.Images;
using PrlFuse.Core.IO;
using PrlFuse.Fuse;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.Formats.Parallels;

/// <summary>
/// Images qemu built, damaged on purpose in their BAT or cut short: they open read-only as qemu opens them, with
/// exactly the clusters the checker reports failing (EIO through the FUSE layer) and every other cluster reading what
/// qemu reads; a read-write open is refused with the way out.
/// </summary>
[Trait("Needs", "Qemu")]
public sealed class DamagedImageTests
{
    public enum Damage
    {
        OutsideFile,
        Duplicate,
        MisalignedOldMagic,
        BeforeDataAreaOldMagic,
        Truncated,
    }

    private const int C = TestImage.ClusterBytes;

    private static void Corrupt(string image, Damage damage)
    {
        switch (damage)
        {
            case Damage.OutsideFile:
                TestImage.SetEntry(image, 4, 500);
                break;
            case Damage.Duplicate:
                TestImage.SetEntry(image, 5, TestImage.Entry(image, 1));
                break;
            case Damage.MisalignedOldMagic:
                TestImage.ToOldMagic(image);
                TestImage.SetEntry(image, 2, TestImage.Entry(image, 2) + 1);
                break;
            case Damage.BeforeDataAreaOldMagic:
                TestImage.ToOldMagic(image);
                TestImage.SetEntry(image, 3, 1);
                break;
            default:
                // Clusters were written in guest order: the last (guest cluster 7) is cut off, cluster 5 cut in half.
                using (var f = new FileStream(image, FileMode.Open, FileAccess.Write))
                {
                    f.SetLength(f.Length - C - (C / 2));
                }

                break;
        }
    }

    [Theory]
    [InlineData(Damage.OutsideFile)]
    [InlineData(Damage.Duplicate)]
    [InlineData(Damage.MisalignedOldMagic)]
    [InlineData(Damage.BeforeDataAreaOldMagic)]
    [InlineData(Damage.Truncated)]
    public void OpensReadOnlyFailingExactlyTheClustersTheCheckerReports(Damage damage)
    {
        using var temp = new TempFolder();
        string image = TestImage.Create(temp.Path);
        Corrupt(image, damage);
        byte[] qemu = TestImage.Raw(image, temp.Path);
        string hash = TestImage.Hash(image);

        // The checker's cluster-local findings are the clusters the reader fails: one set of rules.
        var reported = ImageChecker.Check(image).Problems
            .Where(p => p.Kind is CheckProblemKind.ClusterOutsideImage or CheckProblemKind.DuplicateOffset or CheckProblemKind.ClusterMisaligned or CheckProblemKind.ClusterBeforeDataArea)
            .Select(p => p.BatIndex)
            .Order()
            .ToList();
        Assert.NotEmpty(reported);

        using (var disk = VirtualDisk.Open(image))
        {
            var layer = Assert.IsType<ExpandableImage>(disk.Storages[0].Images[disk.Top.Id]);
            var damaged = Enumerable.Range(0, layer.Bat.Count).Where(c => layer.IsClusterDamaged(c)).Select(c => (long)c).ToList();
            Assert.Equal(reported, damaged);
            Assert.Equal(reported.Count, layer.DamagedClusterCount);
            foreach (long c in damaged)
            {
                Assert.Contains(disk.Warnings, w => w.StartsWith("a.hds: BAT entry " + c + " ", StringComparison.Ordinal) || w.StartsWith("a.hds: BAT entry " + c + ":", StringComparison.Ordinal));
            }

            var buffer = new byte[C];
            for (long c = 0; c * C < disk.Size; c++)
            {
                if (damaged.Contains(c))
                {
                    // Unaligned and partial reads of it fail too.
                    var e = Assert.Throws<DamagedClusterException>(() => disk.Top.Read(buffer.AsSpan(0, 100), (c * C) + 777));
                    Assert.Equal(c, e.Cluster);
                    Assert.Equal(Errno.EIO, e.HResult);
                    Assert.Contains("prlfuse check --repair", e.Message, StringComparison.Ordinal);
                    continue;
                }

                Assert.Equal(C, disk.Top.Read(buffer, c * C));
                Assert.True(qemu.AsSpan((int)(c * C), C).SequenceEqual(buffer), $"cluster {c} differs from qemu-img convert's");
            }
        }

        var refused = Assert.Throws<ImageFormatException>(() => Reopen.Retrying(() => VirtualDisk.Open(image, new DiskOpenOptions { ReadOnly = false })).Dispose());
        Assert.Equal(image, refused.File);
        Assert.Contains($"run 'prlfuse check --repair {image}' first", refused.Problem, StringComparison.Ordinal);
        Assert.Equal(hash, TestImage.Hash(image));
    }

    [Fact]
    public void TheFileSystemAnswersEioForTheDamagedClusterAndLogsItOnce()
    {
        using var temp = new TempFolder();
        string image = TestImage.Create(temp.Path);
        Corrupt(image, Damage.OutsideFile);
        byte[] qemu = TestImage.Raw(image, temp.Path);
        using var disk = VirtualDisk.Open(image);
        var log = new List<string>();
        var fs = new BundleFileSystem(disk, new BundleFileSystemOptions { Log = log.Add });
        var buffer = new byte[C];

        Assert.Equal(-PrlFuse.Core.IO.Errno.EIO, fs.Read("/current.raw"u8, buffer, 4 * C, default));
        Assert.Equal(-PrlFuse.Core.IO.Errno.EIO, fs.Read("/current.raw"u8, buffer.AsSpan(0, 512), (4 * C) + 4096, default));
        var line = Assert.Single(log);
        Assert.Contains("guest cluster 4 cannot be read", line, StringComparison.Ordinal);

        // A read across the damaged cluster fails; the clusters beside it read as qemu reads them.
        Assert.Equal(-PrlFuse.Core.IO.Errno.EIO, fs.Read("/current.raw"u8, buffer, (3 * C) + 10, default));
        Assert.Equal(C, fs.Read("/current.raw"u8, buffer, 3 * C, default));
        Assert.True(qemu.AsSpan(3 * C, C).SequenceEqual(buffer));
        Assert.Equal(C, fs.Read("/current.raw"u8, buffer, 5 * C, default));
        Assert.True(qemu.AsSpan(5 * C, C).SequenceEqual(buffer));
        Assert.Single(log);
    }

    [Trait("Needs", "Installed")]
    [Fact]
    public void InfoOfADamagedImageExitsZeroAndListsTheDamage()
    {
        using var temp = new TempFolder();
        string image = TestImage.Create(temp.Path);
        Corrupt(image, Damage.Truncated);
        var info = PrlFuseCli.Run("info", image);
        Assert.True(info.ExitCode == 0, info.Stderr + info.Stdout);
        string text = string.Join(' ', info.Stdout.Split((char[])[' ', '\n', '\r'], StringSplitOptions.RemoveEmptyEntries));
        Assert.Contains("2 damaged BAT entries", text, StringComparison.Ordinal);
        Assert.Contains("BAT entry 7: cluster at offset", text, StringComparison.Ordinal);

        // Header damage that leaves nothing to serve is still refused.
        TestImage.WriteU32(image, 16, 3);
        var refused = PrlFuseCli.Run("info", image);
        Assert.Equal(1, refused.ExitCode);
        Assert.Contains("unsupported Parallels image version 3", refused.Stderr, StringComparison.Ordinal);
    }
}
