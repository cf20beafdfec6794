using System.Globalization;
using PrlFuse.Core.Engine;
using PrlFuse.Tests.Support;
using static PrlFuse.Tests.Core.Formats.Qcow2.Qcow2Oracle;

namespace PrlFuse.Tests.EndToEnd;

/// <summary>
/// `prlfuse mount img.qcow2 MNT` through the installed binary: a qcow2 chain (qcow2 over qcow2 over a Parallels image,
/// zero and compressed clusters): current.raw equals QEMU's view byte for byte, SEEK_DATA/SEEK_HOLE on it find qemu-img
/// map's data ranges, and writes through it (unaligned, across clusters, into compressed clusters, over zero clusters
/// and over backing data) leave an image `qemu-img check` finds clean and `qemu-img compare` finds equal to a model.
/// kill -9 of the daemon during fsync'd writes loses nothing fsync'd and leaves at worst leaks.
/// </summary>
[Collection(FuseKernelCollection.Name)]
[Trait("Needs", "Kernel")]
[Trait("Needs", "Qemu")]
[Trait("Needs", "Installed")]
public sealed class Qcow2MountTests
{
    private static void BuildChain(string folder)
    {
        Img(folder, "create", "-q", "-f", "parallels", "base.hds", "24M");
        Io(folder, "parallels", "base.hds", "write -P 40 0 24M");
        Img(folder, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b", "base.hds", "-F", "parallels", "mid.qcow2", "24M");
        Io(folder, "qcow2", "mid.qcow2", "write -P 41 10000 100000", "write -z 1M 1M", "write -c -P 42 4M 4k");
        Img(folder, "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2", "24M");
        Io(folder, "qcow2", "top.qcow2", "write -P 43 6M 3M", "write -z 12M 4M", "write -c -P 44 20M 64k");
    }

    [Fact]
    public void MountedQcow2ChainEqualsQemusViewAndTakesWrites()
    {
        using var temp = new TempFolder();
        BuildChain(temp.Path);
        byte[] expected = QemuView(temp.Path, "top.qcow2");
        var ranges = QemuDataRanges(temp.Path, "top.qcow2");

        string mnt = temp.Combine("mnt");
        try
        {
            string current = MountReadWrite(temp.Combine("top.qcow2"), mnt, expected);
            Assert.Equal(ranges, SparseFile.DataRanges(current));

            // Into the compressed cluster, over zero clusters, over the middle's and the base's data, across clusters.
            WriteRandomly(current, expected, 12, 20L << 20, (20L << 20) + 70000, 12L << 20, (14L << 20) + 3, 1L << 20, 4L << 20, 10000, 7L << 20, (24L << 20) - 5000);
        }
        finally
        {
            Assert.Equal(0, PrlFuseCli.Run("unmount", mnt).ExitCode);
        }

        AssertQemuSees(temp.Path, "top.qcow2", expected);
    }

    /// <summary>A top with extended L2 entries (256 KiB clusters, so 64 KiB writes fill subclusters) over a compressed base.</summary>
    private static void BuildExtendedOverCompressed(string folder)
    {
        Img(folder, "create", "-q", "-f", "raw", "base.raw", "24M");
        Io(folder, "raw", "base.raw", "write -P 70 0 12M", "write -P 73 12M 12M");
        Img(folder, "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=64k", "base.raw", "base.qcow2");
        File.Delete(Path.Combine(folder, "base.raw"));
        Img(folder, "create", "-q", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=256k", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2", "24M");
        Io(folder, "qcow2", "top.qcow2", "write -P 71 100k 10k", "write -z 1M 64k", "write -P 72 3M 300k");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void KillDashNineDuringFsyncedWritesLosesNothingFsyncedAndLeavesLeaksAtWorst(bool extendedOverCompressed)
    {
        const int blockBytes = 64 * 1024;
        const int blocks = 24 * 16;
        using var temp = new TempFolder();
        if (extendedOverCompressed)
        {
            BuildExtendedOverCompressed(temp.Path);
        }
        else
        {
            BuildChain(temp.Path);
        }

        byte[] original = QemuView(temp.Path, "top.qcow2");
        var expected = new byte[]?[blocks];
        var random = new Random(31);
        string mountpoint = temp.Combine("mnt");
        for (int round = 0; round < 3; round++)
        {
            string source = temp.Combine($"source{round}.bin");
            byte[] bytes = new byte[blocks * blockBytes];
            random.NextBytes(bytes);
            File.WriteAllBytes(source, bytes);
            string log = temp.Combine($"log{round}.txt");
            var mount = new PrlFuseMount(temp.Combine("top.qcow2"), mountpoint);
            try
            {
                var order = Enumerable.Range(0, blocks).OrderBy(_ => random.Next()).Take(300);
                string script = string.Join('\n', order.Select(b => string.Create(CultureInfo.InvariantCulture,
                    $"echo S {b} >> {log}; dd if={source} of={mount.Current} bs={blockBytes} skip={b} seek={b} count=1 conv=notrunc,fsync status=none || exit 0; echo D {b} >> {log}")));
                var writer = CrashTests.Start("bash", "-c", script);
                Thread.Sleep(random.Next(300, 2000));
                ProcessRunner.Run("kill", "-KILL", mount.DaemonPid().ToString(CultureInfo.InvariantCulture));
                Assert.True(writer.WaitForExit(30_000), "the writer did not stop after the kill");
            }
            finally
            {
                ProcessRunner.Run("fusermount3", ["-uz", mountpoint], check: false);
            }

            var lines = File.Exists(log) ? File.ReadAllLines(log) : [];
            var done = lines.Where(l => l.StartsWith('D')).Select(l => int.Parse(l[2..], CultureInfo.InvariantCulture)).ToHashSet();
            foreach (int b in lines.Where(l => l.StartsWith('S')).Select(l => int.Parse(l[2..], CultureInfo.InvariantCulture)))
            {
                expected[b] = done.Contains(b) ? bytes.AsSpan(b * blockBytes, blockBytes).ToArray() : [];
            }

            Assert.True(done.Count > 0, "the writer completed no block before the kill: the round proves nothing");
            var check = ProcessRunner.Run("qemu-img", ["check", "-f", "qcow2", "top.qcow2"], check: false, workingDirectory: temp.Path);
            Assert.True(check.ExitCode is 0 or 3, $"round {round}: qemu-img check exit {check.ExitCode}\n{check.Stdout}{check.Stderr}");

            using var disk = Reopen.Retrying(() => VirtualDisk.Open(temp.Combine("top.qcow2")));
            byte[] buffer = new byte[blockBytes];
            for (int b = 0; b < blocks; b++)
            {
                if (expected[b] is { Length: 0 })
                {
                    continue;
                }

                disk.Top.Read(buffer, (long)b * blockBytes);
                byte[] want = expected[b] ?? original.AsSpan(b * blockBytes, blockBytes).ToArray();
                Assert.True(want.AsSpan().SequenceEqual(buffer), $"round {round}: block {b} lost its fsync'd content");
            }
        }

        // A repair by prlfuse leaves it clean for QEMU.
        var repair = PrlFuseCli.Run("check", "--repair", temp.Combine("top.qcow2"));
        Assert.True(repair.ExitCode == 0, repair.Stdout + repair.Stderr);
        Core.Formats.Qcow2.Qcow2WriteTests.AssertQemuCheckClean(temp.Path, "top.qcow2");
    }

    /// <summary>prlfuse mount IMAGE MNT read-write (no read-only notice), with current.raw equal to <paramref name="expected"/>; returns current.raw.</summary>
    private static string MountReadWrite(string image, string mnt, byte[] expected)
    {
        Directory.CreateDirectory(mnt);
        var mount = PrlFuseCli.Run("mount", image, mnt);
        Assert.True(mount.ExitCode == 0, mount.Stderr);
        Assert.DoesNotContain("read-only", mount.Stderr, StringComparison.Ordinal);
        string current = Path.Combine(mnt, "current.raw");
        Assert.Equal(expected, File.ReadAllBytes(current));
        return current;
    }

    /// <summary>Random unaligned writes through current.raw (fsync'd), each copied into <paramref name="model"/>; then read back whole.</summary>
    private static void WriteRandomly(string current, byte[] model, int seed, params long[] targets)
    {
        var random = new Random(seed);
        using (var f = new FileStream(current, FileMode.Open, FileAccess.ReadWrite))
        {
            foreach (long at in targets.Concat(Enumerable.Range(0, 40).Select(_ => random.NextInt64(model.Length))))
            {
                int length = (int)Math.Min(random.Next(1, 150_000), model.Length - at);
                byte[] data = new byte[length];
                random.NextBytes(data);
                f.Position = at;
                f.Write(data);
                data.CopyTo(model, at);
            }

            f.Flush(flushToDisk: true);
        }

        Assert.True(model.AsSpan().SequenceEqual(File.ReadAllBytes(current)), "current.raw does not read back what was written");
    }

    /// <summary>qemu-img check finds nothing and qemu-img compare finds the image equal to <paramref name="model"/> (both run in the image's folder).</summary>
    private static void AssertQemuSees(string folder, string image, byte[] model)
    {
        Core.Formats.Qcow2.Qcow2WriteTests.AssertQemuCheckClean(folder, image);
        File.WriteAllBytes(Path.Combine(folder, "model.raw"), model);
        var compare = ProcessRunner.Run("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", "model.raw", image], check: false, workingDirectory: folder);
        Assert.True(compare.ExitCode == 0, compare.Stdout + compare.Stderr);
    }

    [Fact]
    public void MountRepairOfADirtyImageRepairsItAndServesItReadWrite()
    {
        // QEMU with lazy refcounts killed after its writes: the dirty bit set, the refcounts of the new clusters not written.
        using var temp = new TempFolder();
        Img(temp.Path, "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on,cluster_size=4096", "a.qcow2", "8M");
        var aborted = ProcessRunner.Run("qemu-io", ["-f", "qcow2", "-c", "write -P 5 0 64k", "-c", "write -P 6 1M 100k", "-c", "abort", "a.qcow2"], check: false, workingDirectory: temp.Path);
        Assert.NotEqual(0, aborted.ExitCode);
        var dirty = ProcessRunner.Run("qemu-img", ["check", "-f", "qcow2", "a.qcow2"], check: false, workingDirectory: temp.Path);
        Assert.True(dirty.ExitCode == 2, $"the aborted image should have refcount errors: {dirty.Stdout}");
        byte[] model = new byte[8 << 20];
        Array.Fill(model, (byte)5, 0, 64 << 10);
        Array.Fill(model, (byte)6, 1 << 20, 100 << 10);

        string mnt = temp.Combine("mnt");
        Directory.CreateDirectory(mnt);
        string current = Path.Combine(mnt, "current.raw");

        // Without --repair: read-only, and the notice says what --repair does.
        var plain = PrlFuseCli.Run("mount", temp.Combine("a.qcow2"), mnt);
        try
        {
            Assert.True(plain.ExitCode == 0, plain.Stderr);
            Assert.Contains("dirty bit", plain.Stderr, StringComparison.Ordinal);
            Assert.Contains("--repair", plain.Stderr, StringComparison.Ordinal);
            Assert.Equal(model, File.ReadAllBytes(current));
            Assert.ThrowsAny<IOException>(() => new FileStream(current, FileMode.Open, FileAccess.Write).Dispose());
        }
        finally
        {
            Assert.Equal(0, PrlFuseCli.Run("unmount", mnt).ExitCode);
        }

        var mount = PrlFuseCli.Run("mount", "--repair", temp.Combine("a.qcow2"), mnt);
        try
        {
            Assert.True(mount.ExitCode == 0, mount.Stderr);
            Assert.Contains("repaired", mount.Stderr, StringComparison.Ordinal);
            Assert.DoesNotContain("read-only", mount.Stderr, StringComparison.Ordinal);
            WriteRandomly(current, model, 41, 0, 60_000, 1L << 20, (8L << 20) - 3000);
        }
        finally
        {
            Assert.Equal(0, PrlFuseCli.Run("unmount", mnt).ExitCode);
        }

        byte[] header = File.ReadAllBytes(temp.Combine("a.qcow2")).AsSpan(0, 104).ToArray();
        Assert.Equal(0UL, System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(72)) & 1);
        AssertQemuSees(temp.Path, "a.qcow2", model);
    }

