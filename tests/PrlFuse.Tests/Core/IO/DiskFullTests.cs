using System.Globalization;
using PrlFuse.Core.Engine;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.IO;

/// <summary>
/// The top image grows until its file system is full (a 40 MiB tmpfs): the write that does not fit fails with
/// ENOSPC, everything written before reads back, and once space is freed writing works again; after the close
/// qemu-img check is clean and qemu's view of the chain equals what was written. Needs root (mount).
/// </summary>
[Trait("Needs", "Kernel")]
[Trait("Needs", "Qemu")]
public sealed class DiskFullTests(Xunit.Abstractions.ITestOutputHelper output) : IDisposable
{
    private const int ENOSPC = 28;
    private const long Mib = 1 << 20;
    private const long DiskBytes = 64 * Mib;
    private static readonly Guid Base = new("33333333-4444-5555-6666-777777777771");

    private readonly TempFolder _temp = new("prlfuse-enospc");

    public void Dispose() => _temp.Dispose();

    [Fact]
    public void Top_image_growing_into_a_full_file_system()
    {
        string mount = Directory.CreateDirectory(_temp.Combine("tmpfs")).FullName;
        ProcessRunner.Run("mount", "-t", "tmpfs", "-o", "size=40M", "tmpfs", mount);
        try
        {
            Run(mount);
        }
        finally
        {
            var r = ProcessRunner.Run("umount", ["--", mount], check: false);
            if (r.ExitCode != 0)
            {
                ProcessRunner.Run("umount", ["-l", "--", mount], check: false);
            }
        }
    }

    private void Run(string mount)
    {
        // The bundle: a qemu-made base (1 MiB clusters, 6 MiB of data) and an empty qemu-made top. Made outside the
        // tmpfs (qemu preallocates 128 MiB while writing) and copied in; qemu trims them when it closes them.
        string bundle = Directory.CreateDirectory(Path.Combine(mount, "disk.hdd")).FullName;
        string basePath = Path.Combine(bundle, "base.hds");
        string topPath = Path.Combine(bundle, "top.hds");
        string size = DiskBytes.ToString(CultureInfo.InvariantCulture);
        string madeBase = _temp.Combine("base.hds");
        string madeTop = _temp.Combine("top.hds");
        Qemu.Create(madeBase, size, clusterSize: "1M");
        Qemu.Write(madeBase, "write -P 0x11 0 4M", "write -P 0x22 20M 2M");
        Qemu.Create(madeTop, size, clusterSize: "1M");
        File.Copy(madeBase, basePath);
        File.Copy(madeTop, topPath);
        new DescriptorBuilder(DiskBytes / 512)
            .SingleStorage(2048, (Base, "Compressed", "base.hds"), (DescriptorBuilder.PredefinedTop, "Compressed", "top.hds"))
            .Chain(Base, DescriptorBuilder.PredefinedTop)
            .WriteTo(bundle);

        var expected = new byte[DiskBytes];
        expected.AsSpan(0, (int)(4 * Mib)).Fill(0x11);
        expected.AsSpan((int)(20 * Mib), (int)(2 * Mib)).Fill(0x22);

        // Leave room for about 12 clusters of the top: the rest of the 40 MiB is a filler file.
        string filler = Path.Combine(mount, "filler.bin");
        var free = new DriveInfo(mount).AvailableFreeSpace;
        File.WriteAllBytes(filler, new byte[free - (12 * Mib)]);

        var random = new Random(11);
        IOException? full = null;
        int writes = 0;
        var disk = VirtualDisk.Open(bundle, new DiskOpenOptions { ReadOnly = false });
        try
        {
            var view = disk.Top;

            // Partial-cluster writes (copy-on-write from the base, some over its data) until the space runs out.
            long offset = 0;
            (long Offset, byte[] Data) failed = default;
            while (full is null)
            {
                Assert.True(offset < DiskBytes, "the file system never filled up");
                var data = new byte[(int)(Mib / 2) + random.Next(1000)];
                random.NextBytes(data);
                long at = offset + random.Next(4096);
                try
                {
                    view.Write(data, at);
                    data.CopyTo(expected.AsSpan((int)at));
                    writes++;
                }
                catch (IOException e)
                {
                    full = e;
                    failed = (at, data);
                }

                offset += 2 * Mib; // one cluster per write: a failed write changes nothing
            }

            output.WriteLine($"{writes} writes fit, then: {full.GetType().Name} (HResult {full.HResult}): {full.Message}");
            Assert.Equal(ENOSPC, full.HResult);
            Assert.True(writes >= 5, $"only {writes} writes fit");

            // Everything written before reads back, and the failed write left its range as it was.
            AssertView(view, expected, "after ENOSPC");

            // Flush works or fails cleanly (the BAT page is already in the file, so it should work).
            try
            {
                view.Flush();
                output.WriteLine("flush on the full file system worked");
            }
            catch (IOException e)
            {
                output.WriteLine($"flush on the full file system failed: {e.Message}");
                Assert.Equal(ENOSPC, e.HResult);
            }

            // Space comes back: the same write and more now work.
            File.Delete(filler);
            view.Write(failed.Data, failed.Offset);
            failed.Data.CopyTo(expected.AsSpan((int)failed.Offset));
            var tail = new byte[3 * Mib];
            random.NextBytes(tail);
            view.Write(tail, DiskBytes - tail.Length - 777);
            tail.CopyTo(expected.AsSpan((int)(DiskBytes - tail.Length - 777)));
            view.Flush();
            AssertView(view, expected, "after freeing space");
        }
        finally
        {
            disk.Dispose();
        }

        Qemu.AssertClean(topPath);
        using (var again = VirtualDisk.Open(bundle))
        {
            AssertView(again.Top, expected, "after reopening");
        }

        // qemu's own view of the chain (the raw output goes outside the small tmpfs).
        string raw = _temp.Combine("qemu.raw");
        Qemu.ConvertChain([topPath, basePath], raw);
        var qemu = File.ReadAllBytes(raw);
        Assert.Equal(expected.Length, qemu.Length);
        int same = qemu.AsSpan().CommonPrefixLength(expected);
        Assert.True(same == expected.Length, $"qemu reads 0x{(same < qemu.Length ? qemu[same] : 0):x2} at guest offset {same}, we wrote 0x{(same < expected.Length ? expected[same] : 0):x2}");
    }

    private static void AssertView(SnapshotView view, byte[] expected, string when)
    {
        var actual = new byte[expected.Length];
        Assert.Equal(actual.Length, view.Read(actual, 0));
        int same = actual.AsSpan().CommonPrefixLength(expected);
        Assert.True(same == expected.Length, $"{when}: guest byte {same} is 0x{(same < actual.Length ? actual[same] : 0):x2}, expected 0x{(same < expected.Length ? expected[same] : 0):x2}");
    }
}
