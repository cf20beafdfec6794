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

/// <summary>A guest ext4 on a created disk, a snapshot taken offline, files changed: the snapshot keeps the old files.</summary>
[Collection(FuseKernelCollection.Name)]
[Trait("Needs", "Kernel")]
[Trait("Needs", "Qemu")]
[Trait("Needs", "Installed")]
public sealed class ManagementGuestTests
{
    [Fact]
    public void AGuestExt4OnACreatedDiskKeepsItsFilesInTheSnapshotAfterChanges()
    {
        using var temp = new TempFolder();
        string bundle = temp.Combine("guest.hdd");
        Assert.Equal(0, PrlFuseCli.Run("create", bundle, "--size", "256M").ExitCode);
        var tree = WriteTests.MakeTree(temp.Combine("tree"), seed: 17, count: 30);
        string mountpoint = temp.Combine("mnt");
        string guest = temp.Combine("guest");
        using (var mount = new PrlFuseMount(bundle, mountpoint))
        {
            string device = ProcessRunner.Run("losetup", "--find", "--show", mount.Current).Stdout.Trim();
            try
            {
                ProcessRunner.Run("mkfs.ext4", "-q", "-F", device);
                Directory.CreateDirectory(guest);
                ProcessRunner.Run("mount", device, guest);
                try
                {
                    ProcessRunner.Run("cp", "-a", tree.Root + "/.", guest);
                    ProcessRunner.Run("sync", "-f", guest);
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

        // Mounted read-only: a snapshot is refused, naming the mountpoint, and nothing changes (a read-write mount
        // takes it live: LiveSnapshotTests).
        using (var mount = new PrlFuseMount(bundle, mountpoint, "--read-only"))
        {
            var busy = PrlFuseCli.Run("snapshot", "create", bundle);
            Assert.Equal(1, busy.ExitCode);
            Assert.Contains($"snapshot create refused: the disk is mounted read-only at {mountpoint}", busy.Stderr, StringComparison.Ordinal);
            Assert.Single(busy.Stderr.TrimEnd().Split('\n'));
            Assert.Equal(0, mount.Unmount().ExitCode);
        }

        Assert.Single(Directory.GetFiles(bundle, "*.hds"));
        var made = PrlFuseCli.Run("snapshot", "create", bundle, "--name", "before changes");
        Assert.True(made.ExitCode == 0, made.Stderr);
        var snapshot = Guid.ParseExact(made.Stdout.Trim(), "B");

        var changedFiles = tree.Files.Keys.Order(StringComparer.Ordinal).Where((_, i) => i % 3 == 0).ToList();
        using (var mount = new PrlFuseMount(bundle, mountpoint))
        {
            using (var loop = mount.Loop(mount.Current, guest, readOnly: false))
            {
                foreach (string path in changedFiles)
                {
                    File.WriteAllText(loop.At + path, "changed after the snapshot " + path);
                }

                File.Delete(loop.At + tree.Files.Keys.Order(StringComparer.Ordinal).Last());
            }

            using (var old = mount.Loop(mount.Snapshot(snapshot), temp.Combine("old"), readOnly: true))
            {
                foreach (var (path, sha) in tree.Files)
                {
                    Assert.Equal(sha, Hashing.Sha256File(old.At + path));
                }
            }

            Assert.Equal(0, mount.Unmount().ExitCode);
        }

        using (var mount = new PrlFuseMount(bundle, mountpoint, "--read-only"))
        {
            using var now = mount.Loop(mount.Current, guest, readOnly: true);
            Assert.Equal("changed after the snapshot " + changedFiles[0], File.ReadAllText(now.At + changedFiles[0]));
            Assert.False(File.Exists(now.At + tree.Files.Keys.Order(StringComparer.Ordinal).Last()));
        }

        var views = BundleOracle.AssertEveryViewMatchesQemu(bundle, temp.Path);
        Assert.Equal(2, views.Count);
        var fsck = ProcessRunner.Run("e2fsck", ["-n", "-f", WriteRaw(temp.Combine("snap.raw"), views[snapshot])], check: false);
        Assert.True(fsck.ExitCode == 0, fsck.Stdout + fsck.Stderr);
    }

    private static string WriteRaw(string path, byte[] bytes)
    {
        File.WriteAllBytes(path, bytes);
        return path;
    }
}
