using System.Globalization;
using PrlFuse.Core.IO;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.EndToEnd;

/// <summary>
/// Discard and write-zeroes on current.raw through the real mount: blkdiscard and fstrim through a loop device, and
/// fallocate straight on the file. Discarded ranges read zeros whatever the layers below hold, whole clusters give their
/// host space back, QEMU reads the same disk afterwards, and read-only files refuse.
/// </summary>
[Collection(FuseKernelCollection.Name)]
[Trait("Needs", "Kernel")]
[Trait("Needs", "Qemu")]
[Trait("Needs", "Installed")]
public sealed class DiscardTests(Xunit.Abstractions.ITestOutputHelper output)
{
    private const long DiskBytes = 256L << 20;
    private const int MiB = 1 << 20;

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void DiscardedRangesReadZerosFreeHostSpaceAndQemuAgrees(bool chain)
    {
        using var temp = new TempFolder();
        QemuChain? qemuChain = null;
        string disk;
        string top;
        string[] lower;
        byte[] expected;
        if (chain)
        {
            qemuChain = QemuChain.Build(temp.Path, 3, [DiskBytes / 512], seed: 12);
            string Level(int l) => Path.Combine(qemuChain.Bundle, qemuChain.Levels[l].Files[0]);
            // The layers below hold data under every range discarded here.
            Qemu.Write(Level(0), "write -P 17 4M 40M", "write -P 18 56M 32M", "write -P 19 250M 6M");
            Qemu.Write(Level(1), "write -P 34 20M 30M", "write -P 35 60M 4M");
            disk = qemuChain.Bundle;
            top = Level(2);
            lower = [Level(0), Level(1)];
            expected = qemuChain.OracleView(2, temp.Path);
        }
        else
        {
            disk = top = temp.Combine("disk.hds");
            Qemu.Create(disk, DiskBytes.ToString(CultureInfo.InvariantCulture));
            lower = [];
            expected = new byte[DiskBytes];
        }

        var lowerSums = lower.Select(Hashing.Sha256File).ToList();
        string expectedPath = temp.Combine("expected.raw");
        var random = new Random(chain ? 2 : 1);
        using (var mount = new PrlFuseMount(disk, temp.Combine("mnt")))
        {
            string device = ProcessRunner.Run("losetup", "--find", "--show", mount.Current).Stdout.Trim();
            long freed;
            try
            {
                string maxDiscard = File.ReadAllText($"/sys/block/{Path.GetFileName(device)}/queue/discard_max_bytes").Trim();
                Assert.True(maxDiscard != "0", $"the loop device on current.raw sends no discards (discard_max_bytes {maxDiscard})");

                // Whole and partial clusters of the top hold data over the first 96 MiB (and over the layers below).
                var data = new byte[96 * MiB];
                random.NextBytes(data);
                data.CopyTo(expected, 0);
                string source = temp.Combine("data.bin");
                File.WriteAllBytes(source, data);
                ProcessRunner.Run("dd", $"if={source}", $"of={device}", "bs=1M", "oflag=direct", "conv=notrunc,fsync", "status=none");
                long before = SparseFile.AllocatedBytes(top);

                // Whole clusters; a range with edges inside clusters (sectors are the device's unit); write-zeroes.
                DiscardDevice(device, expected, 8L * MiB, 16L * MiB);
                DiscardDevice(device, expected, (40L * MiB) + 1536, (5L * MiB) + 3584);
                DiscardDevice(device, expected, (58L * MiB) + 4096, (3L * MiB) + 8192, zeroOut: true);
                File.WriteAllBytes(expectedPath, expected);
                Assert.Equal(-1, Hashing.FirstDifference(expectedPath, device));
                freed = before - SparseFile.AllocatedBytes(top);
            }
            finally
            {
                ProcessRunner.Run("losetup", "-d", device);
            }

            // Clusters of the top that the discards covered whole no longer take host space (an overlay's stay, as holes).
            output.WriteLine($"host bytes freed by the discards: {freed}");
            Assert.True(freed >= 16L * MiB, $"the top image gave back {freed} bytes, less than the 16 MiB of whole clusters discarded");

            // fallocate on the file itself: ZERO_RANGE with and without KEEP_SIZE, and a punch reaching past the end.
            using (var handle = File.OpenHandle(mount.Current, FileMode.Open, FileAccess.ReadWrite))
            {
                var tail = new byte[3 * MiB];
                random.NextBytes(tail);
                RandomAccess.Write(handle, tail, DiskBytes - tail.Length);
                tail.CopyTo(expected, DiskBytes - tail.Length);
            }

            FallocateFile(mount.Current, expected, "-z", (72L * MiB) + 5000, 3L * MiB);
            FallocateFile(mount.Current, expected, "-z -n", (80L * MiB) - 100, MiB + 200);
            FallocateFile(mount.Current, expected, "-p", DiskBytes - (2L * MiB) - 777, 4L * MiB);
            File.WriteAllBytes(expectedPath, expected);
            Assert.Equal(-1, Hashing.FirstDifference(expectedPath, mount.Current));
            Assert.Equal(0, mount.Unmount().ExitCode);
        }

        // QEMU finds the top consistent, reads the same disk, and the layers below did not change.
        Qemu.AssertClean(top);
        string qemuView = temp.Combine("qemu.raw");
        if (qemuChain is null)
        {
            Qemu.Convert(top, qemuView);
        }
        else
        {
            File.WriteAllBytes(qemuView, qemuChain.OracleView(2, temp.Path));
        }

        Assert.Equal(-1, Hashing.FirstDifference(expectedPath, qemuView));
        Assert.Equal(lowerSums, lower.Select(Hashing.Sha256File).ToList());
        if (qemuChain is not null)
        {
            AssertEveryViewIsQemus(qemuChain, temp);
        }
    }

