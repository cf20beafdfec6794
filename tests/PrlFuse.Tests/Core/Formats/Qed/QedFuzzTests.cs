using System.Buffers.Binary;
using PrlFuse.Core;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Qed;
using PrlFuse.Tests.Support;
using static PrlFuse.Tests.Core.Formats.Qcow2.Qcow2Oracle;

namespace PrlFuse.Tests.Core.Formats.Qed;

/// <summary>
/// Hostile QED images: a qemu-made image (with a backing file name) whose header, L1 and L2 tables get random
/// mutations (random bytes, boundary numbers, offsets past the end, sizes at the caps). Opening, reading every byte and
/// checking each one ends in a one-line refusal or an I/O error for damaged clusters, never another exception, a hang
/// or an unbounded allocation.
/// </summary>
[Trait("Needs", "Qemu")]
public sealed class QedFuzzTests
{
    private static readonly ulong[] Interesting = [0, 1, 2, 511, 512, 4095, 4096, 65536, 1UL << 26, 1UL << 32, (1UL << 63) - 1, 1UL << 63, ulong.MaxValue, 0xFFFF_FFFF];

    [Fact]
    public async Task MutatedHeadersAndTablesNeverCrashHangOrAllocateWithoutBound()
    {
        using var temp = new TempFolder();
        File.WriteAllBytes(temp.Combine("base.img"), new byte[1 << 20]);
        Img(temp.Path, "create", "-q", "-f", "qed", "-o", "cluster_size=4096,table_size=2", "-b", "base.img", "-F", "raw", "a.qed", "16M");
        Io(temp.Path, "qed", "a.qed", "write -P 1 0 100k", "write -z 1M 64k", "write -P 2 9M 10k");
        byte[] original = File.ReadAllBytes(temp.Combine("a.qed"));
        Assert.True(QedHeader.TryRead(original, out var header, out _));
        long l2 = (long)BinaryPrimitives.ReadUInt64LittleEndian(original.AsSpan((int)header.L1TableOffset));
        string image = temp.Combine("fuzz.qed");
        var random = new Random(20261207);
        int refused = 0;
        for (int i = 0; i < 600; i++)
        {
            byte[] bytes = (byte[])original.Clone();
            int mutations = 1 + random.Next(4);
            for (int m = 0; m < mutations; m++)
            {
                int region = random.Next(3);
                long start = region switch { 0 => 0, 1 => header.L1TableOffset, _ => l2 };
                int span = region == 0 ? FieldLocations.HeaderBytes + 16 : 256;
                int at = (int)start + (random.Next(span) & ~(random.Next(2) == 0 ? 7 : 0));
                if (random.Next(2) == 0 && at + 8 <= bytes.Length)
                {
                    BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(at), Interesting[random.Next(Interesting.Length)] + (ulong)random.Next(-1, 2));
                }
                else if (at < bytes.Length)
                {
                    bytes[at] = (byte)random.Next(256);
                }
            }

            File.WriteAllBytes(image, bytes);
            var attempt = Task.Run(() => OpenReadAndCheck(image));
            Assert.True(await Task.WhenAny(attempt, Task.Delay(TimeSpan.FromSeconds(20))) == attempt, $"case {i}: no answer within 20 s");
            refused += await attempt ? 0 : 1;
        }

        Assert.True(refused > 0 && refused < 600, $"{refused} of 600 refused: the mutations must hit both sides");
    }

    /// <summary>True when the image opened; refusals and EIO are the answers expected of hostile input.</summary>
    private static bool OpenReadAndCheck(string image)
    {
        long before = GC.GetTotalAllocatedBytes();
        try
        {
            _ = QedChecker.Check(image);
            using var disk = VirtualDisk.Open(image, new DiskOpenOptions { CacheBytes = 1 << 20 });
            byte[] buffer = new byte[1 << 20];
            for (long offset = 0; offset < Math.Min(disk.Top.Size, 64L << 20); offset += buffer.Length)
            {
                try
                {
                    disk.Top.Read(buffer, offset);
                }
                catch (IOException)
                {
                    // A damaged cluster reads as an I/O error.
                }
            }

            _ = disk.Top.SeekData(0);
            return true;
        }
        catch (PrlFuseException)
        {
            return false;
        }
        finally
        {
            Assert.True(GC.GetTotalAllocatedBytes() - before < 1L << 30, "one case allocated more than 1 GiB");
        }
    }
}
