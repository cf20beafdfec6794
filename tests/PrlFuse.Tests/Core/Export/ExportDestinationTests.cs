using System.Diagnostics;
using System.Globalization;
using PrlFuse.Cli.Commands;
using PrlFuse.Core;
using PrlFuse.Core.Engine;
using PrlFuse.Core.IO;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.Export;

/// <summary>
/// `export -o` writes what it is pointed at without destroying it: a regular file is replaced atomically, a symlink
/// keeps being a link and its target gets the content, a FIFO, a character device, standard output and a block device
/// are written through in place. Content is always compared with qemu-img's own conversion of the chain.
/// </summary>
[Trait("Needs", "Qemu")]
public sealed class ExportDestinationTests
{
    private const long DiskBytes = 8L << 20;

    [Fact]
    public void NewFileGetsTheTopAsASparseFileAndNoTemporaryIsLeft()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [DiskBytes / 512], 101);
        string outFolder = Directory.CreateDirectory(temp.Combine("out")).FullName;
        string output = Path.Combine(outFolder, "top.raw");

        Assert.Equal(0, Export(chain.Bundle, output));

        byte[] oracle = chain.OracleView(1, temp.Path);
        Assert.Equal(oracle, File.ReadAllBytes(output));
        Assert.Equal(["top.raw"], Directory.GetFileSystemEntries(outFolder).Select(Path.GetFileName));

        // Sparse: no more blocks than the 64 KiB pieces of the disk that hold a non-zero byte (and one more for the
        // file system's extent blocks, which st_blocks counts too).
        const int Piece = 64 << 10;
        long nonZero = Enumerable.Range(0, oracle.Length / Piece).LongCount(i => oracle.AsSpan(i * Piece, Piece).ContainsAnyExcept((byte)0)) * Piece;
        long blocks = long.Parse(ProcessRunner.Run("stat", "-c", "%b", output).Stdout.Trim(), CultureInfo.InvariantCulture);
        Assert.True(blocks * 512 <= nonZero + Piece, $"{blocks * 512} bytes allocated, but only {nonZero} bytes of 64 KiB pieces hold data: not sparse");
    }

    [Fact]
    public void HugeSparseDiskIsExportedFromItsMapWithoutReadingItsHoles()
    {
        // 4 TiB of which 2 MiB hold data: reading the holes would take many minutes, walking the map takes moments.
        const long Size = 4L << 40;
        const long Far = 3L << 40;
        const long Last = Size - (1 << 20);
        using var temp = new TempFolder();
        string image = temp.Combine("big.hds");
        Qemu.Create(image, Size.ToString(CultureInfo.InvariantCulture));
        Qemu.Write(image, "write -P 7 0 1M", string.Create(CultureInfo.InvariantCulture, $"write -P 9 {Far} 64k"), string.Create(CultureInfo.InvariantCulture, $"write -P 11 {Last} 1M"));
        string output = temp.Combine("big.raw");

        var r = ProcessRunner.Run(PrlFuseCli.Binary, ["export", image, "-o", output], TimeSpan.FromSeconds(60), check: false);

        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Equal(Size, new FileInfo(output).Length);
        using (var f = File.OpenHandle(output))
        {
            void Expect(long offset, int length, byte value)
            {
                var bytes = new byte[length];
                Assert.Equal(length, RandomAccess.Read(f, bytes, offset));
                Assert.True(Array.TrueForAll(bytes, b => b == value), $"bytes at {offset} are not all {value}");
            }

            Expect(0, 1 << 20, 7);
            Expect(1 << 20, 1 << 20, 0);
            Expect(Far, 64 << 10, 9);
            Expect(Far + (64 << 10), (1 << 20) - (64 << 10), 0);
            Expect(2L << 40, 1 << 20, 0);
            Expect(Last, 1 << 20, 11);
        }

        // A file system block or two of extent tree beside the data, no more.
        long blocks = long.Parse(ProcessRunner.Run("stat", "-c", "%b", output).Stdout.Trim(), CultureInfo.InvariantCulture);
        Assert.True(blocks * 512 <= 4L << 20, $"{blocks * 512} bytes allocated for 2 MiB of data: not sparse");
    }

    [Fact]
    public void ExistingFileIsReplacedByRenameKeepingItsMode()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [DiskBytes / 512], 102);
        string output = temp.Combine("old.raw");
        File.WriteAllText(output, "old content");
        File.SetUnixFileMode(output, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead);

        // A reader that had the old file open keeps seeing it whole: the new file took its name, nothing wrote into it.
        using var old = new FileStream(output, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        Assert.Equal(0, Export(chain.Bundle, output, snapshot: chain.Levels[0].Guid.ToString("D")));

        Assert.Equal(chain.OracleView(0, temp.Path), File.ReadAllBytes(output));
        Assert.Equal("old content", new StreamReader(old).ReadToEnd());
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead, File.GetUnixFileMode(output));
        Assert.DoesNotContain(Directory.GetFiles(temp.Path), f => f.Contains("partial", StringComparison.Ordinal));
    }

    [Fact]
    public void SymlinkStaysALinkAndItsTargetGetsTheContent()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [DiskBytes / 512], 103);
        string targetFolder = Directory.CreateDirectory(temp.Combine("target")).FullName;
        string linkFolder = Directory.CreateDirectory(temp.Combine("links")).FullName;
        string target = Path.Combine(targetFolder, "disk.raw");
        File.WriteAllText(target, "old");
        string link = Path.Combine(linkFolder, "disk.raw");
        File.CreateSymbolicLink(link, "../target/disk.raw");

        Assert.Equal(0, Export(chain.Bundle, link));

        Assert.Equal("../target/disk.raw", new FileInfo(link).LinkTarget);
        Assert.Equal(chain.OracleView(1, temp.Path), File.ReadAllBytes(target));
        Assert.Equal(["disk.raw"], Directory.GetFileSystemEntries(linkFolder).Select(Path.GetFileName));
        Assert.Equal(["disk.raw"], Directory.GetFileSystemEntries(targetFolder).Select(Path.GetFileName));
    }

    [Fact]
    public void DanglingSymlinkCreatesItsTarget()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 1, [DiskBytes / 512], 104);
        string link = temp.Combine("link.raw");
        File.CreateSymbolicLink(link, temp.Combine("made.raw"));

        Assert.Equal(0, Export(chain.Bundle, link));

        Assert.NotNull(new FileInfo(link).LinkTarget);
        Assert.Equal(chain.OracleView(0, temp.Path), File.ReadAllBytes(temp.Combine("made.raw")));
    }

    [Fact]
    public void FifoIsWrittenInPlaceForAReaderProcess()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [DiskBytes / 512], 105);
        string fifo = temp.Combine("pipe");
        string received = temp.Combine("received.raw");
        ProcessRunner.Run("mkfifo", fifo);
        using var reader = StartShell("exec cat \"$0\" > \"$1\"", fifo, received);
        try
        {
            Assert.Equal(0, Export(chain.Bundle, fifo));
            Assert.True(reader.WaitForExit(60_000), "the FIFO's reader never saw the end of the data");
        }
        finally
        {
            if (!reader.HasExited)
            {
                reader.Kill();
            }
        }

        Assert.Equal(0, reader.ExitCode);
        Assert.Equal("FIFO", PathRules.FileKind(fifo));
        Assert.Equal(chain.OracleView(1, temp.Path), File.ReadAllBytes(received));
    }

    [Fact]
    public void CharacterDeviceIsWrittenThroughNotReplaced()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 1, [DiskBytes / 512], 106);
        string node = temp.Combine("null");
        ProcessRunner.Run("mknod", node, "c", "1", "3"); // a /dev/null of our own, so nothing shared is at stake

        Assert.Equal(0, Export(chain.Bundle, node));

        Assert.Equal("character device", PathRules.FileKind(node));
        Assert.Equal(["null"], Directory.GetFiles(temp.Path).Select(Path.GetFileName));
    }

    [Trait("Needs", "Installed")]
    [Theory]
    [InlineData("-")]
    [InlineData("/dev/stdout")]
    public void StandardOutputThroughTheCliGetsEveryByteAndNoText(string output)
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [DiskBytes / 512], 107);
        var (exit, stdout, stderr) = RunCliBinary(["export", chain.Bundle, "-o", output]);

        Assert.True(exit == 0, stderr);
        Assert.Equal(chain.OracleView(1, temp.Path), stdout);
        Assert.Contains("wrote", stderr, StringComparison.Ordinal);
        Assert.NotNull(new FileInfo("/dev/stdout").LinkTarget);
    }

    [Fact]
    public void MissingFolderIsReportedInTheToolsWords()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 1, [DiskBytes / 512], 108);
        string missing = temp.Combine("nonexistent");
        var e = Assert.Throws<PrlFuseException>(() => Export(chain.Bundle, Path.Combine(missing, "x.raw")));
        Assert.Equal($"{missing}/x.raw: folder {missing} does not exist", e.Message);
        Assert.False(Directory.Exists(missing));
    }

    [Fact]
    public void FolderAsOutputIsReportedInTheToolsWords()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 1, [DiskBytes / 512], 109);
        string folder = Directory.CreateDirectory(temp.Combine("folder")).FullName;
        var e = Assert.Throws<PrlFuseException>(() => Export(chain.Bundle, folder));
        Assert.StartsWith($"{folder}: is a folder", e.Message, StringComparison.Ordinal);
        Assert.Empty(Directory.GetFileSystemEntries(folder));
    }

    [Fact]
    public void OwnImageIsRefusedAlsoThroughASymlink()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [DiskBytes / 512], 110);
        string image = Path.Combine(chain.Bundle, chain.Levels[0].Files[0]);
        byte[] before = File.ReadAllBytes(image);
        string link = temp.Combine("sneaky.raw");
        File.CreateSymbolicLink(link, image);

        var direct = Assert.Throws<PrlFuseException>(() => Export(chain.Bundle, image));
        var viaLink = Assert.Throws<PrlFuseException>(() => Export(chain.Bundle, link));

        Assert.Contains("is an image of the disk being exported", direct.Message, StringComparison.Ordinal);
        Assert.Contains("is an image of the disk being exported", viaLink.Message, StringComparison.Ordinal);
        Assert.Equal(before, File.ReadAllBytes(image));
    }

    [Trait("Needs", "Kernel")]
    [Fact]
    public void LoopDeviceIsWrittenInPlaceEveryByteIncludingZeros()
    {
        using var temp = new TempFolder();
        const long Bytes = 4 * DiskBytes;
        var chain = QemuChain.Build(temp.Path, 2, [Bytes / 512], 111);
        using (var disk = VirtualDisk.Open(chain.Bundle))
        {
            Assert.True(disk.Top.CountAllocatedBytes() < Bytes, "the test needs unallocated ranges");
        }

        // Garbage on the device: a writer that left holes (as for a file) would leave it where the disk reads zeros.
        using var loop = new LoopDevice(temp.Combine("backing.img"), Bytes, fill: 0xEE);
        Assert.Equal(0, Export(chain.Bundle, loop.Device));

        Assert.Equal("block device", PathRules.FileKind(loop.Device));
        Assert.Equal(chain.OracleView(1, temp.Path), loop.ReadAll());
    }

    [Trait("Needs", "Kernel")]
    [Fact]
    public void TooSmallLoopDeviceIsRefusedNamingBothSizesAndLeftAlone()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 1, [DiskBytes / 512], 112);
        long small = DiskBytes - (1 << 20);
        using var loop = new LoopDevice(temp.Combine("backing.img"), small, fill: 0xEE);

        var e = Assert.Throws<PrlFuseException>(() => Export(chain.Bundle, loop.Device));

        Assert.StartsWith(loop.Device + ":", e.Message, StringComparison.Ordinal);
        Assert.Contains(small.ToString(CultureInfo.InvariantCulture), e.Message, StringComparison.Ordinal);
        Assert.Contains(DiskBytes.ToString(CultureInfo.InvariantCulture), e.Message, StringComparison.Ordinal);
        Assert.Equal("block device", PathRules.FileKind(loop.Device));
        Assert.All(loop.ReadAll(), b => Assert.Equal(0xEE, b));
    }

    internal static int Export(string disk, string output, string? snapshot = null) =>
        ExportCommand.Run(new ExportOptions { Disk = disk, Output = output, Snapshot = snapshot, CacheBytes = 0 });

    private static Process StartShell(string script, params string[] args)
    {
        var psi = new ProcessStartInfo("sh") { UseShellExecute = false };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add(script);
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }

        return Process.Start(psi) ?? throw new InvalidOperationException("cannot start sh");
    }

    /// <summary>The real prlfuse with stdout a pipe, read as bytes (ProcessRunner decodes text).</summary>
    private static (int Exit, byte[] Stdout, string Stderr) RunCliBinary(string[] args)
    {
        var psi = new ProcessStartInfo(PrlFuseCli.Binary) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }

        using var p = Process.Start(psi) ?? throw new InvalidOperationException("cannot start prlfuse");
        p.StandardInput.Close();
        var stderr = p.StandardError.ReadToEndAsync();
        using var stdout = new MemoryStream();
        var copy = p.StandardOutput.BaseStream.CopyToAsync(stdout);
        if (!p.WaitForExit(TimeSpan.FromMinutes(2)))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException("prlfuse export did not finish");
        }

        copy.Wait();
        return (p.ExitCode, stdout.ToArray(), stderr.Result);
    }
}

