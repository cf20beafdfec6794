using System.Globalization;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.EndToEnd;

/// <summary>
/// The product's main job on a real kernel: `prlfuse mount`, `mount -o loop` of each snapshot file, ordinary tools on
/// the guest's files. Nothing is mocked.
/// </summary>
[Collection(FuseKernelCollection.Name)]
[Trait("Needs", "Kernel")]
[Trait("Needs", "Qemu")]
[Trait("Needs", "Installed")]
public sealed class MountTests(SharedGuestChain shared) : IClassFixture<SharedGuestChain>
{
    [Fact]
    public void EverySnapshotsFilesHaveTheirChecksumsThroughLoopMounts()
    {
        using var temp = new TempFolder();
        CheckGuestChain(shared.Chain, temp, oracle: true);
    }

    [Fact]
    public void SplitDiskEverySnapshotsFilesHaveTheirChecksums()
    {
        using var temp = new TempFolder();
        CheckGuestChain(GuestChain.Build(temp.Path, [50_000, 81_072]), temp, oracle: false);
    }

    private static void CheckGuestChain(GuestChain chain, TempFolder temp, bool oracle)
    {
        using var mount = new PrlFuseMount(chain.Bundle, temp.Combine("mnt"), "--read-only");
        for (int level = 0; level < 3; level++)
        {
            string file = level == 2 ? mount.Current : mount.Snapshot(chain.Guids[level]);
            Assert.Equal(-1, Hashing.FirstDifference(chain.RawVersions[level], file));
            using var loop = mount.Loop(file, temp.Combine($"guest{level}"), readOnly: true);
            var found = Hashing.GuestFileSums(loop.At);
            Assert.Equal(chain.Files[level].OrderBy(k => k.Key), found.OrderBy(k => k.Key));
        }

        // And qemu's own view of the whole chain, through its backing options, equals the top file.
        string oracleRaw = temp.Combine("oracle.raw");
        var images = Directory.GetFiles(chain.Bundle, "*.hds").OrderBy(f => f, StringComparer.Ordinal).ToList();
        if (oracle)
        {
            string Image(Guid g) => images.Single(i => i.Contains(g.ToString("B"), StringComparison.Ordinal));
            Qemu.ConvertChain([Image(chain.Guids[2]), Image(chain.Guids[1]), Image(chain.Guids[0])], oracleRaw);
            Assert.Equal(-1, Hashing.FirstDifference(oracleRaw, mount.Current));
        }

        Assert.Equal(0, mount.Unmount().ExitCode);
    }

    [Theory]
    [InlineData("expanding", "7906281f7a25f13df78c907d7bc4e9313d9a26fa86386c6e2a737a784fe80b8f")]
    [InlineData("plain", "7906281f7a25f13df78c907d7bc4e9313d9a26fa86386c6e2a737a784fe80b8f")]
    [InlineData("split", "035f643ace2bbca90762a1318e865ec456c44cfd578e65ed32a9363d6348efa1")]
    public void RealSamplesThroughTheMount(string name, string sha256)
    {
        using var temp = new TempFolder();
        string bundle = Samples.Extract(name, temp.Path);
        using var mount = new PrlFuseMount(bundle, temp.Combine("mnt"), "--read-only");
        Assert.Equal(sha256, Hashing.Sha256File(mount.Current));
        Assert.Empty(Directory.GetFiles(Path.Combine(mount.Mountpoint, "snapshots")));
        Assert.Equal(0, mount.Unmount().ExitCode);
    }

    [Fact]
    public async Task SeveralProcessesReadingAllFilesAtRandomOffsetsGetEveryByteRight()
    {
        using var temp = new TempFolder();
        var chain = shared.Chain;
        using var mount = new PrlFuseMount(chain.Bundle, temp.Combine("mnt"));
        string[] files = [mount.Snapshot(chain.Guids[0]), mount.Snapshot(chain.Guids[1]), mount.Current];
        var random = new Random(7);
        var jobs = new List<(int File, long Offset, int Length)>[4];
        for (int p = 0; p < jobs.Length; p++)
        {
            jobs[p] = [];
            for (int i = 0; i < 60; i++)
            {
                int length = random.Next(3) == 0 ? random.Next(1, 3 << 20) : random.Next(1, 70_000);
                jobs[p].Add((random.Next(3), random.NextInt64((GuestChain.SizeMiB << 20) - length), length));
            }
        }

        // Each process is a shell running dd for its reads and printing each piece's sha256.
        var runs = jobs.Select(list => Task.Run(() =>
        {
            string script = string.Join('\n', list.Select(j => string.Create(CultureInfo.InvariantCulture,
                $"dd if='{files[j.File]}' bs=1M iflag=skip_bytes,count_bytes skip={j.Offset} count={j.Length} status=none | sha256sum | cut -d' ' -f1")));
            return ProcessRunner.Run("bash", "-c", script).Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        })).ToArray();
        var results = await Task.WhenAll(runs);
        for (int p = 0; p < jobs.Length; p++)
        {
            Assert.Equal(jobs[p].Count, results[p].Length);
            for (int i = 0; i < jobs[p].Count; i++)
            {
                var (file, offset, length) = jobs[p][i];
                using var raw = File.OpenHandle(chain.RawVersions[file]);
                var expected = new byte[length];
                RandomAccess.Read(raw, expected, offset);
                Assert.Equal(Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(expected)), results[p][i]);
            }
        }

