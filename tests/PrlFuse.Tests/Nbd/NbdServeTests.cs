using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using PrlFuse.Nbd.Protocol;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Nbd;

/// <summary>
/// `prlfuse serve` of the installed binary against real NBD clients (qemu-img, qemu-io, nbdinfo, nbdcopy) and QEMU's
/// own view of chains QEMU built: every export reads as QEMU reads its chain, the lists and maps are prlfuse map's,
/// writes land in the top image and leave it clean after SIGTERM, -d
/// returns once it serves, TCP beyond loopback needs TLS, and clients that break the rules lose only their own
/// connection. (The image locks against mount: <see cref="NbdLockTests"/>.)
/// </summary>
[Trait("Needs", "Qemu")]
[Trait("Needs", "Installed")]
public sealed partial class NbdServeTests
{
    [Theory]
    [InlineData(false, 71)]
    [InlineData(true, 72)]
    public void EveryExportReadsAsQemuReadsItsChain(bool split, int seed)
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 3, split ? [13 * 2048 + 128, 11 * 2048 + 8] : [24 * 2048], seed);
        var oracles = Oracles(chain, temp);
        using var serve = new PrlFuseServe(chain.Bundle, temp.Combine("nbd.sock"));

        var info = Qemu.Img("info", "--output=json", serve.Uri("current"));
        Assert.True(info.ExitCode == 0, info.Stderr);
        Assert.Equal(chain.SizeBytes, JsonDocument.Parse(info.Stdout).RootElement.GetProperty("virtual-size").GetInt64());
        for (int level = 0; level < chain.Levels.Count; level++)
        {
            var compare = Qemu.Img("compare", "-f", "raw", "-F", "raw", ExportUri(serve, chain, level), oracles[level]);
            Assert.True(compare.ExitCode == 0, $"level {level}: {compare.Stdout}{compare.Stderr}");
        }

        // The empty name is the default export: current.
        var byDefault = Qemu.Img("compare", "-f", "raw", "-F", "raw", $"nbd+unix:///?socket={serve.Socket}", oracles[^1]);
        Assert.True(byDefault.ExitCode == 0, byDefault.Stdout + byDefault.Stderr);

        // A mismatch is seen: the top's oracle is not the root's export.
        Assert.NotEqual(0, Qemu.Img("compare", "-f", "raw", "-F", "raw", ExportUri(serve, chain, 0), oracles[^1]).ExitCode);
        Assert.Equal(0, serve.Stop());
    }

    [Fact]
    public void NbdinfoListsEveryExportAndMapsThemAsPrlfuseMapDoes()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 3, [13 * 2048 + 128, 11 * 2048 + 8], 73);
        using var serve = new PrlFuseServe(chain.Bundle, temp.Combine("nbd.sock"), "--read-only");

        var list = ProcessRunner.Run("nbdinfo", "--list", "--json", $"nbd+unix:///?socket={serve.Socket}");
        var exports = JsonDocument.Parse(list.Stdout).RootElement.GetProperty("exports").EnumerateArray().ToList();
        var expected = chain.Levels.Take(chain.Levels.Count - 1).Select(l => l.Guid.ToString("B")).Prepend("current").Order(StringComparer.Ordinal);
        Assert.Equal(expected, exports.Select(e => e.GetProperty("export-name").GetString()!).Order(StringComparer.Ordinal));
        foreach (var export in exports)
        {
            Assert.Equal(chain.SizeBytes, export.GetProperty("export-size").GetInt64());
            Assert.True(export.GetProperty("is_read_only").GetBoolean());
            Assert.True(export.GetProperty("can_multi_conn").GetBoolean());
            Assert.Contains("base:allocation", export.GetProperty("contexts").EnumerateArray().Select(c => c.GetString()));
        }

        int holes = 0;
        for (int level = 0; level < chain.Levels.Count; level++)
        {
            string[] snapshot = level == chain.Levels.Count - 1 ? [] : ["--snapshot", chain.Levels[level].Guid.ToString()];
            var map = PrlFuseCli.Run(["map", "--json", chain.Bundle, .. snapshot]);
            Assert.True(map.ExitCode == 0, map.Stderr);
            var ours = map.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(line => JsonDocument.Parse(line.TrimEnd(',').TrimStart('[').TrimEnd(']')).RootElement).ToList();

            // base:allocation: data where prlfuse map says data, hole and zero elsewhere.
            var allocation = NbdMap(serve, chain, level, "base:allocation");
            var expectedAllocation = Merge(ours.Select(e => (e.GetProperty("start").GetInt64(), e.GetProperty("length").GetInt64(), e.GetProperty("data").GetBoolean() ? 0L : 3L)));
            Assert.Equal(expectedAllocation, allocation);
            holes += allocation.Count(r => r.Value == 3);

            // qemu:allocation-depth: the depth of the image holding the data, counted from 1; 0 where none does.
            var depth = NbdMap(serve, chain, level, "qemu:allocation-depth");
            var expectedDepth = Merge(ours.Select(e => (e.GetProperty("start").GetInt64(), e.GetProperty("length").GetInt64(), e.GetProperty("data").GetBoolean() ? e.GetProperty("depth").GetInt64() + 1 : 0L)));
            Assert.Equal(expectedDepth, depth);
        }

        Assert.True(holes > 0, "the chain needs holes for the maps to show them");
        Assert.Equal(0, serve.Stop());
    }

    [Fact]
    public async Task NbdcopyOfEveryExportAtOnceEqualsQemusView()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 3, [48 * 2048], 74);
        var oracles = Oracles(chain, temp);
        using var serve = new PrlFuseServe(chain.Bundle, temp.Combine("nbd.sock"));

        // Out of the page cache: reads that would wait for the disk take the workers' way, the others the reader's.
        foreach (string image in chain.Levels.SelectMany(l => l.Files).Select(f => Path.Combine(chain.Bundle, f)))
        {
            using var handle = File.OpenHandle(image, FileMode.Open, FileAccess.ReadWrite);
            Assert.Equal(0, PrlFuse.Core.IO.Posix.FSync(handle));
            Assert.Equal(0, PrlFuse.Core.IO.Posix.Fadvise(handle, 0, 0, 4 /* POSIX_FADV_DONTNEED */));
        }

        var copies = Enumerable.Range(0, chain.Levels.Count).Select(level => Task.Run(() =>
        {
            string copy = temp.Combine($"copy-{level}.raw");
            var r = ProcessRunner.Run("nbdcopy", [ExportUri(serve, chain, level), copy], check: false);
            Assert.True(r.ExitCode == 0, $"nbdcopy of level {level}: {r.Stderr}");
            return copy;
        })).ToArray();
        string[] copied = await Task.WhenAll(copies);
        for (int level = 0; level < chain.Levels.Count; level++)
        {
            Assert.True(File.ReadAllBytes(oracles[level]).AsSpan().SequenceEqual(File.ReadAllBytes(copied[level])), $"level {level}: nbdcopy's copy differs from QEMU's view");
        }

        Assert.Equal(0, serve.Stop());
    }

    [Fact]
    public void QemuIoWritesLandInTheTopImageWhichIsCleanAfterSigterm()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [24 * 2048], 75);
        byte[] expected = chain.OracleView(1, temp.Path);
        byte[] below = chain.OracleView(0, temp.Path);
        using (var serve = new PrlFuseServe(chain.Bundle, temp.Combine("nbd.sock")))
        {
            // WRITE, WRITE with FUA, WRITE_ZEROES with and without NO_HOLE, TRIM, FLUSH.
            var io = Qemu.Io(
                "-f", "raw", serve.Uri("current"),
                "-c", "write -P 7 0 1M",
                "-c", "write -f -P 9 8M 64k",
                "-c", "write -z 3M 512k",
                "-c", "write -z -u 4M 1M",
                "-c", "discard 5M 1M",
                "-c", "flush");
            Assert.True(io.ExitCode == 0 && !(io.Stdout + io.Stderr).Contains("failed", StringComparison.OrdinalIgnoreCase), io.Stdout + io.Stderr);
            Assert.Equal(0, serve.Stop());
            Assert.DoesNotContain("prlfuse: internal", serve.Stderr, StringComparison.Ordinal);
        }

        expected.AsSpan(0, 1 << 20).Fill(7);
        expected.AsSpan(8 << 20, 64 << 10).Fill(9);
        expected.AsSpan(3 << 20, 512 << 10).Clear();
        expected.AsSpan(4 << 20, 2 << 20).Clear();
        foreach (string image in chain.ChainFiles(1, 0))
        {
            Qemu.AssertClean(image);
        }

        Assert.True(expected.AsSpan().SequenceEqual(chain.OracleView(1, temp.Path)), "QEMU's view of the top after the server stopped is not what was written");
        Assert.True(below.AsSpan().SequenceEqual(chain.OracleView(0, temp.Path)), "the snapshot below the top changed");
    }

    [Fact]
    public void ClientsBreakingTheRulesGetTheProtocolsErrorsOrLoseOnlyTheirOwnConnection()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [8 * 2048], 76);
        byte[] top = chain.OracleView(1, temp.Path);
        using var serve = new PrlFuseServe(chain.Bundle, temp.Combine("nbd.sock"));
        using var writer = RawNbdClient.Connect(serve.Socket, "current");
        using var reader = RawNbdClient.Connect(serve.Socket, chain.Levels[0].Guid.ToString("B"));
        Assert.Equal(chain.SizeBytes, writer.Size);
        Assert.Equal(0, writer.Flags & NbdTransmissionFlags.ReadOnly);
        Assert.NotEqual(0, reader.Flags & NbdTransmissionFlags.ReadOnly);

        long size = chain.SizeBytes;
        Assert.Equal(NbdError.Invalid, writer.Request(NbdCommand.Read, size - 512, 1024));
        Assert.Equal(NbdError.Invalid, writer.Request(NbdCommand.Read, 0, (32 << 20) + 1));
        Assert.Equal(NbdError.Invalid, writer.Request(99, 0, 0));
        Assert.Equal(NbdError.Invalid, writer.Request(NbdCommand.Read, 0, 512, flags: NbdCommandFlags.RequestOne));
        Assert.Equal(NbdError.Invalid, writer.Request(NbdCommand.BlockStatus, 0, 512)); // no metadata context chosen

        // A write past the end is refused, and its data is skipped: the next request is read where it starts.
        Assert.Equal(NbdError.NoSpace, writer.Request(NbdCommand.Write, size - 1024, 4096, payload: new byte[4096]));
        var data = new byte[4096];
        Assert.Equal(NbdError.None, writer.Request(NbdCommand.Read, 4096, 4096, data: data));
        Assert.True(top.AsSpan(4096, 4096).SequenceEqual(data));

        // A large read in a simple reply (sent from the images' pages, holes as zeros).
        var large = new byte[3 << 20];
        Assert.Equal(NbdError.None, writer.Request(NbdCommand.Read, 12345, (uint)large.Length, data: large));
        Assert.True(top.AsSpan(12345, large.Length).SequenceEqual(large));

        // Snapshots are read-only: writes, trims and zeroes are refused with EPERM.
        Assert.Equal(NbdError.Permission, reader.Request(NbdCommand.Write, 0, 512, payload: new byte[512]));
        Assert.Equal(NbdError.Permission, reader.Request(NbdCommand.Trim, 0, 512));
        Assert.Equal(NbdError.Permission, reader.Request(NbdCommand.WriteZeroes, 0, 512));

        // Garbage where a request belongs drops that connection; the other client goes on.
        writer.Send(new byte[NbdRequestHeader.Size]);
        Assert.True(writer.ClosedByServer(), "the server kept a connection that sent garbage");
        Assert.Equal(NbdError.None, reader.Request(NbdCommand.Read, 0, 4096, data: data));
        using var again = RawNbdClient.Connect(serve.Socket, "current");
        Assert.Equal(NbdError.None, again.Request(NbdCommand.Read, 4096, 4096, data: data));
        Assert.True(top.AsSpan(4096, 4096).SequenceEqual(data));
        Assert.Equal(0, serve.Stop());
    }

    [Fact]
    public void ConnectionCapAndHandshakeLimitGiveTheirPlacesBack()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 1, [8 * 2048], 82);
        using var serve = new PrlFuseServe(chain.Bundle, temp.Combine("nbd.sock"), "--max-connections", "2");

        // One client is served, one stalls in the handshake; a third is closed at once, before any greeting. (The
        // first two may wait a moment for the place of the connection that found the server ready.)
        using var served = Connect(serve.Socket);
        var stalled = Open(serve.Socket);
        for (int attempt = 0; ReadSome(stalled, 18) != 18; attempt++)
        {
            Assert.True(attempt < 50, "no place for a first client");
            stalled.Dispose();
            Thread.Sleep(100);
            stalled = Open(serve.Socket);
        }

        using var stalledClient = stalled;
        using (var third = Open(serve.Socket))
        {
            Assert.Equal(0, ReadSome(third, 1));
        }

        // The stalled one is dropped at the handshake limit (10 s), and its place taken again (once its thread has
        // ended, a moment after the socket closed).
        var started = DateTime.UtcNow;
        Assert.Equal(0, ReadSome(stalled, 1));
        Assert.InRange(DateTime.UtcNow - started, TimeSpan.FromSeconds(5), TimeSpan.FromSeconds(30));
        using var next = Connect(serve.Socket);
        Assert.Equal(NbdError.None, next.Request(NbdCommand.Read, 0, 512));
        Assert.Equal(NbdError.None, served.Request(NbdCommand.Read, 0, 512));
        Assert.Equal(0, serve.Stop());

        static RawNbdClient Connect(string path)
        {
            for (int attempt = 0; ; attempt++)
            {
                try
                {
                    return RawNbdClient.Connect(path, "current");
                }
                catch (EndOfStreamException) when (attempt < 50)
                {
                    Thread.Sleep(100);
                }
            }
        }

        static System.Net.Sockets.Socket Open(string path)
        {
            var socket = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
            socket.Connect(new System.Net.Sockets.UnixDomainSocketEndPoint(path));
            socket.ReceiveTimeout = 60_000;
            return socket;
        }

        // Bytes received until the count or the end of the stream.
        static int ReadSome(System.Net.Sockets.Socket socket, int count)
        {
            var buffer = new byte[count];
            int done = 0;
            while (done < count)
            {
                int n = socket.Receive(buffer, done, count - done, System.Net.Sockets.SocketFlags.None);
                if (n == 0)
                {
                    break;
                }

                done += n;
            }

            return done;
        }
    }

    [Fact]
    public async Task SigtermWhileAClientWritesAnswersWhatIsInFlightAndLeavesTheImageClean()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [192 * 2048], 83);
        string source = temp.Combine("source.raw");
        var random = new Random(83);
        var bytes = new byte[chain.SizeBytes];
        random.NextBytes(bytes);
        File.WriteAllBytes(source, bytes);
        using var serve = new PrlFuseServe(chain.Bundle, temp.Combine("nbd.sock"));
        var copy = Task.Run(() => ProcessRunner.Run("nbdcopy", [source, serve.Uri("current")], check: false));
        await Task.Delay(300);
        Assert.Equal(0, serve.Stop());
        Assert.Same(copy, await Task.WhenAny(copy, Task.Delay(TimeSpan.FromMinutes(2))));
        Assert.Contains("stopping", serve.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("internal error", serve.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("did not end", serve.Stderr, StringComparison.Ordinal);
        foreach (string image in chain.ChainFiles(1, 0))
        {
            Qemu.AssertClean(image);
        }
    }

    [Fact]
    public void DetachReturnsOnceItAcceptsConnectionsAndSigtermStopsIt()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [8 * 2048], 78);
        string socket = temp.Combine("nbd.sock");
        var started = PrlFuseCli.Run("serve", "-d", chain.Bundle, "--socket", socket, "--log", temp.Combine("serve.log"));
        Assert.True(started.ExitCode == 0, started.Stderr);
        int pid = int.Parse(KillLine().Match(started.Stderr).Groups[1].Value, CultureInfo.InvariantCulture);
        try
        {
            Assert.True(PrlFuseServe.Accepts(socket), "serve -d returned before the socket accepted connections");
            Assert.Contains($"nbd+unix:///current?socket={socket}", started.Stderr, StringComparison.Ordinal);
            var io = Qemu.Io("-f", "raw", $"nbd+unix:///current?socket={socket}", "-c", "write -P 3 0 64k");
            Assert.True(io.ExitCode == 0, io.Stderr);
        }
        finally
        {
            ProcessRunner.Run("kill", ["-TERM", pid.ToString(CultureInfo.InvariantCulture)], check: false);
            var deadline = DateTime.UtcNow.AddSeconds(60);
            while (Directory.Exists($"/proc/{pid}") && DateTime.UtcNow < deadline)
            {
                Thread.Sleep(50);
            }
        }

        Assert.False(Directory.Exists($"/proc/{pid}"), "the detached server did not end on SIGTERM");
        Assert.False(File.Exists(socket), "the socket was left behind");
        Qemu.AssertClean(Path.Combine(chain.Bundle, chain.Levels[1].Files[0]));
        Assert.Contains("stopping", File.ReadAllText(temp.Combine("serve.log")), StringComparison.Ordinal);
    }

    [Fact]
    public void ListeningBeyondLoopbackNeedsTlsOrInsecure()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 1, [8 * 2048], 79);
        var refused = PrlFuseCli.Run("serve", chain.Bundle, "--listen", "0.0.0.0:0");
        Assert.Equal(1, refused.ExitCode);
        Assert.Single(refused.Stderr.Trim().Split('\n'));
        Assert.Contains("--insecure", refused.Stderr, StringComparison.Ordinal);

        // With --insecure it serves on TCP (and on the socket).
        using var serve = new PrlFuseServe(chain.Bundle, temp.Combine("nbd.sock"), "--listen", "0.0.0.0:0", "--insecure", "--read-only");
        var port = TcpLine().Match(serve.Stderr);
        Assert.True(port.Success, serve.Stderr);
        var info = Qemu.Img("info", "--output=json", $"nbd://127.0.0.1:{port.Groups[1].Value}/current");
        Assert.True(info.ExitCode == 0, info.Stderr);
        Assert.Equal(chain.SizeBytes, JsonDocument.Parse(info.Stdout).RootElement.GetProperty("virtual-size").GetInt64());
        Assert.Equal(0, serve.Stop());
    }

    [Fact]
    public void TlsOnlyServerRefusesPlaintextAndServesOverTls()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 1, [8 * 2048], 80);
        string tls = temp.Folder("tls");
        ProcessRunner.Run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost", "-keyout", Path.Combine(tls, "server-key.pem"), "-out", Path.Combine(tls, "server-cert.pem"));
        File.Copy(Path.Combine(tls, "server-cert.pem"), Path.Combine(tls, "ca-cert.pem"));
        using var serve = new PrlFuseServe(chain.Bundle, temp.Combine("nbd.sock"), "--read-only", "--tls-cert", Path.Combine(tls, "server-cert.pem"), "--tls-key", Path.Combine(tls, "server-key.pem"));

        var plain = Qemu.Img("info", serve.Uri("current"));
        Assert.NotEqual(0, plain.ExitCode);
        Assert.Contains("TLS", plain.Stderr, StringComparison.Ordinal);

        // QEMU with the server's certificate as its CA: it checks the certificate, then reads the export as its chain.
        string oracle = temp.Combine("oracle.raw");
        File.WriteAllBytes(oracle, chain.OracleView(0, temp.Path));
        var compare = Qemu.Img(
            "compare", "--object", $"tls-creds-x509,id=tls0,dir={tls},endpoint=client",
            "--image-opts", $"driver=nbd,server.type=unix,server.path={serve.Socket},export=current,tls-creds=tls0,tls-hostname=localhost",
            "--image-opts", $"driver=raw,file.filename={oracle}");
        Assert.True(compare.ExitCode == 0, compare.Stdout + compare.Stderr);
        Assert.Equal(0, serve.Stop());
    }

    /// <summary>QEMU's raw view of every level, written to files (before any server holds the images).</summary>
    private static string[] Oracles(QemuChain chain, TempFolder temp) =>
        Enumerable.Range(0, chain.Levels.Count).Select(level =>
        {
            string file = temp.Combine($"oracle-{level}.raw");
            File.WriteAllBytes(file, chain.OracleView(level, temp.Path));
            return file;
        }).ToArray();

    private static string ExportUri(PrlFuseServe serve, QemuChain chain, int level) =>
        level == chain.Levels.Count - 1 ? serve.Uri("current") : serve.Uri(chain.Levels[level].Guid);

    /// <summary>nbdinfo --map of one export's context: (start, end, type), consecutive ranges of one type merged.</summary>
    private static List<(long Start, long End, long Value)> NbdMap(PrlFuseServe serve, QemuChain chain, int level, string context)
    {
        var r = ProcessRunner.Run("nbdinfo", $"--map={context}", "--json", ExportUri(serve, chain, level));
        return Merge(JsonDocument.Parse(r.Stdout).RootElement.EnumerateArray().Select(e => (e.GetProperty("offset").GetInt64(), e.GetProperty("length").GetInt64(), e.GetProperty("type").GetInt64())));
    }

    private static List<(long Start, long End, long Value)> Merge(IEnumerable<(long Start, long Length, long Value)> ranges)
    {
        var merged = new List<(long Start, long End, long Value)>();
        foreach (var (start, length, value) in ranges)
        {
            if (merged.Count > 0 && merged[^1].End == start && merged[^1].Value == value)
            {
                merged[^1] = (merged[^1].Start, start + length, value);
            }
            else
            {
                merged.Add((start, start + length, value));
            }
        }

        return merged;
    }

    [GeneratedRegex(@"'kill (\d+)'")]
    private static partial Regex KillLine();

    [GeneratedRegex(@"listening on TCP [0-9.]+:(\d+)")]
    private static partial Regex TcpLine();
}