    [Theory]
    [InlineData("data_file=data.bin,cluster_size=16k", false)]
    [InlineData("data_file=data.bin,data_file_raw=on,cluster_size=64k", true)]
    [InlineData("data_file=data.bin,extended_l2=on,cluster_size=64k", false)]
    public void WritesToAnImageWithAnExternalDataFileGoToTheDataFile(string options, bool raw)
    {
        // QEMU 7.2 takes data_file relative to its working folder: every qemu run here works in the image's folder.
        using var temp = new TempFolder();
        Img(temp.Path, "create", "-q", "-f", "qcow2", "-o", options, "a.qcow2", "12M");
        Io(temp.Path, "qcow2", "a.qcow2", "write -P 61 0 5000", "write -P 62 100k 300k", "write -z 1M 64k", "write -P 63 11M 1M");
        byte[] model = QemuView(temp.Path, "a.qcow2");
        long imageBytes = new FileInfo(temp.Combine("a.qcow2")).Length;

        string mnt = temp.Combine("mnt");
        try
        {
            string current = MountReadWrite(temp.Combine("a.qcow2"), mnt, model);

            // The data file is held as QEMU holds it while writing: another writer is kept out.
            var intruder = ProcessRunner.Run("qemu-io", ["-f", "raw", "-c", "write 0 512", "data.bin"], check: false, workingDirectory: temp.Path);
            Assert.True(intruder.ExitCode != 0 && (intruder.Stderr + intruder.Stdout).Contains("lock", StringComparison.Ordinal), $"qemu-io wrote the data file while prlfuse served it: {intruder.Stdout}{intruder.Stderr}");

            // Cluster 0, over a zero cluster, into unallocated clusters, across clusters, the last bytes.
            WriteRandomly(current, model, 62, 0, 3, 1L << 20, (1L << 20) + 65000, 5L << 20, (12L << 20) - 777);
        }
        finally
        {
            Assert.Equal(0, PrlFuseCli.Run("unmount", mnt).ExitCode);
        }

        AssertQemuSees(temp.Path, "a.qcow2", model);
        Assert.True(new FileInfo(temp.Combine("a.qcow2")).Length - imageBytes <= 1 << 20, "guest data went into the image file, not the data file");
        if (raw)
        {
            Assert.True(model.AsSpan().SequenceEqual(File.ReadAllBytes(temp.Combine("data.bin"))), "the raw data file is not the guest disk");
        }
    }

