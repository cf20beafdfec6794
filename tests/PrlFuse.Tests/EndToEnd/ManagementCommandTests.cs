using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json.Nodes;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Management;
using PrlFuse.Tests.Core.Management;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.EndToEnd;

/// <summary>create, snapshot list/create and restore-descriptor through the installed binary, QEMU the oracle.</summary>
[Trait("Needs", "Qemu")]
[Trait("Needs", "Installed")]
public sealed class ManagementCommandTests
{
    private static readonly string Top = DiskDescriptor.FormatGuid(DiskDescriptor.PredefinedTopGuid);

    [Fact]
    public void CreateMakesADiskQemuOpensAndRefusesWhatItMustNot()
    {
        using var temp = new TempFolder();
        string bundle = temp.Combine("vm.hdd");
        var r = PrlFuseCli.Run("create", bundle, "--size", "64M");
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("64 MiB", r.Stdout, StringComparison.Ordinal);
        string image = Path.Combine(bundle, $"vm.hdd.0.{Top}.hds");
        var info = Qemu.Info("--output=json", image);
        Assert.Contains("\"format\": \"parallels\"", info.Stdout, StringComparison.Ordinal);
        Assert.Contains($"\"virtual-size\": {64 << 20}", info.Stdout, StringComparison.Ordinal);
        Qemu.AssertClean(image);
        Assert.Equal(0, new FileInfo(Path.Combine(bundle, "vm.hdd")).Length);

        var plain = PrlFuseCli.Run("create", "--plain", "--size", "8M", temp.Combine("p.hdd"));
        Assert.True(plain.ExitCode == 0, plain.Stderr);
        Assert.Equal(8 << 20, new FileInfo(temp.Combine("p.hdd", $"p.hdd.0.{Top}.hds")).Length);
        Assert.Contains("<Type>Plain</Type>", File.ReadAllText(temp.Combine("p.hdd", "DiskDescriptor.xml")), StringComparison.Ordinal);

        var again = PrlFuseCli.Run("create", bundle, "--size", "64M");
        Assert.Equal(1, again.ExitCode);
        Assert.Equal($"prlfuse: {bundle}: already exists; prlfuse create never overwrites: give a new name or remove it first", again.Stderr.TrimEnd());

        Assert.Equal(2, PrlFuseCli.Run("create", temp.Combine("x.hdd"), "--size", "1000").ExitCode);
        Assert.Equal(2, PrlFuseCli.Run("create", temp.Combine("x.hdd"), "--size", "8M", "--cluster", "3M").ExitCode);
        Assert.Equal(2, PrlFuseCli.Run("create", temp.Combine("x.hdd")).ExitCode);
        Assert.False(Directory.Exists(temp.Combine("x.hdd")));
        Assert.Equal(["p.hdd", "vm.hdd"], Directory.GetFileSystemEntries(temp.Path).Select(Path.GetFileName).Order(StringComparer.Ordinal));
    }

    [Fact]
    public void SnapshotCreateAndListThroughTheBinaryKeepEveryViewAsQemuSeesIt()
    {
        using var temp = new TempFolder();
        string bundle = temp.Combine("d.hdd");
        Assert.Equal(0, PrlFuseCli.Run("create", bundle, "--size", "32M", "--cluster", "256K").ExitCode);
        string first = Path.Combine(bundle, $"d.hdd.0.{Top}.hds");
        Qemu.Write(first, "write -P 0x11 0 3M", "write -P 0x22 20M 1M");
        var before = BundleOracle.AssertEveryViewMatchesQemu(bundle, temp.Path);

        var made = PrlFuseCli.Run("snapshot", "create", bundle, "--name", "clean install");
        Assert.True(made.ExitCode == 0, made.Stderr);
        var snapshot = Guid.ParseExact(made.Stdout.Trim(), "B");
        var after = BundleOracle.AssertEveryViewMatchesQemu(bundle, temp.Path);
        Assert.Equal(before[DiskDescriptor.PredefinedTopGuid], after[snapshot]);

        // The current state goes on in its new image; QEMU writes it too, and the snapshot stays.
        var d = DescriptorParser.ParseFile(Path.Combine(bundle, DescriptorStore.FileName));
        string current = Path.Combine(bundle, d.Storages[0].FindImage(DiskDescriptor.PredefinedTopGuid)!.File);
        Qemu.Io("-f", "parallels", "-c", "write -P 0x33 1M 1M", current);
        var changed = BundleOracle.AssertEveryViewMatchesQemu(bundle, temp.Path);
        Assert.Equal(before[DiskDescriptor.PredefinedTopGuid], changed[snapshot]);
        Assert.Equal(0x33, changed[DiskDescriptor.PredefinedTopGuid][(1 << 20) + 5]);

        var list = PrlFuseCli.Run("snapshot", "list", "--json", bundle);
        Assert.True(list.ExitCode == 0, list.Stderr);
        var json = JsonNode.Parse(list.Stdout)!;
        var shots = json["snapshots"]!.AsArray();
        Assert.Equal(2, shots.Count);
        Assert.Equal(DiskDescriptor.FormatGuid(snapshot), (string?)shots[0]!["guid"]);
        Assert.Equal("clean install", (string?)shots[0]!["name"]);
        Assert.Equal(4L << 20, (long)shots[0]!["images"]![0]!["allocatedBytes"]!);
        Assert.Equal(Top, (string?)shots[1]!["guid"]);
        Assert.True((bool)shots[1]!["current"]!);
        Assert.Equal(1L << 20, (long)shots[1]!["images"]![0]!["allocatedBytes"]!);

        var text = PrlFuseCli.Run("snapshot", "list", bundle);
        Assert.Contains("\"clean install\"", text.Stdout, StringComparison.Ordinal);
        Assert.Contains("(current state)", text.Stdout, StringComparison.Ordinal);
    }

