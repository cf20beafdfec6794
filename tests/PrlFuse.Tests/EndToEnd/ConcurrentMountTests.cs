using System.Buffers.Binary;
using System.Collections.Concurrent;
using PrlFuse.Core.Engine;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.EndToEnd;

/// <summary>
/// Parallel random writers and readers on current.raw through the real mount, against a model: no lost and no torn
/// write at the granularity of 64 KiB cells (each write fills whole cells with one stamp).
/// <para>
/// What a reader may see while a write of the same bytes is in flight is what a disk gives: each part old or new
/// (the host page cache copies page by page, and neither the kernel's FUSE nor a block device orders a read against
/// an overlapping write). So readers check what does hold: every 8-byte word is the cell's original word or a stamp
/// some writer wrote to that very cell (no bytes from elsewhere, no zeros of a cluster not yet filled), and once a
/// write has returned, no later read of its cell sees anything older (no stale cache, no lost publication).
/// </para>
/// </summary>
[Collection(FuseKernelCollection.Name)]
[Trait("Needs", "Kernel")]
[Trait("Needs", "Qemu")]
[Trait("Needs", "Installed")]
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
        var bad = new ConcurrentQueue<string>();
        var inFlight = new int[Writers]; // the cell each writer is writing now: readers aim at it half the time
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

                    Volatile.Write(ref inFlight[w], first);
                    RandomAccess.Write(handle, buffer.AsSpan(0, count * Cell), (long)first * Cell);
                    if (!shared)
                    {
                        Volatile.Write(ref lastOwned[first], stamp);
                    }
                }
            })).ToArray();
            var readers = Enumerable.Range(0, 2).Select(r => Task.Run(() =>
            {
                var random = new Random(200 + r);
                var buffer = new byte[Cell];
                while (!stop.IsCancellationRequested)
                {
                    int cell = random.Next(2) == 0 ? Volatile.Read(ref inFlight[random.Next(Writers)]) : random.Next(cells);
                    long floor = cell < cells / 2 ? Volatile.Read(ref lastOwned[cell]) : 0;
                    RandomAccess.Read(handle, buffer, (long)cell * Cell);
                    string? problem = cell < cells / 2
                        ? CheckOwnedRead(buffer, original.AsSpan(cell * Cell, Cell), owner: (cell % Writers) + 1, floor)
                        : CheckSharedRead(buffer, original.AsSpan(cell * Cell, Cell), candidates.TryGetValue(cell, out var bag) ? bag : null);
                    if (problem is not null)
                    {
                        bad.Enqueue($"reader, cell {cell}: {problem}");
                    }
                }
            })).ToArray();
            await Task.WhenAll(writers);
            stop.Cancel();
            await Task.WhenAll(readers);
        }

        Assert.Empty(bad);
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
        var check = Qemu.Check(top);
        Assert.True(check.ExitCode == 0, check.Stdout + check.Stderr);
    }

    /// <summary>
    /// A read of a cell owned by one writer: each word original (only while no write to it has returned before the
    /// read began) or that writer's stamp, no older than the last write that returned before the read began.
    /// </summary>
    private static string? CheckOwnedRead(ReadOnlySpan<byte> cell, ReadOnlySpan<byte> original, int owner, long floor)
    {
        long previous = 0;
        for (int i = 0; i < cell.Length; i += 8)
        {
            long word = BinaryPrimitives.ReadInt64LittleEndian(cell[i..]);
            if (word == previous)
            {
                continue;
            }

            if (word == BinaryPrimitives.ReadInt64LittleEndian(original[i..]))
            {
                if (floor != 0)
                {
                    return $"original bytes at +{i} after write {floor:x} had returned";
                }
            }
            else if ((word >> 32) != owner || (uint)word == 0 || (uint)word > 400)
            {
                return $"word {word:x} at +{i} was never written to this cell";
            }
            else if (word < floor)
            {
                return $"stale word {word:x} at +{i} after write {floor:x} had returned";
            }

            previous = word;
        }

        return null;
    }

    /// <summary>A read of a shared cell: each word original or a stamp some writer wrote to this cell.</summary>
    private static string? CheckSharedRead(ReadOnlySpan<byte> cell, ReadOnlySpan<byte> original, ConcurrentBag<long>? written)
    {
        long previous = 0;
        for (int i = 0; i < cell.Length; i += 8)
        {
            long word = BinaryPrimitives.ReadInt64LittleEndian(cell[i..]);
            if (word == previous || word == BinaryPrimitives.ReadInt64LittleEndian(original[i..]))
            {
                continue;
            }

            if (written is null || !written.Contains(word))
            {
                return $"word {word:x} at +{i} was never written to this cell";
            }

            previous = word;
        }

        return null;
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
