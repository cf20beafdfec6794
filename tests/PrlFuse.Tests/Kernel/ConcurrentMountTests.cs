using System.Buffers.Binary;
using System.Collections.Concurrent;
using PrlFuse.Core.Engine;
using PrlFuse.Tests.Fuse;
using PrlFuse.Tests.Oracle;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Kernel;

/// <summary>
/// Parallel random writers and readers on current.raw through the real mount, against a model: no lost and no torn
/// write at the granularity of 64 KiB cells (each write fills whole cells with one stamp).
/// </summary>
[Collection(FuseKernelCollection.Name)]
public sealed class ConcurrentMountTests
{
    private const int Cell = 64 * 1024;

    [Fact]
    public async Task ParallelWritersAndReadersOnCurrentRawLoseAndTearNothing()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [64 * 2048], seed: 23);
        byte[] original = chain.OracleView(1, temp.Path);
        int cells = original.Length / Cell;
        const int Writers = 4;

        // Cells [0, cells/2) belong to one writer each (exact final value); the rest are shared by all (any stamp
        // written there may win, but a cell never mixes two).
        var lastOwned = new long[cells];
        var candidates = new ConcurrentDictionary<int, ConcurrentBag<long>>();
        var torn = new ConcurrentQueue<string>();
        using var mount = new PrlFuseMount(chain.Bundle, temp.Combine("mnt"));
        using (var handle = File.OpenHandle(mount.Current, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite))
        {
            using var stop = new CancellationTokenSource();
            var writers = Enumerable.Range(0, Writers).Select(w => Task.Run(() =>
            {
                var random = new Random(100 + w);
                var buffer = new byte[4 * Cell];
                for (int i = 0; i < 400; i++)
                {
                    bool shared = random.Next(2) == 0;
                    int count = 1 + random.Next(4);
                    int first = shared
                        ? (cells / 2) + random.Next((cells / 2) - count + 1)
                        : (random.Next(cells / 2 / Writers) * Writers) + w;
                    if (!shared)
                    {
                        count = 1;
                    }

                    long stamp = ((long)(w + 1) << 32) | (uint)(i + 1);
                    for (int c = 0; c < count; c++)
                    {
                        Fill(buffer.AsSpan(c * Cell, Cell), stamp + ((long)c << 48));
                        if (shared)
                        {
                            candidates.GetOrAdd(first + c, _ => []).Add(stamp + ((long)c << 48));
                        }
                    }

                    RandomAccess.Write(handle, buffer.AsSpan(0, count * Cell), (long)first * Cell);
                    if (!shared)
                    {
                        lastOwned[first] = stamp;
                    }
                }
            })).ToArray();
            var readers = Enumerable.Range(0, 2).Select(r => Task.Run(() =>
            {
                var random = new Random(200 + r);
                var buffer = new byte[Cell];
                while (!stop.IsCancellationRequested)
                {
                    int cell = random.Next(cells);
                    RandomAccess.Read(handle, buffer, (long)cell * Cell);
                    if (!IsWhole(buffer, original.AsSpan(cell * Cell, Cell)))
                    {
                        torn.Enqueue($"reader saw cell {cell} torn");
                    }
                }
            })).ToArray();
            await Task.WhenAll(writers);
            stop.Cancel();
            await Task.WhenAll(readers);
        }

        Assert.Empty(torn);
        Assert.Equal(0, mount.Unmount().ExitCode);

        // After a clean unmount, the image holds exactly what the model says.
        using var disk = VirtualDisk.Open(chain.Bundle);
        var got = new byte[Cell];
        for (int cell = 0; cell < cells; cell++)
        {
            disk.Top.Read(got, (long)cell * Cell);
            var before = original.AsSpan(cell * Cell, Cell);
            if (cell < cells / 2)
            {
                if (lastOwned[cell] == 0)
                {
                    Assert.True(before.SequenceEqual(got), $"cell {cell} changed though nobody wrote it");
                }
                else
                {
                    Assert.Equal(lastOwned[cell], BinaryPrimitives.ReadInt64LittleEndian(got));
                    Assert.True(IsWhole(got, before), $"cell {cell} torn");
                }
            }
            else if (candidates.TryGetValue(cell, out var bag))
            {
                long stamp = BinaryPrimitives.ReadInt64LittleEndian(got);
                Assert.True(bag.Contains(stamp) && IsWhole(got, before), $"shared cell {cell} holds no written stamp whole");
            }
            else
            {
                Assert.True(before.SequenceEqual(got), $"shared cell {cell} changed though nobody wrote it");
            }
        }

        string top = Path.Combine(chain.Bundle, chain.Levels[1].Files[0]);
        var check = ProcessRunner.Run("qemu-img", ["check", "-f", "parallels", top], check: false);
        Assert.True(check.ExitCode == 0, check.Stdout + check.Stderr);
    }

    private static void Fill(Span<byte> cell, long stamp)
    {
        for (int i = 0; i < cell.Length; i += 8)
        {
            BinaryPrimitives.WriteInt64LittleEndian(cell[i..], stamp);
        }
    }

    /// <summary>A cell is whole when it is its original content or one stamp repeated throughout.</summary>
    private static bool IsWhole(ReadOnlySpan<byte> cell, ReadOnlySpan<byte> original)
    {
        if (cell.SequenceEqual(original))
        {
            return true;
        }

        long stamp = BinaryPrimitives.ReadInt64LittleEndian(cell);
        for (int i = 8; i < cell.Length; i += 8)
        {
            if (BinaryPrimitives.ReadInt64LittleEndian(cell[i..]) != stamp)
            {
                return false;
            }
        }

        return stamp != 0;
    }
}
