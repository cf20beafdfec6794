using System.Diagnostics;
using System.Text.Json.Nodes;
using PrlFuse.Core.Descriptor;
using PrlFuse.Tests.Core.Management;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.EndToEnd;

/// <summary>
/// 'prlfuse snapshot create' on a disk mounted read-write, through the installed binary: the daemon takes it, the new
/// snapshots/{GUID}.raw appears at once with the content of that moment, and current.raw goes on for the handles and
/// loop devices opened before (same file, same size, no error); after unmounting, QEMU agrees with every view.
/// </summary>
[Collection(FuseKernelCollection.Name)]
[Trait("Needs", "Kernel")]
[Trait("Needs", "Qemu")]
[Trait("Needs", "Installed")]
public sealed class LiveSnapshotTests
{
    private const int Offset = 3 << 20;

    [Fact]
    public void ASnapshotOfAMountedDiskAppearsAtOnceAndCurrentGoesOnThroughAHandleOpenedBefore()
    {
        using var temp = new TempFolder();
        string bundle = temp.Combine("live.hdd");
        Assert.Equal(0, PrlFuseCli.Run("create", bundle, "--size", "64M", "--cluster", "256K").ExitCode);
        byte[] first = Pattern(1, 2 << 20);
        byte[] second = Pattern(2, 1 << 20);
        byte[] third = Pattern(3, 256 << 10);
        Guid older;
        Guid newer;
        using (var mount = new PrlFuseMount(bundle, temp.Combine("mnt")))
        {
            using (var handle = new FileStream(mount.Current, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite, 1))
            {
                WriteAt(handle, Offset, first);
                var before = new FileInfo(mount.Current);
                ulong inode = Inode(mount.Current);

                older = Create(bundle, "--name", "live one");
                string olderFile = mount.Snapshot(older);
                Assert.Contains(Path.GetFileName(olderFile), Directory.GetFiles(Path.Combine(mount.Mountpoint, "snapshots")).Select(Path.GetFileName));
                Assert.Equal(first, ReadAt(olderFile, Offset, first.Length));
                // Read-only: the mode says so, and an open for writing fails (EROFS even for root, whom the mode does not stop).
                Assert.Equal("444", ProcessRunner.Run("stat", "-c", "%a", olderFile).Stdout.Trim());
                var refused = Record.Exception(() => new FileStream(olderFile, FileMode.Open, FileAccess.Write).Dispose());
                Assert.True(refused is IOException or UnauthorizedAccessException, $"opening a snapshot for writing: {refused}");

                // The handle opened before the snapshot writes the current state; the snapshot keeps the old bytes.
                WriteAt(handle, Offset + (512 << 10), second);
                byte[] expected = Overlay(first, 512 << 10, second);
                Assert.Equal(expected, ReadAt(mount.Current, Offset, expected.Length));
                Assert.Equal(expected, ReadAt(handle, Offset, expected.Length));
                Assert.Equal(first, ReadAt(olderFile, Offset, first.Length));
                Assert.Equal(inode, Inode(mount.Current));
                Assert.Equal(before.Length, new FileInfo(mount.Current).Length);

                // Again, over a chain of three: each snapshot keeps its moment.
                newer = Create(bundle);
                WriteAt(handle, Offset, third);
                Assert.Equal(expected, ReadAt(mount.Snapshot(newer), Offset, expected.Length));
                Assert.Equal(Overlay(expected, 0, third), ReadAt(mount.Current, Offset, expected.Length));
                Assert.Equal(first, ReadAt(olderFile, Offset, first.Length));
            }

            // list goes through the image locks as a reader: it sees the new tree beside the mount.
            var list = PrlFuseCli.Run("snapshot", "list", "--json", "--force-share", bundle);
            Assert.True(list.ExitCode == 0, list.Stderr);
            Assert.Equal(3, JsonNode.Parse(list.Stdout)!["snapshots"]!.AsArray().Count);
            Assert.Equal(0, mount.Unmount().ExitCode);
        }

        var views = BundleOracle.AssertEveryViewMatchesQemu(bundle, temp.Path);
        Assert.Equal(3, views.Count);
        Assert.Equal(first, views[older].AsSpan(Offset, first.Length).ToArray());
        byte[] atNewer = Overlay(first, 512 << 10, second);
        Assert.Equal(atNewer, views[newer].AsSpan(Offset, atNewer.Length).ToArray());
        Assert.Equal(Overlay(atNewer, 0, third), views[DiskDescriptor.PredefinedTopGuid].AsSpan(Offset, atNewer.Length).ToArray());
        Assert.Contains("<Name>live one</Name>", File.ReadAllText(Path.Combine(bundle, "DiskDescriptor.xml")), StringComparison.Ordinal);
    }

