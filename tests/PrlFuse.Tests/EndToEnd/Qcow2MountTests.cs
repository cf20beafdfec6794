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
        Directory.CreateDirectory(mnt);
        var mount = PrlFuseCli.Run("mount", temp.Combine("top.qcow2"), mnt);
        try
        {
            Assert.True(mount.ExitCode == 0, mount.Stderr);
            Assert.DoesNotContain("read-only", mount.Stderr, StringComparison.Ordinal);
            string current = Path.Combine(mnt, "current.raw");
            Assert.Equal(expected, File.ReadAllBytes(current));
            Assert.Equal(ranges, SparseFile.DataRanges(current));

            // Into the compressed cluster, over zero clusters, over the middle's and the base's data, across clusters.
            var random = new Random(12);
            long[] targets = [20L << 20, (20L << 20) + 70000, 12L << 20, (14L << 20) + 3, 1L << 20, 4L << 20, 10000, 7L << 20, (24L << 20) - 5000];
            using (var f = new FileStream(current, FileMode.Open, FileAccess.ReadWrite))
            {
                foreach (long at in targets.Concat(Enumerable.Range(0, 40).Select(_ => random.NextInt64(24L << 20))))
                {
                    int length = (int)Math.Min(random.Next(1, 150_000), (24L << 20) - at);
                    byte[] data = new byte[length];
                    random.NextBytes(data);
                    f.Position = at;
                    f.Write(data);
                    data.CopyTo(expected, at);
                }

                f.Flush(flushToDisk: true);
            }

            Assert.Equal(expected, File.ReadAllBytes(current));
        }
        finally
        {
            Assert.Equal(0, PrlFuseCli.Run("unmount", mnt).ExitCode);
        }

        Core.Formats.Qcow2.Qcow2WriteTests.AssertQemuCheckClean(temp.Path, "top.qcow2");
        File.WriteAllBytes(temp.Combine("model.raw"), expected);
        var compare = ProcessRunner.Run("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", "model.raw", "top.qcow2"], check: false, workingDirectory: temp.Path);
        Assert.True(compare.ExitCode == 0, compare.Stdout + compare.Stderr);
    }

    [Fact]
    public void KillDashNineDuringFsyncedWritesLosesNothingFsyncedAndLeavesLeaksAtWorst()
    {
        const int blockBytes = 64 * 1024;
        const int blocks = 24 * 16;
        using var temp = new TempFolder();
        BuildChain(temp.Path);
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