    [Fact]
    public void InternalSnapshotsAreReadOnlyFilesOfTheirOwnSize()
    {
        using var temp = new TempFolder();
        Img(temp.Path, "create", "-q", "-f", "qcow2", "a.qcow2", "6M");
        Io(temp.Path, "qcow2", "a.qcow2", "write -P 21 0 6M");
        Img(temp.Path, "snapshot", "-c", "before-upgrade", "a.qcow2");
        Img(temp.Path, "resize", "-q", "a.qcow2", "8M");
        Io(temp.Path, "qcow2", "a.qcow2", "write -P 22 1M 7M");
        Img(temp.Path, "snapshot", "-c", "x/y", "a.qcow2");
        Io(temp.Path, "qcow2", "a.qcow2", "write -P 23 0 8M");
        byte[] first = new byte[6 << 20];
        Array.Fill(first, (byte)21);
        byte[] second = new byte[8 << 20];
        Array.Fill(second, (byte)21, 0, 1 << 20);
        Array.Fill(second, (byte)22, 1 << 20, 7 << 20);

        var info = PrlFuseCli.Run("info", "--json", temp.Combine("a.qcow2"));
        Assert.True(info.ExitCode == 0, info.Stderr);
        using (var json = System.Text.Json.JsonDocument.Parse(info.Stdout))
        {
            var list = json.RootElement.GetProperty("internalSnapshots").EnumerateArray().ToList();
            Assert.Equal(["before-upgrade.raw", "2.raw"], list.Select(e => e.GetProperty("file").GetString()));
            Assert.Equal(["before-upgrade", "x/y"], list.Select(e => e.GetProperty("name").GetString()));
            Assert.Equal([6L << 20, 8L << 20], list.Select(e => e.GetProperty("sizeBytes").GetInt64()));
        }

        var export = PrlFuseCli.Run("export", temp.Combine("a.qcow2"), "--snapshot", "x/y", "-o", temp.Combine("second.raw"));
        Assert.True(export.ExitCode == 0, export.Stderr);
        Assert.Equal(second, File.ReadAllBytes(temp.Combine("second.raw")));

        string mnt = temp.Combine("mnt");
        Directory.CreateDirectory(mnt);
        var mount = PrlFuseCli.Run("mount", "--read-only", temp.Combine("a.qcow2"), mnt);
        try
        {
            Assert.True(mount.ExitCode == 0, mount.Stderr);
            Assert.Equal(["2.raw", "before-upgrade.raw"], Directory.GetFiles(Path.Combine(mnt, "snapshots")).Select(Path.GetFileName).Order(StringComparer.Ordinal));
            string firstFile = Path.Combine(mnt, "snapshots", "before-upgrade.raw");
            Assert.Equal(first, File.ReadAllBytes(firstFile));
            Assert.Equal(second, File.ReadAllBytes(Path.Combine(mnt, "snapshots", "2.raw")));
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.GroupRead | UnixFileMode.OtherRead, File.GetUnixFileMode(firstFile));
            Assert.ThrowsAny<IOException>(() => new FileStream(firstFile, FileMode.Open, FileAccess.Write).Dispose());
        }
        finally
        {
            Assert.Equal(0, PrlFuseCli.Run("unmount", mnt).ExitCode);
        }
    }
}