    [Fact]
    public void ALiveSnapshotUnderFioOnExt4IsACleanFilesystemWithTheFilesWrittenBefore()
    {
        using var temp = new TempFolder();
        string bundle = temp.Combine("guest.hdd");
        Assert.Equal(0, PrlFuseCli.Run("create", bundle, "--size", "512M").ExitCode);
        string guest = temp.Folder("guest");
        string peek = temp.Combine("peek");
        var written = new Dictionary<string, string>();
        Guid snapshot;
        using (var mount = new PrlFuseMount(bundle, temp.Combine("mnt")))
        {
            string device = ProcessRunner.Run("losetup", "--find", "--show", mount.Current).Stdout.Trim();
            bool mounted = false;
            bool frozen = false;
            Process? fio = null;
            try
            {
                ProcessRunner.Run("mkfs.ext4", "-q", "-F", device);
                ProcessRunner.Run("mount", device, guest);
                mounted = true;
                string before = Directory.CreateDirectory(Path.Combine(guest, "before")).FullName;
                for (int i = 0; i < 8; i++)
                {
                    string file = Path.Combine(before, $"file{i}");
                    File.WriteAllBytes(file, Pattern(100 + i, (i + 1) * 300_000));
                    written[$"before/file{i}"] = Hashing.Sha256File(file);
                }

                ProcessRunner.Run("sync", "-f", guest);

                // fio writes with O_DIRECT, so its writes go through the loop device and the mount while the snapshot is taken.
                Directory.CreateDirectory(Path.Combine(guest, "fio"));
                string fioOut = temp.Combine("fio.out");
                string fioErr = temp.Combine("fio.err");
                string fioCommand = "exec fio --name=v --rw=randwrite --bs=4k --size=64M --direct=1 --ioengine=psync"
                    + " --verify=crc32c --do_verify=1 --verify_fatal=1"
                    + $" --directory='{Path.Combine(guest, "fio")}' --output='{fioOut}' 2>'{fioErr}'";
                fio = Process.Start(new ProcessStartInfo("bash", ["-c", fioCommand]))!;
                WaitUntilWriting(Path.Combine(guest, "fio", "v.0.0"), fio);

                ProcessRunner.Run("fsfreeze", "-f", guest);
                frozen = true;
                snapshot = Create(bundle, "--name", "frozen");
                ProcessRunner.Run("fsfreeze", "-u", guest);
                frozen = false;
                Assert.False(fio.HasExited, "fio ended before the snapshot: the test did not snapshot under load");

                Assert.True(fio.WaitForExit(TimeSpan.FromMinutes(10)), "fio did not finish");
                string errors = File.ReadAllText(fioErr);
                Assert.True(fio.ExitCode == 0, $"fio failed ({fio.ExitCode}): {File.ReadAllText(fioOut)}{errors}");
                Assert.DoesNotContain("verify", errors, StringComparison.OrdinalIgnoreCase);
                Assert.Contains("v: (groupid=0", File.ReadAllText(fioOut), StringComparison.Ordinal);

                // The guest filesystem is still mounted and writable.
                string after = Path.Combine(guest, "after");
                File.WriteAllBytes(after, Pattern(7, 1 << 20));
                ProcessRunner.Run("sync", "-f", guest);
                Assert.Equal(Pattern(7, 1 << 20), File.ReadAllBytes(after));
                Assert.Contains($" {guest} ext4 rw", File.ReadAllText("/proc/mounts"), StringComparison.Ordinal);

                // The snapshot: a clean filesystem that has the files written before, with their content, and not the later one.
                string image = mount.Snapshot(snapshot);
                var fsck = ProcessRunner.Run("e2fsck", ["-f", "-n", image], check: false);
                Assert.True(fsck.ExitCode == 0, $"e2fsck of the snapshot ({fsck.ExitCode}): {fsck.Stdout}{fsck.Stderr}");
                using (var loop = mount.Loop(image, peek, readOnly: true))
                {
                    foreach (var (name, hash) in written)
                    {
                        Assert.Equal(hash, Hashing.Sha256File(Path.Combine(peek, name)));
                    }

                    Assert.False(File.Exists(Path.Combine(peek, "after")));
                }
            }
            finally
            {
                if (frozen)
                {
                    ProcessRunner.Run("fsfreeze", ["-u", guest], check: false);
                }

                if (fio is { HasExited: false })
                {
                    fio.Kill();
                    fio.WaitForExit();
                }

                fio?.Dispose();
                if (mounted)
                {
                    ProcessRunner.Run("umount", [guest], check: false);
                }

                ProcessRunner.Run("losetup", ["-d", device], check: false);
            }

            Assert.Equal(0, mount.Unmount().ExitCode);
        }

        BundleOracle.AssertImagesClean(bundle);
        var check = PrlFuseCli.Run("check", bundle);
        Assert.True(check.ExitCode == 0, check.Stdout + check.Stderr);
    }