/// <summary>A loop device over a file of a given size and fill byte; detached when disposed, whatever happened.</summary>
public sealed class LoopDevice : IDisposable
{
    private readonly string _backing;

    public LoopDevice(string backing, long bytes, byte fill)
    {
        _backing = backing;
        using (var f = new FileStream(backing, FileMode.CreateNew, FileAccess.Write))
        {
            var chunk = new byte[1 << 20];
            Array.Fill(chunk, fill);
            for (long done = 0; done < bytes; done += chunk.Length)
            {
                f.Write(chunk, 0, (int)Math.Min(chunk.Length, bytes - done));
            }
        }

        Device = ProcessRunner.Run("losetup", "-f", "--show", backing).Stdout.Trim();
        Assert.StartsWith("/dev/loop", Device, StringComparison.Ordinal);
    }

    public string Device { get; }

    /// <summary>The device's content read through the device, past its page cache.</summary>
    public byte[] ReadAll()
    {
        ProcessRunner.Run("blockdev", "--flushbufs", Device);
        using var f = new FileStream(Device, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        using var m = new MemoryStream();
        f.CopyTo(m);
        return m.ToArray();
    }

    public void Dispose()
    {
        ProcessRunner.Run("losetup", ["-d", Device], check: false);
        File.Delete(_backing);
    }
}