    [Fact]
    public void RestoreDescriptorAndTheRefusalsSpeakInOneLine()
    {
        using var temp = new TempFolder();
        string bundle = temp.Combine("r.hdd");
        Assert.Equal(0, PrlFuseCli.Run("create", bundle, "--size", "16M").ExitCode);
        Qemu.Write(Path.Combine(bundle, $"r.hdd.0.{Top}.hds"), "write -P 0x44 5M 2M");
        var before = BundleOracle.ReadViews(bundle);
        string xml = Path.Combine(bundle, "DiskDescriptor.xml");

        var exists = PrlFuseCli.Run("restore-descriptor", bundle);
        Assert.Equal(1, exists.ExitCode);
        Assert.Single(exists.Stderr.TrimEnd().Split('\n'));

        File.Delete(xml);
        var restored = PrlFuseCli.Run("restore-descriptor", bundle);
        Assert.True(restored.ExitCode == 0, restored.Stderr);
        Assert.Equal(before[DiskDescriptor.PredefinedTopGuid], BundleOracle.AssertEveryViewMatchesQemu(bundle, temp.Path)[DiskDescriptor.PredefinedTopGuid]);

        // Two images: nothing written, both listed.
        Assert.Equal(0, PrlFuseCli.Run("snapshot", "create", bundle).ExitCode);
        File.Delete(xml);
        File.Delete(xml + ".Backup");
        var refused = PrlFuseCli.Run("restore-descriptor", bundle);
        Assert.Equal(1, refused.ExitCode);
        Assert.Equal(2, refused.Stderr.Split('\n').Count(l => l.Contains(".hds: Compressed", StringComparison.Ordinal)));
        Assert.False(File.Exists(xml));

        // An encrypted disk: refused by every command, in one line.
        string enc = temp.Combine("e.hdd");
        Assert.Equal(0, PrlFuseCli.Run("create", enc, "--size", "8M").ExitCode);
        string encXml = Path.Combine(enc, "DiskDescriptor.xml");
        File.WriteAllText(encXml, File.ReadAllText(encXml).Replace("<Data></Data>", "<Data>c2VjcmV0IGtleQ==</Data>", StringComparison.Ordinal));
        foreach (var args in new[] { new[] { "info", enc }, ["snapshot", "create", enc], ["snapshot", "list", enc] })
        {
            var r = PrlFuseCli.Run(args);
            Assert.Equal(1, r.ExitCode);
            Assert.Single(r.Stderr.TrimEnd().Split('\n'));
            Assert.Contains("the disk is encrypted", r.Stderr, StringComparison.Ordinal);
        }

        var bare = PrlFuseCli.Run("snapshot", "create", Path.Combine(enc, $"e.hdd.0.{Top}.hds"));
        Assert.Equal(1, bare.ExitCode);
        Assert.Contains("bare image", bare.Stderr, StringComparison.Ordinal);

        Assert.Equal(2, PrlFuseCli.Run("snapshot").ExitCode);
        Assert.Equal(2, PrlFuseCli.Run("snapshot", "frobnicate", bundle).ExitCode);
        foreach (var args in new[] { new[] { "snapshot", "create", "--help" }, ["help", "snapshot", "list"], ["snapshot", "--help"], ["restore-descriptor", "-h"], ["create", "--help"] })
        {
            var h = PrlFuseCli.Run(args);
            Assert.Equal(0, h.ExitCode);
            Assert.StartsWith("Usage: prlfuse " + string.Join(' ', args.Where(a => a is not ("help" or "--help" or "-h"))), h.Stdout, StringComparison.Ordinal);
        }
    }
}