    [Fact]
    public void ASnapshotOfAReadOnlyMountAndOtherOperationsOnAMountedDiskAreRefusedNamingTheMountpoint()
    {
        using var temp = new TempFolder();
        string bundle = temp.Combine("busy.hdd");
        Assert.Equal(0, PrlFuseCli.Run("create", bundle, "--size", "16M").ExitCode);
        string xml = File.ReadAllText(Path.Combine(bundle, "DiskDescriptor.xml"));
        string mountpoint = temp.Combine("mnt");
        using (new PrlFuseMount(bundle, mountpoint, "--read-only"))
        {
            AssertRefused(PrlFuseCli.Run("snapshot", "create", bundle), mountpoint, "only a read-write mount takes snapshots");
        }

        using (new PrlFuseMount(bundle, mountpoint))
        {
            AssertRefused(PrlFuseCli.Run("resize", bundle, "--size", "32M"), mountpoint, "unmount it first");
            AssertRefused(PrlFuseCli.Run("compact", bundle), mountpoint, "unmount it first");
            AssertRefused(PrlFuseCli.Run("merge", bundle), mountpoint, "unmount it first");
        }

        Assert.Equal(xml, File.ReadAllText(Path.Combine(bundle, "DiskDescriptor.xml")));
    }

    private static void AssertRefused(ProcessRunner.Result r, string mountpoint, string advice)
    {
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains(mountpoint, r.Stderr, StringComparison.Ordinal);
        Assert.Contains(advice, r.Stderr, StringComparison.Ordinal);
        Assert.Single(r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
    }

    /// <summary>Runs 'snapshot create' on the mounted disk: one line, the new GUID.</summary>
    private static Guid Create(string bundle, params string[] options)
    {
        var r = PrlFuseCli.Run(["snapshot", "create", bundle, .. options]);
        Assert.True(r.ExitCode == 0, $"snapshot create failed ({r.ExitCode}): {r.Stderr}");
        Assert.Equal(string.Empty, r.Stderr);
        return Guid.ParseExact(r.Stdout.Trim(), "B");
    }

    /// <summary>Waits until fio's file has grown past its first megabyte (its write phase runs).</summary>
    private static void WaitUntilWriting(string file, Process fio)
    {
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < TimeSpan.FromMinutes(2) && !fio.HasExited)
        {
            if (File.Exists(file) && new FileInfo(file).Length > 0)
            {
                Thread.Sleep(1500);
                return;
            }

            Thread.Sleep(50);
        }

        Assert.Fail("fio did not start writing");
    }

    private static byte[] Pattern(int seed, int length)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    private static byte[] Overlay(byte[] under, int at, byte[] over)
    {
        byte[] result = (byte[])under.Clone();
        over.CopyTo(result, at);
        return result;
    }

    private static void WriteAt(FileStream handle, long offset, byte[] data)
    {
        RandomAccess.Write(handle.SafeFileHandle, data, offset);
        handle.Flush(flushToDisk: true);
    }

    private static byte[] ReadAt(FileStream handle, long offset, int length)
    {
        var bytes = new byte[length];
        Assert.Equal(length, RandomAccess.Read(handle.SafeFileHandle, bytes, offset));
        return bytes;
    }

    private static byte[] ReadAt(string file, long offset, int length)
    {
        using var stream = new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1);
        return ReadAt(stream, offset, length);
    }

    private static ulong Inode(string path)
    {
        var r = ProcessRunner.Run("stat", "-c", "%i", path);
        return ulong.Parse(r.Stdout.Trim(), System.Globalization.CultureInfo.InvariantCulture);
    }
}
