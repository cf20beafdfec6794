using System.Buffers.Binary;
using PrlFuse.Core.Checking;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Tests.Support;
using static PrlFuse.Tests.Core.Formats.Parallels.WriteTestSupport;

namespace PrlFuse.Tests.Core.Formats.Parallels;

/// <summary>
/// The order in which the write path reaches the disk, recorded by a wrapping ImageFile: "Ynot" is durable before
/// any data write, a new cluster's content is written and made durable (a flush that started after its write completed
/// and ended before the BAT write began) before any BAT entry points at it; and crashes simulated from that record
/// (everything before the last completed flush kept, any subset of the rest) leave images with no corruption in
/// which every block written before the last completed flush reads back right.
/// </summary>
[Trait("Needs", "Qemu")]
public sealed class DurabilityTests
{
    [Theory]
    [InlineData(301, false)]
    [InlineData(302, true)]
    public void BatEntriesReachTheDiskOnlyAfterTheirDataIsDurable(int seed, bool concurrent)
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [16 * 2048], seed);
        string topPath = TopPath(chain);
        byte[] initial = File.ReadAllBytes(topPath);
        var log = new OpLog();
        var options = new DiskOpenOptions { ReadOnly = false, OpenFile = RecordingImageFile.Opener(log, p => p == topPath) };
        using (var disk = VirtualDisk.Open(chain.Bundle, options))
        {
            var top = disk.Top;
            long cluster = top.Storages[0].TopLayer.ClusterBytes;
            int threads = concurrent ? 4 : 1;
            Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, t =>
            {
                var random = new Random((seed * 10) + t);
                for (int i = 0; i < 150; i++)
                {
                    var (offset, length) = RandomWrite(random, top.Size, cluster);
                    top.Write(Fill(random, length), offset);
                    if (random.Next(10) == 0)
                    {
                        disk.Flush();
                    }
                }
            });
        }

        AssertDurableOrder(initial, log.Snapshot());
        AssertQemuClean(chain);
    }

    private static void AssertDurableOrder(byte[] initial, List<FileOp> ops)
    {
        Assert.True(ParallelsHeader.TryRead(initial, out var header, out _));
        long batStart = FieldLocations.HeaderSize;
        long batEnd = batStart + (4L * header.BatEntries);
        long dataOffset = header.DataOffsetSectors * 512L;
        long cluster = header.ClusterBytes;
        var bat = new uint[header.BatEntries];
        for (int i = 0; i < bat.Length; i++)
        {
            bat[i] = BinaryPrimitives.ReadUInt32LittleEndian(initial.AsSpan((int)(batStart + (4 * i))));
        }

        var allocated = new HashSet<long>(bat.Where(e => e != 0).Select(e => e * header.BatUnitBytes));
        var firstWrite = new Dictionary<long, WriteOp>();
        var flushes = new List<FlushOp>();
        WriteOp? ynot = null;
        WriteOp? lastHeader = null;
        int batWrites = 0;
        foreach (var op in ops)
        {
            switch (op)
            {
                case FlushOp f:
                    flushes.Add(f);
                    break;
                case WriteOp w when w.Offset < FieldLocations.HeaderSize:
                    Assert.Equal(0, w.Offset);
                    Assert.Equal(FieldLocations.HeaderSize, w.Data.Length);
                    lastHeader = w;
                    if (BinaryPrimitives.ReadUInt32LittleEndian(w.Data.AsSpan(44)) == ParallelsHeader.InUseOpen)
                    {
                        ynot ??= w;
                    }

                    break;
                case WriteOp w when w.Offset < batEnd:
                    Assert.True(w.Offset >= batStart && w.Offset + w.Data.Length <= batEnd, $"write {w.Offset}+{w.Data.Length} straddles the BAT");
                    Assert.True(ynot is not null && FlushBetween(flushes, ynot.Seq, w.StartSeq), "BAT written before \"Ynot\" was durable");
                    batWrites++;
                    for (int k = 0; k < w.Data.Length / 4; k++)
                    {
                        long index = ((w.Offset - batStart) / 4) + k;
                        uint value = BinaryPrimitives.ReadUInt32LittleEndian(w.Data.AsSpan(k * 4));
                        if (value != bat[index] && value != 0)
                        {
                            long host = value * header.BatUnitBytes;
                            Assert.True(firstWrite.TryGetValue(host, out var data), $"BAT entry {index} points at {host}, never written");
                            Assert.True(FlushBetween(flushes, data.Seq, w.StartSeq), $"BAT entry {index} -> {host} written (op {w.StartSeq}) without a flush after its data (op {data.Seq})");
                        }

                        Assert.True(value == bat[index] || bat[index] == 0, $"BAT entry {index} changed from {bat[index]} to {value}");
                        bat[index] = value;
                    }

                    break;
                case WriteOp w:
                    Assert.True(w.Offset >= dataOffset);
                    Assert.True(ynot is not null && FlushBetween(flushes, ynot.Seq, w.StartSeq), $"data write at {w.Offset} before \"Ynot\" was durable");
                    long start = dataOffset + ((w.Offset - dataOffset) / cluster * cluster);
                    if (!allocated.Contains(start) && !firstWrite.ContainsKey(start))
                    {
                        // The first write to a new cluster is its whole content: all of it (old content from below
                        // plus the new bytes) or, over zeros below in space that reads as zeros, just the new bytes.
                        Assert.True(w.Offset + w.Data.Length <= start + cluster, $"first write {w.Offset}+{w.Data.Length} of cluster {start} leaves it");
                        firstWrite[start] = w;
                    }

                    break;
            }
        }

        Assert.True(batWrites > 0);
        Assert.NotNull(lastHeader);
        Assert.NotEqual(ParallelsHeader.InUseOpen, BinaryPrimitives.ReadUInt32LittleEndian(lastHeader!.Data.AsSpan(44)));
        Assert.Equal(BinaryPrimitives.ReadUInt32LittleEndian(initial.AsSpan(44)), BinaryPrimitives.ReadUInt32LittleEndian(lastHeader.Data.AsSpan(44)));
        Assert.True(FlushBetween(flushes, lastHeader.Seq, int.MaxValue), "the clean header was not flushed");
    }

    /// <summary>A flush that started after <paramref name="after"/> completed and returned before <paramref name="before"/> began.</summary>
    private static bool FlushBetween(List<FlushOp> flushes, int after, int before) =>
        flushes.Any(f => f.Seq > after && f.DoneSeq < before);

    [Theory]
    [InlineData(401)]
    [InlineData(402)]
    public void CrashesLeaveNoCorruptionAndKeepWhatWasFlushed(int seed)
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [16 * 2048], seed);
        string topPath = TopPath(chain);
        byte[] initial = File.ReadAllBytes(topPath);
        byte[] model = chain.OracleView(1, temp.Path);
        var log = new OpLog();
        var random = new Random(seed);
        log.Mark("flushed", model: (byte[])model.Clone());
        using (var disk = VirtualDisk.Open(chain.Bundle, new DiskOpenOptions { ReadOnly = false, OpenFile = RecordingImageFile.Opener(log, p => p == topPath) }))
        {
            var top = disk.Top;
            long cluster = top.Storages[0].TopLayer.ClusterBytes;
            for (int i = 0; i < 120; i++)
            {
                var (offset, length) = RandomWrite(random, top.Size, cluster);
                byte[] data = Fill(random, length);
                log.Mark("write", offset, length);
                top.Write(data, offset);
                data.CopyTo(model, offset);
                if (random.Next(12) == 0)
                {
                    disk.Flush();
                    log.Mark("flushed", model: (byte[])model.Clone());
                }
            }
        }

        AssertCrashesKeepWhatWasFlushed(chain, topPath, initial, log.Snapshot(), model.Length, random, Path.Combine(temp.Path, "crash"));
    }

    /// <summary>
    /// Crashes at random points of a recorded session (and after its last op) leave the top image with no corruption
    /// (only "not closed cleanly" and leaks), every sector changed before the last completed flush reads as it was then
    /// (the "flushed" marks carry the model; "write"/"change" marks say which sectors later ops may have touched), and a
    /// repair makes the image clean for QEMU without changing what it reads.
    /// </summary>
    internal static void AssertCrashesKeepWhatWasFlushed(QemuChain chain, string topPath, byte[] initial, List<FileOp> ops, int modelLength, Random random, string crashRoot)
    {
        TempFolder.CopyFiles(chain.Bundle, crashRoot);
        string crashTop = Path.Combine(crashRoot, Path.GetFileName(topPath));
        int lastSeq = ops[^1].Seq;
        var points = Enumerable.Range(0, 14).Select(_ => random.Next(1, lastSeq + 1)).Append(lastSeq + 1).ToList();
        foreach (int point in points)
        {
            BuildCrashImage(initial, ops, point, random, crashTop);

            var report = ImageChecker.Check(crashTop);
            Assert.True(
                report.Problems.All(p => p.Kind is CheckProblemKind.NotClosedCleanly or CheckProblemKind.LeakedSpace),
                $"crash at op {point}: {string.Join("; ", report.Problems.Select(p => p.ToLine()))}");

            // What was changed before the last completed flush reads back right; later changes may or may not be there.
            var flushed = ops.OfType<MarkOp>().Last(m => m.What == "flushed" && m.Seq < point);
            var unsure = new bool[modelLength / 512];
            foreach (var w in ops.OfType<MarkOp>().Where(m => m.What is "write" or "change" && m.Seq > flushed.Seq && m.Seq < point && m.Length > 0))
            {
                for (long s = w.Offset / 512; s <= (w.Offset + w.Length - 1) / 512; s++)
                {
                    unsure[s] = true;
                }
            }

            byte[] view = new byte[modelLength];
            using (var crashed = Reopen.Retrying(() => VirtualDisk.Open(crashRoot)))
            {
                Assert.Equal(view.Length, crashed.Top.Read(view, 0));
            }

            for (int s = 0; s < unsure.Length; s++)
            {
                if (!unsure[s] && !view.AsSpan(s * 512, 512).SequenceEqual(flushed.Model.AsSpan(s * 512, 512)))
                {
                    Assert.Fail($"crash at op {point}: sector {s}, flushed at op {flushed.Seq} and not changed since, reads wrong");
                }
            }

            // And a repair makes it clean for qemu too, without changing what it reads.
            var repaired = ImageChecker.Repair(crashTop);
            Assert.Equal(0, repaired.ExitCode);
            Assert.Equal(0, Qemu.Check(crashTop).ExitCode);
            using (var again = Reopen.Retrying(() => VirtualDisk.Open(crashRoot)))
            {
                AssertWholeViewEquals(again.Top, view, $"crash at op {point}, repaired");
            }
        }
    }

    [Fact]
    public void LiveCopiesTakenWhileWritesAreInFlightHaveNoCorruption()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [16 * 2048], 403);
        string topPath = TopPath(chain);
        string copy = Path.Combine(temp.Path, "live.hds");
        using var disk = VirtualDisk.Open(chain.Bundle, new DiskOpenOptions { ReadOnly = false });
        var top = disk.Top;
        long cluster = top.Storages[0].TopLayer.ClusterBytes;
        using var stop = new CancellationTokenSource();
        var writers = Enumerable.Range(0, 3).Select(t => new Thread(() =>
        {
            var random = new Random(403 + t);
            while (!stop.IsCancellationRequested)
            {
                var (offset, length) = RandomWrite(random, top.Size, cluster);
                top.Write(Fill(random, length), offset);
                if (random.Next(8) == 0)
                {
                    disk.Flush();
                }
            }
        })).ToList();
        writers.ForEach(t => t.Start());
        try
        {
            for (int i = 0; i < 15; i++)
            {
                Thread.Sleep(20);
                File.Copy(topPath, copy, overwrite: true);
                var report = ImageChecker.Check(copy);
                Assert.True(
                    report.Problems.All(p => p.Kind is CheckProblemKind.NotClosedCleanly or CheckProblemKind.LeakedSpace),
                    $"live copy {i}: {string.Join("; ", report.Problems.Select(p => p.ToLine()))}");
            }
        }
        finally
        {
            stop.Cancel();
            writers.ForEach(t => t.Join());
        }
    }

    /// <summary>
    /// The file as a crash at op <paramref name="point"/> could leave it: every op before the start of the last flush
    /// that returned before the crash, then a random subset of the later ones (in order).
    /// </summary>
    internal static void BuildCrashImage(byte[] initial, List<FileOp> ops, int point, Random random, string path)
    {
        var durable = ops.OfType<FlushOp>().Where(f => f.DoneSeq < point).Select(f => f.Seq).DefaultIfEmpty(0).Max();
        File.WriteAllBytes(path, initial);
        using var f = new FileStream(path, FileMode.Open, FileAccess.ReadWrite);
        foreach (var op in ops)
        {
            bool started = op switch
            {
                WriteOp w => w.StartSeq < point,
                PunchOp p => p.StartSeq < point,
                _ => op.Seq < point,
            };
            bool keep = op.Seq < durable || (started && random.Next(2) == 0);
            if (!keep)
            {
                continue;
            }

            switch (op)
            {
                case WriteOp w:
                    f.Position = w.Offset;
                    f.Write(w.Data);
                    break;
                case SetLengthOp l:
                    f.SetLength(l.Length);
                    break;
                case PunchOp p when p.Offset < f.Length:
                    // A punched range reads as zeros (within the file; a hole never extends it).
                    f.Position = p.Offset;
                    f.Write(new byte[Math.Min(p.Length, f.Length - p.Offset)]);
                    break;
            }
        }
    }
}