    [Fact]
    public void FstrimOfAGuestFilesystemGivesTheDeletedFilesHostSpaceBack()
    {
        using var temp = new TempFolder();
        // 512 MiB in three levels, with data in the layers below the guest filesystem's blocks.
        var chain = QemuChain.Build(temp.Path, 3, [1024 * 1024], seed: 6);
        string top = Path.Combine(chain.Bundle, chain.Levels[2].Files[0]);
        var lower = new[] { 0, 1 }.Select(l => Path.Combine(chain.Bundle, chain.Levels[l].Files[0])).ToList();
        var lowerSums = lower.Select(Hashing.Sha256File).ToList();
        const long written = 128L * MiB;
        long held;
        long trimmed;
        using (var mount = new PrlFuseMount(chain.Bundle, temp.Combine("mnt")))
        {
            string device = ProcessRunner.Run("losetup", "--find", "--show", mount.Current).Stdout.Trim();
            try
            {
                ProcessRunner.Run("mkfs.ext4", "-q", "-F", device);
                string guest = temp.Folder("guest");
                ProcessRunner.Run("mount", device, guest);
                try
                {
                    for (int i = 0; i < 8; i++)
                    {
                        ProcessRunner.Run("dd", "if=/dev/urandom", $"of={guest}/f{i}.bin", "bs=1M", $"count={written / MiB / 8}", "status=none");
                    }

                    ProcessRunner.Run("sync", "-f", guest);
                    held = SparseFile.AllocatedBytes(top);
                    foreach (string f in Directory.GetFiles(guest, "f*.bin"))
                    {
                        File.Delete(f);
                    }

                    ProcessRunner.Run("sync", "-f", guest);
                    ProcessRunner.Run("fstrim", guest);
                    ProcessRunner.Run("sync", "-f", guest);
                    trimmed = SparseFile.AllocatedBytes(top);
                }
                finally
                {
                    ProcessRunner.Run("umount", guest);
                }
            }
            finally
            {
                ProcessRunner.Run("losetup", "-d", device);
            }

            Assert.Equal(0, mount.Unmount().ExitCode);
        }

        output.WriteLine($"top image: {held} bytes with the files, {trimmed} after fstrim ({written} deleted)");
        Assert.True(held - trimmed >= written * 9 / 10, $"fstrim gave back {held - trimmed} bytes of the {written} deleted");
        Qemu.AssertClean(top);
        Assert.Equal(lowerSums, lower.Select(Hashing.Sha256File).ToList());
        AssertEveryViewIsQemus(chain, temp);
    }

