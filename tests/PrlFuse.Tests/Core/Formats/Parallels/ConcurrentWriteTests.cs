using System.Buffers.Binary;
using System.Collections.Concurrent;
using PrlFuse.Core.Checking;
using PrlFuse.Core.Engine;
using PrlFuse.Tests.Core.Checking;
using PrlFuse.Tests.Support;
using static PrlFuse.Tests.Core.Formats.Parallels.WriteTestSupport;

namespace PrlFuse.Tests.Core.Formats.Parallels;

/// <summary>
/// Several writers and readers at once on the top of a chain: writers racing on the same unallocated clusters with
/// whole sectors of distinct patterns (every sector ends as one of the values written to it, never torn), writers on
/// disjoint ranges (no write lost), readers that see only bytes written to the sector they read, and a flusher. No cluster is allocated
/// twice: qemu-img check and our checker are clean afterwards and qemu reads what we read.
/// </summary>
[Trait("Needs", "Qemu")]
public sealed class ConcurrentWriteTests
{
    private const int Sector = 512;

    [Theory]
    [InlineData(201, 0)]
    [InlineData(202, 4 << 20)]
    public void RacingAndDisjointWritersWithReaders(int seed, long cacheBytes)
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [64 * 2048], seed);

        // Data everywhere below (the built chain is mostly zeros): a read of a new cluster before its data is in the
        // file then shows zeros, which are foreign, instead of passing for the original.
        Qemu.Write(Path.Combine(chain.Bundle, chain.Levels[0].Files[0]), $"write -P 92 0 {64 * 2048 * 512}");
        byte[] original = chain.OracleView(1, temp.Path);
        byte[] model = (byte[])original.Clone();
        var written = new ConcurrentDictionary<long, ConcurrentBag<(int Writer, int Seq)>>();
        byte[] final;

        using (var disk = VirtualDisk.Open(chain.Bundle, new DiskOpenOptions { ReadOnly = false, CacheBytes = cacheBytes }))
        {
            var top = disk.Top;
            var layer = top.Storages[0].TopLayer;
            long cluster = layer.ClusterBytes;
            long clusters = model.Length / cluster;
            var unallocated = Enumerable.Range(0, (int)clusters).Where(c => !layer.TryMap(c * cluster, out _, out _)).ToList();
            Assert.True(unallocated.Count >= 12, $"only {unallocated.Count} unallocated clusters");
            var race = unallocated.Take(4).ToArray();
            var own = unallocated.Skip(4).Take(8).ToArray();
            using var stop = new CancellationTokenSource();
            var errors = new ConcurrentQueue<string>();
            var threads = new List<Thread>();

            // Racing writers: whole sectors with (sector, writer, seq) patterns into the same few unallocated clusters.
            for (int w = 0; w < 4; w++)
            {
                int writer = w;
                threads.Add(new Thread(() =>
                {
                    var random = new Random(seed * 100 + writer);
                    for (int seq = 0; seq < 400; seq++)
                    {
                        long c = race[random.Next(race.Length)];
                        int sectors = 1 + random.Next(8);
                        long first = (c * cluster / Sector) + random.Next((int)(cluster / Sector) - sectors + 1);
                        var data = new byte[sectors * Sector];
                        for (int k = 0; k < sectors; k++)
                        {
                            Pattern(data.AsSpan(k * Sector, Sector), first + k, writer, seq);
                            written.GetOrAdd(first + k, _ => []).Add((writer, seq));
                        }

                        top.Write(data, first * Sector);
                    }
                }));
            }

            // Disjoint writers: each owns half of the other unallocated clusters; any bytes, any alignment inside them.
            for (int w = 0; w < 2; w++)
            {
                int writer = w;
                threads.Add(new Thread(() =>
                {
                    var random = new Random(seed * 1000 + writer);
                    var mine = own.Where((_, i) => i % 2 == writer).ToArray();
                    for (int i = 0; i < 300; i++)
                    {
                        long c = mine[random.Next(mine.Length)];
                        int within = random.Next((int)cluster);
                        int length = 1 + random.Next((int)cluster - within);
                        var data = Fill(random, length);
                        long offset = (c * cluster) + within;
                        top.Write(data, offset);
                        data.CopyTo(model, offset);
                        var back = new byte[length];
                        top.Read(back, offset);
                        if (!back.AsSpan().SequenceEqual(data))
                        {
                            errors.Enqueue($"disjoint writer {writer}: read-back of {offset}+{length} differs");
                        }
                    }
                }));
            }

            // Readers: every 8-byte word of the racing clusters is the original's or one written to that very sector
            // (writes are registered before they start). Whole sectors are not asked of a read that overlaps a write in
            // flight: the host page cache copies without a lock against readers, so such a read may see part of the
            // write (the disk's guarantee; see README). Once the writers are done, every sector is checked whole below.
            for (int r = 0; r < 2; r++)
            {
                int reader = r;
                threads.Add(new Thread(() =>
                {
                    var random = new Random(seed * 10_000 + reader);
                    var buffer = new byte[cluster];
                    while (!stop.IsCancellationRequested)
                    {
                        long c = race[random.Next(race.Length)];
                        top.Read(buffer, c * cluster);
                        for (int k = 0; k < cluster / Sector; k++)
                        {
                            long sector = (c * cluster / Sector) + k;
                            var s = buffer.AsSpan(k * Sector, Sector);
                            if (!s.SequenceEqual(original.AsSpan((int)(sector * Sector), Sector)) && !IsPattern(s, sector)
                                && ForeignWord(s, original.AsSpan((int)(sector * Sector), Sector), sector, written) is int word)
                            {
                                errors.Enqueue($"reader {reader}: word {word} of sector {sector} is neither the original nor written to it");
                                return;
                            }
                        }
                    }
                }));
            }

            threads.Add(new Thread(() =>
            {
                while (!stop.IsCancellationRequested)
                {
                    disk.Flush();
                    Thread.Sleep(2);
                }
            }));

            foreach (var t in threads)
            {
                t.Start();
            }

            foreach (var t in threads.Take(6))
            {
                t.Join();
            }

            stop.Cancel();
            foreach (var t in threads.Skip(6))
            {
                t.Join();
            }

            Assert.Empty(errors);

            // Every racing sector holds one of the values written to it; the rest of the disk is the model.
            final = new byte[model.Length];
            Assert.Equal(final.Length, top.Read(final, 0));
            foreach (long c in race)
            {
                for (long sector = c * cluster / Sector; sector < (c + 1) * cluster / Sector; sector++)
                {
                    var s = final.AsSpan((int)(sector * Sector), Sector);
                    if (written.TryGetValue(sector, out var values))
                    {
                        Assert.True(IsPattern(s, sector), $"sector {sector} is torn");
                        var who = (BinaryPrimitives.ReadInt32LittleEndian(s[8..]), BinaryPrimitives.ReadInt32LittleEndian(s[12..]));
                        Assert.Contains(who, values);
                    }
                    else
                    {
                        Assert.True(s.SequenceEqual(original.AsSpan((int)(sector * Sector), Sector)), $"unwritten sector {sector} changed");
                    }

                    s.CopyTo(model.AsSpan((int)(sector * Sector)));
                }
            }

            CheckCommandTests.AssertSameData(model, final);
        }

        // No cluster allocated twice, nothing leaked, and qemu reads what we read.
        AssertQemuClean(chain);
        Assert.Empty(ImageChecker.Check(TopPath(chain)).Problems);
        CheckCommandTests.AssertSameData(final, chain.OracleView(1, temp.Path));
    }

    private static void Pattern(Span<byte> sector, long index, int writer, int seq)
    {
        for (int i = 16; i < sector.Length; i++)
        {
            sector[i] = (byte)((i * 31) + (writer * 7) + (seq * 13) + index);
        }

        BinaryPrimitives.WriteInt64LittleEndian(sector, index);
        BinaryPrimitives.WriteInt32LittleEndian(sector[8..], writer);
        BinaryPrimitives.WriteInt32LittleEndian(sector[12..], seq);
    }

    /// <summary>The first 8-byte word of <paramref name="sector"/> that is neither the original's nor that word of a pattern written to it, or null.</summary>
    private static int? ForeignWord(ReadOnlySpan<byte> sector, ReadOnlySpan<byte> original, long index, ConcurrentDictionary<long, ConcurrentBag<(int Writer, int Seq)>> written)
    {
        var candidates = written.TryGetValue(index, out var bag) ? bag.ToArray() : [];
        Span<byte> expected = stackalloc byte[Sector];
        var ok = new bool[Sector / 8];
        for (int w = 0; w < ok.Length; w++)
        {
            ok[w] = sector.Slice(w * 8, 8).SequenceEqual(original.Slice(w * 8, 8));
        }

        foreach (var (writer, seq) in candidates)
        {
            Pattern(expected, index, writer, seq);
            for (int w = 0; w < ok.Length; w++)
            {
                ok[w] |= sector.Slice(w * 8, 8).SequenceEqual(expected.Slice(w * 8, 8));
            }
        }

        int first = Array.IndexOf(ok, false);
        return first < 0 ? null : first;
    }

    private static bool IsPattern(ReadOnlySpan<byte> sector, long index)
    {
        if (BinaryPrimitives.ReadInt64LittleEndian(sector) != index)
        {
            return false;
        }

        Span<byte> expected = stackalloc byte[Sector];
        Pattern(expected, index, BinaryPrimitives.ReadInt32LittleEndian(sector[8..]), BinaryPrimitives.ReadInt32LittleEndian(sector[12..]));
        return expected.SequenceEqual(sector);
    }
}
