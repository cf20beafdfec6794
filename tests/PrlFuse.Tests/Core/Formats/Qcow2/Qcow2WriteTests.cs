using PrlFuse.Core.Checking;
using PrlFuse.Core.Engine;
using PrlFuse.Tests.Core.Formats.Parallels;
using PrlFuse.Tests.Support;
using static PrlFuse.Tests.Core.Formats.Qcow2.Qcow2Oracle;

namespace PrlFuse.Tests.Core.Formats.Qcow2;

/// <summary>
/// Writes to qcow2 images built by qemu-img and qemu-io, through the engine: random unaligned writes and discards land as a raw
/// model says (`qemu-img compare`), `qemu-img check` finds nothing afterwards, internal snapshots keep their content;
/// and crashes at every write and every flush of a session (the recording file layer) leave at worst leaks, with every
/// flushed write there.
/// </summary>
[Trait("Needs", "Qemu")]
public sealed class Qcow2WriteTests
{
    /// <summary>Builds the image kind named <paramref name="kind"/> in <paramref name="folder"/>; returns the top's file name.</summary>
    internal static string Build(string folder, string kind)
    {
        switch (kind)
        {
            case "v2-512":
                Img(folder, "create", "-q", "-f", "qcow2", "-o", "compat=0.10,cluster_size=512", "a.qcow2", "4M");
                Io(folder, "qcow2", "a.qcow2", "write -P 1 1000 70000", "write -P 2 1M 3000", "write -P 3 3000000 512");
                return "a.qcow2";
            case "v3-64k-zero-compressed":
                Img(folder, "create", "-q", "-f", "qcow2", "-o", "compat=1.1,cluster_size=64k", "a.qcow2", "16M");
                Io(folder, "qcow2", "a.qcow2", "write -P 3 0 320k", "write -z 64k 128k", "write -z -u 192k 64k", "write -P 4 5000000 12345", "write -c -P 5 8M 64k", "write -c -P 6 8320k 64k", "write -z 12M 1M");
                return "a.qcow2";
            case "2m":
                Img(folder, "create", "-q", "-f", "qcow2", "-o", "cluster_size=2M", "a.qcow2", "24M");
                Io(folder, "qcow2", "a.qcow2", "write -P 6 3M 5M", "write -z 4M 2M", "write -c -P 7 12M 2M", "write -P 8 23M 1M");
                return "a.qcow2";
            case "extended-l2":
                Img(folder, "create", "-q", "-f", "qcow2", "-o", "cluster_size=64k,extended_l2=on", "base.qcow2", "8M");
                Io(folder, "qcow2", "base.qcow2", "write -P 12 0 8M");
                Img(folder, "create", "-q", "-f", "qcow2", "-o", "cluster_size=64k,extended_l2=on", "-b", "base.qcow2", "-F", "qcow2", "a.qcow2", "8M");
                Io(folder, "qcow2", "a.qcow2", "write -P 8 1000 3000", "write -z 8k 4k", "write -P 9 70000 100", "write -z 128k 64k", "write -P 10 300k 6k", "write -z -u 302k 2k", "write -c -P 11 1M 64k");
                return "a.qcow2";
            case "refcount1":
                Img(folder, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k,refcount_bits=1", "a.qcow2", "8M");
                Io(folder, "qcow2", "a.qcow2", "write -P 1 0 100k", "write -P 2 5M 1M");
                return "a.qcow2";
            case "refcount64-512":
                // 512-byte clusters with 64-bit refcounts: a refcount block covers 32 KiB and the table grows often.
                Img(folder, "create", "-q", "-f", "qcow2", "-o", "cluster_size=512,refcount_bits=64", "a.qcow2", "6M");
                Io(folder, "qcow2", "a.qcow2", "write -P 1 0 20k");
                return "a.qcow2";
            case "zlib-convert":
                File.WriteAllBytes(Path.Combine(folder, "src.raw"), Content(6 << 20, 3));
                Img(folder, "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", "src.raw", "a.qcow2");
                File.Delete(Path.Combine(folder, "src.raw"));
                return "a.qcow2";
            case "chain-zero":
                // Three levels: zero clusters of the middle and the top hide the base's data.
                Img(folder, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", "base.qcow2", "8M");
                Io(folder, "qcow2", "base.qcow2", "write -P 21 0 8M");
                Img(folder, "create", "-q", "-f", "qcow2", "-o", "cluster_size=16k", "-b", "base.qcow2", "-F", "qcow2", "mid.qcow2", "8M");
                Io(folder, "qcow2", "mid.qcow2", "write -P 22 1M 1M", "write -z 3M 1M", "write -z -u 5M 512k");
                Img(folder, "create", "-q", "-f", "qcow2", "-o", "cluster_size=64k", "-b", "mid.qcow2", "-F", "qcow2", "a.qcow2", "8M");
                Io(folder, "qcow2", "a.qcow2", "write -z 1M 256k", "write -z 6M 1M", "write -P 23 7M 100k");
                return "a.qcow2";
            case "parallels-base":
                Img(folder, "create", "-q", "-f", "parallels", "base.hds", "8M");
                Io(folder, "parallels", "base.hds", "write -P 31 0 3M", "write -P 32 5M 2M");
                Img(folder, "create", "-q", "-f", "qcow2", "-o", "cluster_size=64k", "-b", "base.hds", "-F", "parallels", "a.qcow2", "8M");
                Io(folder, "qcow2", "a.qcow2", "write -z 1M 128k", "write -P 33 6M 70000");
                return "a.qcow2";
            case "snapshot":
                Img(folder, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", "a.qcow2", "6M");
                Io(folder, "qcow2", "a.qcow2", "write -P 41 0 3M", "write -c -P 42 4M 64k");
                Img(folder, "snapshot", "-c", "s1", "a.qcow2");
                Io(folder, "qcow2", "a.qcow2", "write -P 43 1M 8k");
                return "a.qcow2";
            case "data-file":
                // Guest data in data.bin at its guest offset (cluster 0 is entry offset 0 with COPIED), over a backing file.
                Img(folder, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", "base.qcow2", "6M");
                Io(folder, "qcow2", "base.qcow2", "write -P 51 0 6M");
                Img(folder, "create", "-q", "-f", "qcow2", "-o", "data_file=data.bin,cluster_size=16k", "-b", "base.qcow2", "-F", "qcow2", "a.qcow2", "6M");
                Io(folder, "qcow2", "a.qcow2", "write -P 52 0 20000", "write -z 1M 64k", "write -P 53 2M 5000");
                return "a.qcow2";
            case "data-file-raw":
                // QEMU preallocates the metadata of a raw data file: every cluster is allocated, data.bin is the disk.
                Img(folder, "create", "-q", "-f", "qcow2", "-o", "data_file=data.bin,data_file_raw=on,cluster_size=64k", "a.qcow2", "6M");
                Io(folder, "qcow2", "a.qcow2", "write -P 54 0 70000", "write -z 1M 64k", "write -P 55 3M 1M");
                return "a.qcow2";
            case "data-file-extended":
                Img(folder, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", "base.qcow2", "4M");
                Io(folder, "qcow2", "base.qcow2", "write -P 56 0 4M");
                Img(folder, "create", "-q", "-f", "qcow2", "-o", "data_file=data.bin,extended_l2=on,cluster_size=64k", "-b", "base.qcow2", "-F", "qcow2", "a.qcow2", "4M");
                Io(folder, "qcow2", "a.qcow2", "write -P 57 0 3000", "write -z 8k 4k", "write -P 58 1M 100k", "write -z 2M 64k");
                return "a.qcow2";
            default:
                throw new ArgumentException(kind);
        }
    }

    private static byte[] Content(int length, int seed)
    {
        // Compressible (runs) and incompressible (random) pieces, so some clusters compress and some are stored plain.
        var random = new Random(seed);
        byte[] data = new byte[length];
        for (int at = 0; at < length; at += 4096)
        {
            if (random.Next(3) == 0)
            {
                random.NextBytes(data.AsSpan(at, Math.Min(4096, length - at)));
            }
            else
            {
                data.AsSpan(at, Math.Min(4096, length - at)).Fill((byte)random.Next(4));
            }
        }

        return data;
    }

    /// <summary>A random write: unaligned, inside one cluster, across clusters, whole clusters, large.</summary>
    internal static (long Offset, int Length) RandomWrite(Random random, long size, long cluster)
    {
        (long offset, long length) = random.Next(5) switch
        {
            0 => (random.NextInt64(size / cluster) * cluster, cluster),
            1 => (random.NextInt64(size), 1 + random.Next(700)),
            2 => (random.NextInt64(size / cluster) * cluster - random.Next(1, 3000), random.Next(1, 9000)),
            3 => (random.NextInt64(size / 512) * 512, 512L * (1 + random.Next(16))),
            _ => (random.NextInt64(size), random.Next(1, 200_000)),
        };
        offset = Math.Clamp(offset, 0, size - 1);
        return (offset, (int)Math.Min(length, size - offset));
    }

    [Theory]
    [InlineData("v2-512", 1)]
    [InlineData("v3-64k-zero-compressed", 2)]
    [InlineData("2m", 3)]
    [InlineData("extended-l2", 4)]
    [InlineData("refcount1", 5)]
    [InlineData("refcount64-512", 6)]
    [InlineData("zlib-convert", 7)]
    [InlineData("chain-zero", 8)]
    [InlineData("parallels-base", 9)]
    [InlineData("snapshot", 10)]
    [InlineData("data-file", 15)]
    [InlineData("data-file-raw", 16)]
    [InlineData("data-file-extended", 17)]
    public void RandomUnalignedWritesMatchAModelAndQemuCheckIsClean(string kind, int seed)
    {
        using var temp = new TempFolder();
        string top = Build(temp.Path, kind);
        string topPath = temp.Combine(top);
        byte[] model = QemuView(temp.Path, top);
        byte[]? snapshot = kind == "snapshot" ? SnapshotView(temp.Path, top, "s1") : null;
        long imageBytes = new FileInfo(topPath).Length;
        var random = new Random(seed);
        using (var disk = VirtualDisk.Open(topPath, new DiskOpenOptions { ReadOnly = false }))
        {
            var view = disk.Top;
            Assert.True(view.IsWritable, string.Join("; ", disk.Warnings));
            long cluster = view.Storages[0].TopLayer.ClusterBytes;
            for (int i = 0; i < 150; i++)
            {
                var (offset, length) = RandomWrite(random, view.Size, cluster);
                if (random.Next(12) == 0)
                {
                    // Discard (fallocate PUNCH_HOLE): whole clusters drop theirs, the rest is zeroed.
                    view.Discard(offset, length);
                    Array.Clear(model, (int)offset, length);
                }
                else
                {
                    byte[] data = WriteTestSupport.Fill(random, length);
                    view.Write(data, offset);
                    data.CopyTo(model, offset);
                }

                if (random.Next(10) == 0)
                {
                    disk.Flush();
                }

                var (readAt, readLength) = RandomWrite(random, view.Size, cluster);
                WriteTestSupport.AssertReadsEqual(view, model, readAt, readLength, $"{kind} after write {i}");
            }
        }

        AssertQemuCheckClean(temp.Path, top);
        var ours = Qcow2Checker.Check(topPath);
        Assert.True(ours.ExitCode == 0, string.Join("\n", ours.Problems.Select(p => p.ToLine())));
        File.WriteAllBytes(temp.Combine("model.raw"), model);
        var compare = ProcessRunner.Run("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", "model.raw", top], check: false, workingDirectory: temp.Path);
        Assert.True(compare.ExitCode == 0, $"qemu-img compare: exit {compare.ExitCode}\n{compare.Stdout}{compare.Stderr}");
        using (var again = VirtualDisk.Open(topPath))
        {
            WriteTestSupport.AssertWholeViewEquals(again.Top, model, $"{kind} reopened");
        }

        if (snapshot is not null)
        {
            Assert.True(snapshot.AsSpan().SequenceEqual(SnapshotView(temp.Path, top, "s1")), "the internal snapshot changed");
        }

        if (kind.StartsWith("data-file", StringComparison.Ordinal))
        {
            // Guest data went to the data file: the image grew by metadata at most (a few tables), never by the data.
            Assert.True(new FileInfo(topPath).Length - imageBytes <= 8 * ClusterBytesOf(topPath), $"the image grew from {imageBytes} to {new FileInfo(topPath).Length} bytes");
        }

        if (kind == "data-file-raw")
        {
            // A raw data file reads as the guest disk by itself, zeros written included.
            Assert.True(model.AsSpan().SequenceEqual(File.ReadAllBytes(temp.Combine("data.bin"))), "data.bin is not the guest disk");
        }

        static long ClusterBytesOf(string path)
        {
            using var disk = VirtualDisk.Open(path);
            return disk.Top.Storages[0].TopLayer.ClusterBytes;
        }
    }

    [Theory]
    [InlineData("refcount64-512", 21)]
    [InlineData("extended-l2", 22)]
    [InlineData("snapshot", 23)]
    public void ConcurrentWritersAndFlushesLeaveACleanImage(string kind, int seed)
    {
        // Each thread writes its own quarter of the disk (so the model does not depend on the interleaving); clusters
        // at the quarters' edges and L2 tables are shared, and flushes run while others allocate.
        using var temp = new TempFolder();
        string top = Build(temp.Path, kind);
        byte[] model = QemuView(temp.Path, top);
        using (var disk = VirtualDisk.Open(temp.Combine(top), new DiskOpenOptions { ReadOnly = false }))
        {
            var view = disk.Top;
            long cluster = view.Storages[0].TopLayer.ClusterBytes;
            long quarter = view.Size / 4;
            Parallel.For(0, 4, new ParallelOptions { MaxDegreeOfParallelism = 4 }, t =>
            {
                var random = new Random((seed * 10) + t);
                for (int i = 0; i < 80; i++)
                {
                    var (offset, length) = RandomWrite(random, quarter, cluster);
                    byte[] data = WriteTestSupport.Fill(random, length);
                    view.Write(data, (t * quarter) + offset);
                    lock (model)
                    {
                        data.CopyTo(model, (t * quarter) + offset);
                    }

                    if (random.Next(8) == 0)
                    {
                        disk.Flush();
                    }
                }
            });
        }

        AssertQemuCheckClean(temp.Path, top);
        File.WriteAllBytes(temp.Combine("model.raw"), model);
        var compare = ProcessRunner.Run("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", "model.raw", top], check: false, workingDirectory: temp.Path);
        Assert.True(compare.ExitCode == 0, $"qemu-img compare: exit {compare.ExitCode}\n{compare.Stdout}{compare.Stderr}");
    }

    private static byte[] SnapshotView(string folder, string image, string name)
    {
        string raw = Path.Combine(folder, "snapshot.raw");
        Img(folder, "convert", "-f", "qcow2", "-O", "raw", "-l", $"snapshot.name={name}", image, raw);
        try
        {
            return File.ReadAllBytes(raw);
        }
        finally
        {
            File.Delete(raw);
        }
    }

    internal static void AssertQemuCheckClean(string folder, string image)
    {
        var check = ProcessRunner.Run("qemu-img", ["check", "-f", "qcow2", image], check: false, workingDirectory: folder);
        Assert.True(check.ExitCode == 0, $"qemu-img check {image}: exit {check.ExitCode}\n{check.Stdout}{check.Stderr}");
    }

    [Fact]
    public void BitmapsAutoclearBitIsClearedBeforeTheFirstWrite()
    {
        using var temp = new TempFolder();
        Img(temp.Path, "create", "-q", "-f", "qcow2", "a.qcow2", "4M");
        Img(temp.Path, "bitmap", "--add", "a.qcow2", "b0");
        Io(temp.Path, "qcow2", "a.qcow2", "write -P 1 0 64k");
        using (var disk = VirtualDisk.Open(temp.Combine("a.qcow2"), new DiskOpenOptions { ReadOnly = false }))
        {
            disk.Top.Write(new byte[] { 9 }, 5000);
        }

        byte[] head = File.ReadAllBytes(temp.Combine("a.qcow2")).AsSpan(0, 104).ToArray();
        Assert.Equal(0UL, System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(head.AsSpan(88)));

        // QEMU then takes the bitmaps as stale; its check finds at worst their clusters leaked.
        var check = ProcessRunner.Run("qemu-img", ["check", "-f", "qcow2", "a.qcow2"], check: false, workingDirectory: temp.Path);
        Assert.True(check.ExitCode is 0 or 3, check.Stdout + check.Stderr);
    }

    [Theory]
    [InlineData("dirty")]
    [InlineData("corrupt")]
    public void DirtyOrCorruptImagesAreServedReadOnlyWithAWarning(string bit)
    {
        using var temp = new TempFolder();
        Img(temp.Path, "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", "a.qcow2", "4M");
        string path = temp.Combine("a.qcow2");
        using (var f = new FileStream(path, FileMode.Open, FileAccess.ReadWrite))
        {
            f.Position = 72 + 7;
            f.WriteByte(bit == "dirty" ? (byte)1 : (byte)2);
        }

        using var disk = VirtualDisk.Open(path, new DiskOpenOptions { ReadOnly = false });
        Assert.False(disk.Top.IsWritable);
        Assert.Contains(bit, disk.ReadOnlyPlaceReason ?? "", StringComparison.Ordinal);
        Assert.Contains(disk.Warnings, w => w.Contains(bit, StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("refcount64-512", 11)]
    [InlineData("chain-zero", 12)]
    [InlineData("extended-l2", 13)]
    [InlineData("snapshot", 14)]
    public void CrashAtEveryWriteAndFlushLeavesLeaksAtWorstAndKeepsWhatWasFlushed(string kind, int seed)
    {
        using var temp = new TempFolder();
        string top = Build(temp.Folder("image"), kind);
        string folder = temp.Combine("image");
        string topPath = Path.Combine(folder, top);
        byte[] initial = File.ReadAllBytes(topPath);
        byte[] model = QemuView(folder, top);
        var log = new OpLog();
        var random = new Random(seed);
        log.Mark("flushed", model: (byte[])model.Clone());
        using (var disk = VirtualDisk.Open(topPath, new DiskOpenOptions { ReadOnly = false, OpenFile = RecordingImageFile.Opener(log, p => p == topPath) }))
        {
            var view = disk.Top;
            long cluster = view.Storages[0].TopLayer.ClusterBytes;
            for (int i = 0; i < 40; i++)
            {
                var (offset, length) = RandomWrite(random, view.Size, cluster);
                length = Math.Min(length, 20_000);
                byte[] data = WriteTestSupport.Fill(random, length);
                log.Mark("write", offset, length);
                view.Write(data, offset);
                data.CopyTo(model, offset);
                if (random.Next(6) == 0)
                {
                    disk.Flush();
                    log.Mark("flushed", model: (byte[])model.Clone());
                }
            }
        }

        var ops = log.Snapshot();
        Assert.Contains(ops, o => o is FlushOp);
        string crashFolder = temp.Folder("crash");
        foreach (string file in Directory.GetFiles(folder))
        {
            File.Copy(file, Path.Combine(crashFolder, Path.GetFileName(file)), overwrite: true);
        }

        string crashTop = Path.Combine(crashFolder, top);
        var points = ops.Where(o => o is WriteOp or FlushOp).Select(o => o.Seq).Append(ops[^1].Seq + 1).ToList();
        foreach (int point in points)
        {
            DurabilityTests.BuildCrashImage(initial, ops, point, random, crashTop);
            var check = ProcessRunner.Run("qemu-img", ["check", "-f", "qcow2", top], check: false, workingDirectory: crashFolder);
            Assert.True(check.ExitCode is 0 or 3, $"crash at op {point}: qemu-img check exit {check.ExitCode}\n{check.Stdout}{check.Stderr}");
            var ours = Qcow2Checker.Check(crashTop);
            Assert.True(ours.ExitCode == check.ExitCode, $"crash at op {point}: prlfuse check exit {ours.ExitCode}, qemu-img check {check.ExitCode}\n{string.Join("\n", ours.Problems.Select(p => p.ToLine()))}\n{check.Stdout}");

            var flushed = ops.OfType<MarkOp>().Last(m => m.What == "flushed" && m.Seq < point);
            var unsure = new bool[model.Length / 512];
            foreach (var w in ops.OfType<MarkOp>().Where(m => m.What == "write" && m.Seq > flushed.Seq && m.Seq < point))
            {
                for (long s = w.Offset / 512; s <= (w.Offset + w.Length - 1) / 512; s++)
                {
                    unsure[s] = true;
                }
            }

            byte[] view = new byte[model.Length];
            using (var crashed = VirtualDisk.Open(crashTop))
            {
                Assert.Equal(view.Length, crashed.Top.Read(view, 0));
            }

            for (int s = 0; s < unsure.Length; s++)
            {
                if (!unsure[s] && !view.AsSpan(s * 512, 512).SequenceEqual(flushed.Model!.AsSpan(s * 512, 512)))
                {
                    Assert.Fail($"{kind}, crash at op {point}: sector {s}, flushed at op {flushed.Seq} and not written since, reads wrong");
                }
            }
        }
    }
}