    [Fact]
    public void ReadOnlyFilesRefuseAndUnsupportedModesSaySo()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [64 * 2048], seed: 9);
        using (var mount = new PrlFuseMount(chain.Bundle, temp.Combine("mnt")))
        {
            string snapshot = mount.Snapshot(chain.Levels[0].Guid);
            string sum = Hashing.Sha256File(snapshot);
            var refused = ProcessRunner.Run("fallocate", ["-p", "-o", "0", "-l", "1048576", snapshot], check: false);
            Assert.True(refused.ExitCode != 0 && refused.Stderr.Contains("Read-only file system", StringComparison.Ordinal), refused.Stderr);
            Assert.Equal(sum, Hashing.Sha256File(snapshot));

            using var handle = File.OpenHandle(mount.Current, FileMode.Open, FileAccess.ReadWrite);
            const int keepSize = 0x01, zeroRange = 0x10, collapse = 0x08;
            Assert.Equal(-Errno.EOPNOTSUPP, Fallocate(handle, 0, 0, MiB));
            Assert.Equal(-Errno.EOPNOTSUPP, Fallocate(handle, collapse, 0, MiB));
            // Zeroing past the end would grow the disk, which cannot change size; with KEEP_SIZE it stops at the end.
            Assert.Equal(-Errno.EFBIG, Fallocate(handle, zeroRange, chain.SizeBytes - 4096, MiB));
            Assert.Equal(0, Fallocate(handle, zeroRange | keepSize, chain.SizeBytes - 4096, MiB));
            Assert.Equal(chain.SizeBytes, new FileInfo(mount.Current).Length);
            handle.Dispose();
            Assert.Equal(0, mount.Unmount().ExitCode);
        }

        using (var mount = new PrlFuseMount(chain.Bundle, temp.Combine("mnt"), "--read-only"))
        {
            string sum = Hashing.Sha256File(mount.Current);
            var refused = ProcessRunner.Run("fallocate", ["-p", "-o", "0", "-l", "1048576", mount.Current], check: false);
            Assert.True(refused.ExitCode != 0 && refused.Stderr.Contains("Read-only file system", StringComparison.Ordinal), refused.Stderr);
            Assert.Equal(sum, Hashing.Sha256File(mount.Current));
            Assert.Equal(0, mount.Unmount().ExitCode);
        }
    }

    [Fact]
    public void AHostThatCannotPunchHolesGetsZerosAndOneLogLine()
    {
        using var temp = new TempFolder();
        // ramfs has no fallocate at all.
        string host = temp.Folder("ramfs");
        ProcessRunner.Run("mount", "-t", "ramfs", "none", host);
        try
        {
            string image = Path.Combine(host, "disk.hds");
            Qemu.Create(image, "64M");
            string log = temp.Combine("daemon.log");
            var expected = new byte[64 * MiB];
            new Random(5).NextBytes(expected.AsSpan(0, 16 * MiB));
            using (var mount = new PrlFuseMount(image, temp.Combine("mnt"), "--log", log))
            {
                using (var handle = File.OpenHandle(mount.Current, FileMode.Open, FileAccess.Write))
                {
                    RandomAccess.Write(handle, expected.AsSpan(0, 16 * MiB), 0);
                }

                FallocateFile(mount.Current, expected, "-p", 2L * MiB, 4L * MiB);
                FallocateFile(mount.Current, expected, "-p", (9L * MiB) + 100, 3L * MiB);
                string expectedPath = temp.Combine("expected.raw");
                File.WriteAllBytes(expectedPath, expected);
                Assert.Equal(-1, Hashing.FirstDifference(expectedPath, mount.Current));
                Assert.Equal(0, mount.Unmount().ExitCode);
            }

            var lines = File.ReadAllLines(log).Where(l => l.Contains("cannot punch holes", StringComparison.Ordinal)).ToList();
            Assert.True(lines.Count == 1, "expected one line about hole punching in the log:\n" + File.ReadAllText(log));
            Assert.Contains(image, lines[0], StringComparison.Ordinal);
            Qemu.AssertClean(image);
            string qemuView = temp.Combine("qemu.raw");
            Qemu.Convert(image, qemuView);
            Assert.Equal(-1, Hashing.FirstDifference(temp.Combine("expected.raw"), qemuView));
        }
        finally
        {
            ProcessRunner.Run("umount", host);
        }
    }

    /// <summary>blkdiscard (or with <paramref name="zeroOut"/> blkdiscard -z, write-zeroes) of a range of the loop device.</summary>
    private static void DiscardDevice(string device, byte[] expected, long offset, long length, bool zeroOut = false)
    {
        ProcessRunner.Run("blkdiscard", [.. zeroOut ? ["-z"] : Array.Empty<string>(), "-o", Text(offset), "-l", Text(length), device]);
        expected.AsSpan((int)offset, (int)length).Clear();
    }

    /// <summary>util-linux fallocate with <paramref name="mode"/> (-p, -z, -z -n) on the file; the part before the end reads zeros.</summary>
    private static void FallocateFile(string file, byte[] expected, string mode, long offset, long length)
    {
        ProcessRunner.Run("fallocate", [.. mode.Split(' '), "-o", Text(offset), "-l", Text(length), file]);
        long end = Math.Min(offset + length, expected.LongLength);
        expected.AsSpan((int)offset, (int)(end - offset)).Clear();
    }

    private static int Fallocate(Microsoft.Win32.SafeHandles.SafeFileHandle handle, int mode, long offset, long length) =>
        Posix.Fallocate(handle, mode, offset, length) == 0 ? 0 : -Posix.LastError;

    private static string Text(long value) => value.ToString(CultureInfo.InvariantCulture);

    /// <summary>Every file of a read-only mount of the chain equals QEMU's view of its level.</summary>
    internal static void AssertEveryViewIsQemus(QemuChain chain, TempFolder temp)
    {
        using var mount = new PrlFuseMount(chain.Bundle, temp.Combine("mnt"), "--read-only");
        for (int level = 0; level < chain.Levels.Count; level++)
        {
            string oracle = temp.Combine($"qemu-{level}.raw");
            File.WriteAllBytes(oracle, chain.OracleView(level, temp.Path));
            string file = level == chain.Levels.Count - 1 ? mount.Current : mount.Snapshot(chain.Levels[level].Guid);
            Assert.True(Hashing.FirstDifference(oracle, file) == -1, $"level {level}: our view differs from QEMU's");
            File.Delete(oracle);
        }

        Assert.Equal(0, mount.Unmount().ExitCode);
    }
}
