using System.Diagnostics;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.Images;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.Formats.Parallels;

/// <summary>
/// The top image grows one chunk ahead of its allocator in the background (fallocated, and brought into the page
/// cache where writes are not direct); a clean close trims it all away, and what was written reads back.
/// </summary>
[Trait("Needs", "Qemu")]
public sealed class GrowthAheadTests
{
    [Fact]
    public void FileGrowsAheadWhileWritingAndACleanCloseTrimsIt()
    {
        using var temp = new TempFolder();
        string image = temp.Combine("top.hds");
        const long Cluster = 1L << 20;
        const int Clusters = 40; // inside the first 64 MiB chunk: only a growth ahead takes the file past it
        Qemu.Create(image, "256M", clusterSize: "1M");
        var data = new byte[Cluster];
        long dataOffset;
        using (var disk = VirtualDisk.Open(image, new DiskOpenOptions { ReadOnly = false }))
        {
            var top = (ExpandableImage)disk.Top.Storages[0].TopLayer;
            dataOffset = top.DataOffsetBytes;
            for (int i = 0; i < Clusters; i++)
            {
                data.AsSpan().Fill((byte)(i + 1));
                disk.Top.Write(data, i * Cluster);
            }

            // The allocator needs data_off + 40 clusters; ahead means at least one more whole chunk on top of that.
            long needed = dataOffset + (Clusters * Cluster);
            var watch = Stopwatch.StartNew();
            while (new FileInfo(image).Length < needed + DataAreaAllocator.GrowthChunkBytes && watch.Elapsed < TimeSpan.FromSeconds(10))
            {
                Thread.Sleep(10);
            }

            Assert.True(new FileInfo(image).Length >= needed + DataAreaAllocator.GrowthChunkBytes, $"file is {new FileInfo(image).Length} bytes, not grown ahead of {needed}");
        }

        Assert.Equal(dataOffset + (Clusters * Cluster), new FileInfo(image).Length);
        var check = Qemu.Check(image);
        Assert.True(check.ExitCode == 0, check.Stdout + check.Stderr);
        using var again = VirtualDisk.Open(image);
        var got = new byte[Cluster];
        for (int i = 0; i < Clusters; i++)
        {
            again.Top.Read(got, i * Cluster);
            Assert.True(got.AsSpan().IndexOfAnyExcept((byte)(i + 1)) < 0, $"cluster {i} reads back wrong");
        }
    }
}