/// <summary>
/// The guest ext4 scenario of disk management, through the installed binary: a created disk, files written, snapshot,
/// files changed, snapshot, changed again; the middle snapshot deleted, a switch, a merge, a resize that resize2fs grows
/// into, and a compact after files are deleted and trimmed. After every step every snapshot's files have their
/// checksums (loop mounted read-only), every image is clean for qemu-img check and every view is QEMU's.
/// </summary>
[Collection(FuseKernelCollection.Name)]
[Trait("Needs", "Kernel")]
[Trait("Needs", "Qemu")]
[Trait("Needs", "Installed")]
public sealed class ManagementGuestTests
{
    private static readonly Guid Top = DiskDescriptor.PredefinedTopGuid;

    [Fact]
    public void AGuestExt4KeepsEverySnapshotsFilesThroughEveryManagementCommand()
    {
        using var temp = new TempFolder();
        string bundle = temp.Combine("guest.hdd");
        Assert.Equal(0, PrlFuseCli.Run("create", bundle, "--size", "256M").ExitCode);
        var tree = GuestFilesystem.MakeTree(temp.Combine("tree"), seed: 17, count: 30);
        string mountpoint = temp.Combine("mnt");
        string guest = temp.Combine("guest");
        using (var mount = new PrlFuseMount(bundle, mountpoint))
        {
            GuestFilesystem.Make(mount.Current, "ext4", guest, tree);

            Assert.Equal(0, mount.Unmount().ExitCode);
        }

        // Mounted read-only: a snapshot is refused, naming the mountpoint, and nothing changes (a read-write mount
        // takes it live: LiveSnapshotTests).
        using (var mount = new PrlFuseMount(bundle, mountpoint, "--read-only"))
        {
            var busy = PrlFuseCli.Run("snapshot", "create", bundle);
            Assert.Equal(1, busy.ExitCode);
            Assert.Contains($"snapshot create refused: the disk is mounted read-only at {mountpoint}", busy.Stderr, StringComparison.Ordinal);
            Assert.Single(busy.Stderr.TrimEnd().Split('\n'));
            var list = PrlFuseCli.Run("snapshot", "list", bundle);
            Assert.True(list.ExitCode == 0, list.Stderr);
            Assert.Contains("(current state)", list.Stdout, StringComparison.Ordinal);
            Assert.Equal(0, mount.Unmount().ExitCode);
        }

        var v1 = tree.Files;
        Verify(bundle, temp, new() { [Top] = v1 }, "created");

        var s1 = SnapshotCreate(bundle, "one");
        var v2 = Change(bundle, mountpoint, guest, v1, 1);
        var s2 = SnapshotCreate(bundle, "two");
        var v3 = Change(bundle, mountpoint, guest, v2, 2);
        Verify(bundle, temp, new() { [s1] = v1, [s2] = v2, [Top] = v3 }, "two snapshots");

        Run("snapshot", "delete", bundle, s2.ToString("B"));
        Verify(bundle, temp, new() { [s1] = v1, [Top] = v3 }, "middle snapshot deleted");

        string switched = Run("snapshot", "switch", "--keep-current", bundle, s1.ToString("B"));
        var kept = Guid.Parse(switched.Trim().Split(' ')[^1]);
        Verify(bundle, temp, new() { [s1] = v1, [kept] = v3, [Top] = v1 }, "switched to the first snapshot");

        var v4 = Change(bundle, mountpoint, guest, v1, 4);
        Run("merge", bundle);
        Assert.Single(Directory.GetFiles(bundle, "*.hds"));
        Verify(bundle, temp, new() { [Top] = v4 }, "merged");

        Run("resize", bundle, "--size", "512M");
        using (var mount = new PrlFuseMount(bundle, mountpoint))
        {
            GuestFilesystem.WithLoop(mount.Current, device =>
            {
                ProcessRunner.Run("e2fsck", "-f", "-y", device);
                ProcessRunner.Run("resize2fs", device);
                GuestFilesystem.WithMounted(device, guest, at =>
                {
                    var df = ProcessRunner.Run("df", "--output=size", "-B1", at).Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
                    long size = long.Parse(df[^1].Trim(), CultureInfo.InvariantCulture);
                    Assert.True(size > 400L << 20, $"the filesystem is {size} bytes after resize2fs");
                    // More than the disk held before the resize: the filesystem really uses the new space.
                    ProcessRunner.Run("dd", "if=/dev/urandom", $"of={at}/grown.bin", "bs=4M", "count=75", "status=none");
                    File.Delete(at + "/grown.bin");
                });
            });
            Assert.Equal(0, mount.Unmount().ExitCode);
        }

        Verify(bundle, temp, new() { [Top] = v4 }, "resized and grown");

        // Most files deleted and trimmed: compact gives the space back and every view stays.
        var v5 = new Dictionary<string, string>(StringComparer.Ordinal);
        using (var mount = new PrlFuseMount(bundle, mountpoint))
        {
            GuestFilesystem.WithLoop(mount.Current, device => GuestFilesystem.WithMounted(device, guest, at =>
            {
                foreach (var (path, sha) in v4.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select((kv, i) => (kv, i)).Where(p => p.i % 4 != 0).Select(p => p.kv))
                {
                    File.Delete(at + path);
                }

                foreach (var (path, sha) in v4.Where(kv => File.Exists(at + kv.Key)))
                {
                    v5[path] = sha;
                }

                ProcessRunner.Run("sync", "-f", at);
                ProcessRunner.Run("fstrim", at);
            }));
            Assert.Equal(0, mount.Unmount().ExitCode);
        }

        string image = Assert.Single(Directory.GetFiles(bundle, "*.hds"));
        long before = new FileInfo(image).Length;
        Run("compact", bundle);
        long after = new FileInfo(image).Length;
        Assert.True(after < before - (64L << 20), $"compact left {after} bytes of {before}");
        Verify(bundle, temp, new() { [Top] = v5 }, "compacted");
    }