        Assert.Equal(0, mount.Unmount().ExitCode);
    }

    [Fact]
    public void WhatTheMountShows()
    {
        using var temp = new TempFolder();
        var chain = shared.Chain;
        using var mount = new PrlFuseMount(chain.Bundle, temp.Combine("mnt"));
        var names = Directory.GetFiles(Path.Combine(mount.Mountpoint, "snapshots")).Select(Path.GetFileName).Order().ToList();
        Assert.Equal(new[] { chain.Guids[0], chain.Guids[1] }.Select(g => g.ToString("B") + ".raw").Order(), names);
        var current = new FileInfo(mount.Current);
        Assert.Equal(GuestChain.SizeMiB << 20, current.Length);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead, current.UnixFileMode);
        var old = new FileInfo(mount.Snapshot(chain.Guids[0]));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.GroupRead | UnixFileMode.OtherRead, old.UnixFileMode);

        // st_blocks reflects allocated clusters, not the size.
        var stat = ProcessRunner.Run("stat", "-c", "%b %B", mount.Snapshot(chain.Guids[0])).Stdout.Split(' ');
        long allocated = long.Parse(stat[0], CultureInfo.InvariantCulture) * long.Parse(stat[1], CultureInfo.InvariantCulture);
        Assert.InRange(allocated, 1, (GuestChain.SizeMiB << 20) - 1);

        // Writing a historical snapshot fails; resizing fails; statfs answers.
        var denied = Record.Exception(() => File.OpenWrite(mount.Snapshot(chain.Guids[0])).Dispose());
        Assert.True(denied is UnauthorizedAccessException || denied?.Message.Contains("Read-only file system", StringComparison.Ordinal) == true, denied?.ToString() ?? "opened for writing");
        var truncate = ProcessRunner.Run("truncate", ["-s", "1M", mount.Current], check: false);
        Assert.NotEqual(0, truncate.ExitCode);
        Assert.Equal(GuestChain.SizeMiB << 20, new FileInfo(mount.Current).Length);
        Assert.Contains("prlfuse", ProcessRunner.Run("stat", "-f", "-c", "%T %b", mount.Mountpoint).Stdout + ProcessRunner.Run("findmnt", "-n", "-o", "FSTYPE", mount.Mountpoint).Stdout, StringComparison.Ordinal);
        Assert.Equal(0, mount.Unmount().ExitCode);
    }

    [Fact]
    public void TheMountGrantsNoMoreThanAsked()
    {
        using var temp = new TempFolder();
        var chain = shared.Chain;
        string Options(string mountpoint) => File.ReadLines("/proc/self/mountinfo").Single(l => l.Split(' ')[4] == mountpoint);
        using (var plain = new PrlFuseMount(chain.Bundle, temp.Combine("a"), "--read-only"))
        {
            string line = Options(plain.Mountpoint);
            Assert.DoesNotContain("allow_other", line, StringComparison.Ordinal);
            Assert.Contains("user_id=0", line, StringComparison.Ordinal);
            Assert.Equal(0, plain.Unmount().ExitCode);
        }

        using var shared2 = new PrlFuseMount(chain.Bundle, temp.Combine("b"), "--read-only", "-o", "allow_other");
        string withOther = Options(shared2.Mountpoint);
        Assert.Contains("allow_other", withOther, StringComparison.Ordinal);
        Assert.Contains("default_permissions", withOther, StringComparison.Ordinal);
        Assert.Equal(0, shared2.Unmount().ExitCode);
    }

    [Fact]
    public void UnmountIsRefusedWhileALoopDeviceHoldsAFile()
    {
        using var temp = new TempFolder();
        var chain = shared.Chain;
        using var mount = new PrlFuseMount(chain.Bundle, temp.Combine("mnt"));
        var loop = mount.Loop(mount.Snapshot(chain.Guids[1]), temp.Combine("guest"), readOnly: true);
        var refused = PrlFuseCli.Run("unmount", mount.Mountpoint);
        Assert.Equal(1, refused.ExitCode);
        Assert.Matches(@"/dev/loop\d+ uses ", refused.Stderr);

        // Still serving: the guest filesystem reads on.
        Assert.Equal(chain.Files[1]["/hello.txt"], Hashing.Sha256File(Path.Combine(loop.At, "hello.txt")));
        Assert.Equal(0, mount.Unmount().ExitCode);
        Assert.False(File.Exists(mount.Current));
    }

    [Fact]
    public void SigtermEndsTheDaemonCleanly()
    {
        using var temp = new TempFolder();
        var chain = GuestChain.Build(temp.Path);
        using var mount = new PrlFuseMount(chain.Bundle, temp.Combine("mnt"));
        using (var stream = new FileStream(mount.Current, FileMode.Open, FileAccess.ReadWrite))
        {
            stream.Position = 5 << 20;
            stream.Write(new byte[8192]);
            stream.Flush(true);
        }

        int pid = mount.DaemonPid();
        ProcessRunner.Run("kill", "-TERM", pid.ToString(CultureInfo.InvariantCulture));
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (Directory.Exists($"/proc/{pid}") && DateTime.UtcNow < deadline)
        {
            Thread.Sleep(20);
        }

        Assert.False(Directory.Exists($"/proc/{pid}"), "the daemon did not exit on SIGTERM");
        Assert.False(File.Exists(mount.Current));
        string top = Directory.GetFiles(chain.Bundle, $"*{chain.Guids[2]:B}.hds").Single();
        var check = Qemu.Check(top);
        Assert.True(check.ExitCode == 0, check.Stdout + check.Stderr);
    }

    [Fact]
    public void AKilledDaemonsMountpointIsClearedByTheNextMount()
    {
        using var temp = new TempFolder();
        var chain = shared.Chain;
        string mountpoint = temp.Combine("mnt");
        var first = new PrlFuseMount(chain.Bundle, mountpoint, "--read-only");
        try
        {
            ProcessRunner.Run("kill", "-KILL", first.DaemonPid().ToString(CultureInfo.InvariantCulture));
            Thread.Sleep(300);
            var error = Assert.ThrowsAny<IOException>(() => Directory.GetFiles(mountpoint));
            Assert.Contains("not connected", error.Message, StringComparison.OrdinalIgnoreCase);

            var again = PrlFuseCli.Run("mount", chain.Bundle, mountpoint, "--read-only");
            Assert.True(again.ExitCode == 0, again.Stderr);
            Assert.Contains("stale", again.Stderr, StringComparison.Ordinal);
            Assert.Equal(-1, Hashing.FirstDifference(chain.RawVersions[2], Path.Combine(mountpoint, "current.raw")));
        }
        finally
        {
            first.Dispose();
        }

        Assert.False(File.Exists(Path.Combine(mountpoint, "current.raw")));
    }

    [Fact]
    public void MountErrorsAreOneLineWithANonZeroExit()
    {
        using var temp = new TempFolder();
        var chain = GuestChain.Build(temp.Path);
        var missing = PrlFuseCli.Run("mount", chain.Bundle, temp.Combine("no-such-dir"));
        Assert.Equal(1, missing.ExitCode);
        Assert.Contains("does not exist", missing.Stderr, StringComparison.Ordinal);
        Assert.Single(missing.Stderr.Trim().Split('\n'));

        // An image left open by a crash ("Ynot") is refused read-write with what to do, and works read-only.
        string top = Directory.GetFiles(chain.Bundle, $"*{chain.Guids[2]:B}.hds").Single();
        using (var handle = File.OpenHandle(top, FileMode.Open, FileAccess.ReadWrite))
        {
            RandomAccess.Write(handle, "Ynot"u8, 44);
        }

        Directory.CreateDirectory(temp.Combine("mnt"));
        var unclean = PrlFuseCli.Run("mount", chain.Bundle, temp.Combine("mnt"));
        Assert.Equal(1, unclean.ExitCode);
        Assert.Contains("prlfuse check --repair", unclean.Stderr, StringComparison.Ordinal);
        using var mount = new PrlFuseMount(chain.Bundle, temp.Combine("mnt"), "--read-only");
        Assert.Equal(-1, Hashing.FirstDifference(chain.RawVersions[2], mount.Current));
    }
}

/// <summary>One guest chain for the tests that only read it (building one takes a few seconds).</summary>
public sealed class SharedGuestChain : IDisposable
{
    private readonly TempFolder _temp = new("prlfuse-shared");

    public SharedGuestChain()
    {
        Chain = GuestChain.Build(_temp.Path);
    }

    public GuestChain Chain { get; }

    public void Dispose() => _temp.Dispose();
}
