using System.Diagnostics;
using System.Text.Json;
using PrlFuse.Cli.Commands;
using PrlFuse.Fuse;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.EndToEnd;

/// <summary>
/// `prlfuse status` and <see cref="MountRegistry"/> on real mounts made with the real command: one read-only, one
/// read-write, a process holding a file open on one and a loop device on the other.
/// </summary>
[Collection(FuseKernelCollection.Name)]
[Trait("Needs", "Kernel")]
[Trait("Needs", "Installed")]
public sealed class StatusTests
{
    [Fact]
    public void StatusListsMountsDaemonsOpenFilesAndLoopDevices()
    {
        using var temp = new TempFolder();
        string roDisk = Samples.Extract("expanding", Directory.CreateDirectory(temp.Combine("a")).FullName);
        string rwDisk = Samples.Extract("plain", Directory.CreateDirectory(temp.Combine("b")).FullName);
        string idle = Samples.Extract("split", Directory.CreateDirectory(temp.Combine("c")).FullName);
        using var ro = new PrlFuseMount(roDisk, temp.Combine("mnt-ro"), "--read-only");
        using var rw = new PrlFuseMount(rwDisk, temp.Combine("mnt-rw"));
        Process? holder = null;
        string? loop = null;
        try
        {
            holder = Process.Start(new ProcessStartInfo("sh", ["-c", "exec 3< \"$0\"; exec sleep 120", ro.Current]) { UseShellExecute = false })!;
            WaitFor(() => Directory.EnumerateFileSystemEntries($"/proc/{holder.Id}/fd").Any(fd => new FileInfo(fd).LinkTarget == ro.Current), "the holder to open current.raw");
            loop = ProcessRunner.Run("losetup", "-f", "--show", "-r", rw.Current).Stdout.Trim();

            var text = new StringWriter();
            Assert.Equal(0, StatusCommand.Run(json: false, text));
            string output = text.ToString();
            string roBlock = Block(output, ro.Mountpoint);
            string rwBlock = Block(output, rw.Mountpoint);
            Assert.Contains($"{ro.Mountpoint}  (read-only)", roBlock, StringComparison.Ordinal);
            Assert.Contains($"disk    {roDisk}", roBlock, StringComparison.Ordinal);
            Assert.Contains($"daemon  pid {ro.DaemonPid()}", roBlock, StringComparison.Ordinal);
            Assert.Contains($"in use  pid {holder.Id} (sleep), fd 3: {ro.Current}", roBlock, StringComparison.Ordinal);
            Assert.Contains($"{rw.Mountpoint}  (read-write)", rwBlock, StringComparison.Ordinal);
            Assert.Contains($"daemon  pid {rw.DaemonPid()}", rwBlock, StringComparison.Ordinal);
            Assert.Contains($"loop    {loop}: {rw.Current}", rwBlock, StringComparison.Ordinal);
            Assert.DoesNotContain("loop", roBlock, StringComparison.Ordinal);
            Assert.DoesNotContain("in use", rwBlock, StringComparison.Ordinal);

            var json = new StringWriter();
            Assert.Equal(0, StatusCommand.Run(json: true, json));
            using var doc = JsonDocument.Parse(json.ToString());
            var mounts = doc.RootElement.GetProperty("mounts").EnumerateArray().ToList();
            var roJson = mounts.Single(m => m.GetProperty("mountpoint").GetString() == ro.Mountpoint);
            var rwJson = mounts.Single(m => m.GetProperty("mountpoint").GetString() == rw.Mountpoint);
            Assert.Equal(roDisk, roJson.GetProperty("disk").GetString());
            Assert.True(roJson.GetProperty("readOnly").GetBoolean());
            Assert.False(rwJson.GetProperty("readOnly").GetBoolean());
            Assert.Equal(ro.DaemonPid(), roJson.GetProperty("daemonPid").GetInt32());
            Assert.Equal(rw.DaemonPid(), rwJson.GetProperty("daemonPid").GetInt32());
            var open = Assert.Single(roJson.GetProperty("openFiles").EnumerateArray());
            Assert.Equal(holder.Id, open.GetProperty("pid").GetInt32());
            Assert.Equal(ro.Current, open.GetProperty("path").GetString());
            var loopJson = Assert.Single(rwJson.GetProperty("loopDevices").EnumerateArray());
            Assert.Equal(loop, loopJson.GetProperty("device").GetString());
            Assert.Equal(rw.Current, loopJson.GetProperty("backingFile").GetString());

            // "Is this disk mounted, where, read-write or not": by bundle, by descriptor, by an image reached through a symlink.
            string image = Directory.GetFiles(roDisk, "*.hds").Single();
            string link = temp.Combine("link.hds");
            File.CreateSymbolicLink(link, image);
            Assert.Equal(ro.Mountpoint, Assert.Single(MountRegistry.MountsOf(link)).Mountpoint);
            Assert.True(Assert.Single(MountRegistry.MountsOf(image)).ReadOnly);
            var rwFound = Assert.Single(MountRegistry.MountsOf(Path.Combine(rwDisk, "DiskDescriptor.xml")));
            Assert.Equal(rw.Mountpoint, rwFound.Mountpoint);
            Assert.False(rwFound.ReadOnly);
            Assert.Empty(MountRegistry.MountsOf(idle));
            Assert.Equal([ro.DaemonPid()], MountRegistry.DaemonsServing(ro.Mountpoint));
        }
        finally
        {
            if (holder is not null)
            {
                holder.Kill();
                holder.WaitForExit();
                holder.Dispose();
            }

            if (loop is not null)
            {
                ProcessRunner.Run("losetup", ["-d", loop], check: false);
            }
        }

        Assert.Equal(0, ro.Unmount().ExitCode);
        Assert.Equal(0, rw.Unmount().ExitCode);
        var after = new StringWriter();
        StatusCommand.Run(json: false, after);
        Assert.DoesNotContain(ro.Mountpoint, after.ToString(), StringComparison.Ordinal);
        Assert.DoesNotContain(rw.Mountpoint, after.ToString(), StringComparison.Ordinal);
    }

    /// <summary>The lines of one mount's entry: from its heading to the next heading.</summary>
    private static string Block(string output, string mountpoint)
    {
        var lines = output.Split('\n');
        int start = Array.FindIndex(lines, l => l.StartsWith(mountpoint + "  (", StringComparison.Ordinal));
        Assert.True(start >= 0, $"{mountpoint} not listed:\n{output}");
        int end = Array.FindIndex(lines, start + 1, l => l.Length > 0 && !l.StartsWith(' '));
        return string.Join('\n', lines[start..(end < 0 ? lines.Length : end)]);
    }

    private static void WaitFor(Func<bool> condition, string what)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, $"timed out waiting for {what}");
            Thread.Sleep(20);
        }
    }
}
