using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.EndToEnd;

/// <summary>
/// What a user installs is what works: the single-file binary from `make install`, copied alone anywhere, the apphost
/// and `dotnet prlfuse.dll` all mount; the parent reports success only when the mount answers; mountpoints that would
/// hide files or what the daemon needs are refused.
/// </summary>
[Collection(FuseKernelCollection.Name)]
[Trait("Needs", "Kernel")]
[Trait("Needs", "Installed")]
public sealed class InstalledBinaryTests
{
    private const string ExpandingSha = "7906281f7a25f13df78c907d7bc4e9313d9a26fa86386c6e2a737a784fe80b8f";

    [Fact]
    public void TheBinaryCopiedAloneIntoAnEmptyFolderMountsInfoExportsAndChecks()
    {
        using var temp = new TempFolder();
        string alone = temp.Combine("alone");
        Directory.CreateDirectory(alone);
        string binary = Path.Combine(alone, "prlfuse");
        File.Copy(PrlFuseCli.Binary, binary);
        File.SetUnixFileMode(binary, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        Assert.Single(Directory.GetFiles(alone));
        string bundle = Samples.Extract("expanding", temp.Path);

        // From another folder, with relative paths: the daemon must resolve them before it leaves for "/".
        string elsewhere = temp.Combine("elsewhere");
        Directory.CreateDirectory(elsewhere);
        Directory.CreateDirectory(temp.Combine("mnt"));
        var mount = ProcessRunner.Run("/bin/sh", ["-c", $"cd '{elsewhere}' && '{binary}' mount ../expanding.hdd ../mnt"], check: false);
        try
        {
            Assert.True(mount.ExitCode == 0, mount.Stderr);
            Assert.Equal(ExpandingSha, Hashing.Sha256File(temp.Combine("mnt", "current.raw")));
        }
        finally
        {
            var unmount = ProcessRunner.Run(binary, ["unmount", temp.Combine("mnt")], check: false);
            if (unmount.ExitCode != 0)
            {
                ProcessRunner.Run("fusermount3", ["-uz", temp.Combine("mnt")], check: false);
            }

            Assert.True(unmount.ExitCode == 0, unmount.Stderr);
        }

        var info = ProcessRunner.Run(binary, ["info", bundle], check: false);
        Assert.True(info.ExitCode == 0, info.Stderr);
        Assert.Contains("5fbaabe3-6958-40ff-92a7-860e329aab41", info.Stdout, StringComparison.Ordinal);
        var export = ProcessRunner.Run(binary, ["export", bundle, "-o", temp.Combine("out.raw")], check: false);
        Assert.True(export.ExitCode == 0, export.Stderr);
        Assert.Equal(ExpandingSha, Hashing.Sha256File(temp.Combine("out.raw")));
        var check = ProcessRunner.Run(binary, ["check", bundle], check: false);
        Assert.True(check.ExitCode == 0, check.Stderr + check.Stdout);
    }

    [Theory]
    [InlineData("apphost")]
    [InlineData("dotnet")]
    public void TheBuildTreesWaysOfStartingMountToo(string how)
    {
        using var temp = new TempFolder();
        string bundle = Samples.Extract("expanding", temp.Path);
        var (program, leading) = how == "apphost" ? (PrlFuseCli.AppHost, Array.Empty<string>()) : ("dotnet", new[] { PrlFuseCli.Dll });
        using var mount = new PrlFuseMount(program, leading, bundle, temp.Combine("mnt"), "--read-only");
        Assert.Equal(ExpandingSha, Hashing.Sha256File(mount.Current));
        Assert.Equal(0, mount.Unmount().ExitCode);
    }

    [Fact]
    public void ADaemonThatFailsRightAfterTheMountMakesTheParentFailWithItsMessage()
    {
        using var temp = new TempFolder();
        string bundle = Samples.Extract("expanding", temp.Path);
        string mnt = temp.Combine("mnt");
        Directory.CreateDirectory(mnt);
        var env = new Dictionary<string, string> { ["PRLFUSE_FAULT_AFTER_MOUNT"] = "1" };
        var result = PrlFuseCli.Run(env, "mount", bundle, mnt);
        try
        {
            Assert.NotEqual(0, result.ExitCode);
            Assert.Contains("injected failure after the mount", result.Stderr, StringComparison.Ordinal);
            Assert.DoesNotContain(" " + mnt + " ", File.ReadAllText("/proc/self/mountinfo"), StringComparison.Ordinal);
        }
        finally
        {
            ProcessRunner.Run("fusermount3", ["-uz", mnt], check: false);
        }
    }

    [Fact]
    public void MountpointsThatWouldHideFilesOrWhatTheDaemonNeedsAreRefused()
    {
        using var temp = new TempFolder();
        string bundle = Samples.Extract("expanding", temp.Path);

        string full = temp.Combine("full");
        Directory.CreateDirectory(full);
        File.WriteAllText(Path.Combine(full, "keep.txt"), "x");
        AssertRefused(PrlFuseCli.Run("mount", bundle, full), full, "not empty");

        AssertRefused(PrlFuseCli.Run("mount", bundle, bundle), bundle, "the disk's bundle folder");

        // -o nonempty allows hiding files, but never what the daemon serves: a folder above the bundle...
        AssertRefused(PrlFuseCli.Run("mount", "-o", "nonempty", bundle, temp.Path), temp.Path, "the disk's bundle folder");

        // ...the folder of the log...
        string logs = temp.Combine("logs");
        Directory.CreateDirectory(logs);
        File.WriteAllText(Path.Combine(logs, "old.txt"), "x");
        AssertRefused(PrlFuseCli.Run("mount", "-o", "nonempty", "--log", Path.Combine(logs, "d.log"), bundle, logs), logs, "the log file");

        // ...or the program itself.
        string bin = Path.GetDirectoryName(PrlFuseCli.Binary)!;
        AssertRefused(PrlFuseCli.Run("mount", "-o", "nonempty", "--read-only", bundle, bin), bin, "prlfuse's own program");

        // A file is not a mountpoint; a missing folder is named.
        AssertRefused(PrlFuseCli.Run("mount", bundle, Path.Combine(full, "keep.txt")), "keep.txt", "not a folder");
        AssertRefused(PrlFuseCli.Run("mount", bundle, temp.Combine("missing")), "missing", "does not exist");
        Assert.True(File.Exists(Path.Combine(full, "keep.txt")));
    }

    private static void AssertRefused(ProcessRunner.Result result, string path, string reason)
    {
        Assert.Equal(1, result.ExitCode);
        string line = result.Stderr.Trim();
        Assert.DoesNotContain('\n', line);
        Assert.Contains(path, line, StringComparison.Ordinal);
        Assert.Contains(reason, line, StringComparison.Ordinal);
        Assert.DoesNotContain(" " + path + " ", File.ReadAllText("/proc/self/mountinfo"), StringComparison.Ordinal);
    }
}