    private static string Run(params string[] args)
    {
        var r = PrlFuseCli.Run(args);
        Assert.True(r.ExitCode == 0, $"prlfuse {string.Join(' ', args)}: {r.Stderr}");
        return r.Stdout;
    }

    private static Guid SnapshotCreate(string bundle, string name) => Guid.ParseExact(Run("snapshot", "create", bundle, "--name", name).Trim(), "B");

    /// <summary>Mounts the disk and changes the guest's files: every third rewritten, one deleted, one added. Returns the files now.</summary>
    private static Dictionary<string, string> Change(string bundle, string mountpoint, string guest, Dictionary<string, string> files, int seed)
    {
        var random = new Random(seed);
        var changed = new Dictionary<string, string>(files, StringComparer.Ordinal);
        var paths = files.Keys.Order(StringComparer.Ordinal).ToList();
        using (var mount = new PrlFuseMount(bundle, mountpoint))
        {
            using (var loop = mount.Loop(mount.Current, guest, readOnly: false))
            {
                foreach (string path in paths.Where((_, i) => i % 3 == seed % 3).Append($"/added{seed}.bin"))
                {
                    var bytes = new byte[random.Next(1, 3 << 20)];
                    random.NextBytes(bytes);
                    File.WriteAllBytes(loop.At + path, bytes);
                    changed[path] = Convert.ToHexStringLower(SHA256.HashData(bytes));
                }

                string gone = paths[(seed * 7) % paths.Count];
                File.Delete(loop.At + gone);
                changed.Remove(gone);
            }

            Assert.Equal(0, mount.Unmount().ExitCode);
        }

        return changed;
    }

    /// <summary>
    /// The disk has exactly the snapshots of <paramref name="expected"/>, each reading its files (loop mounted read-only
    /// from a read-only mount), with a clean filesystem; every image is clean for qemu-img check; every view is QEMU's.
    /// </summary>
    private static void Verify(string bundle, TempFolder temp, Dictionary<Guid, Dictionary<string, string>> expected, string step)
    {
        SnapshotTreeBundle.AssertQemuClean(bundle);
        var views = KillNine.Hashes(bundle, temp.Path);
        Assert.Equal(expected.Keys.Order(), views.Keys.Where(g => g != Guid.Empty).Order());
        using var mount = new PrlFuseMount(bundle, temp.Combine("verify"), "--read-only");
        foreach (var (guid, files) in expected)
        {
            string view = guid == Top ? mount.Current : mount.Snapshot(guid);
            var fsck = ProcessRunner.Run("e2fsck", ["-f", "-n", view], check: false);
            Assert.True(fsck.ExitCode == 0, $"{step}: snapshot {guid:B}: {fsck.Stdout}{fsck.Stderr}");
            using var loop = mount.Loop(view, temp.Combine("look"), readOnly: true);
            GuestFilesystem.AssertFiles(loop.At, files, $"{step}: snapshot {guid:B}");
        }

        Assert.Equal(0, mount.Unmount().ExitCode);
    }
}
