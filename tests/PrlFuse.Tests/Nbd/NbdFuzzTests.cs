using System.Globalization;
using PrlFuse.Tests.Support;
using Xunit.Abstractions;

namespace PrlFuse.Tests.Nbd;

/// <summary>
/// The malformed-client fuzzer against the NBD server (the installed `prlfuse serve`; PRLFUSE_NBD_SERVER=qemu-nbd
/// runs the same against qemu-nbd). After thousands of connections: the server is alive, a fresh client reads every
/// export as the oracle (our client and qemu-img compare), the server holds no more sockets than before, and no
/// case found a hang, a protocol violation or wrong data. PRLFUSE_NBD_FUZZ_CONNECTIONS, _SEED, _FIRST, _WORKERS and
/// _TIMEOUT (seconds per connection) change the run (`make fuzz-nbd` runs a long one).
/// </summary>
[Trait("Needs", "Installed")]
[Trait("Needs", "Qemu")]
public sealed class NbdFuzzTests(ITestOutputHelper output)
{
    /// <summary>Connections of the CI run, per server mode: a few seconds each.</summary>
    public const int CiConnections = 3000;

    public const int CiSeed = 20250615;

    private static int Setting(string name, int fallback) =>
        Environment.GetEnvironmentVariable("PRLFUSE_NBD_FUZZ_" + name) is { Length: > 0 } text ? int.Parse(text, CultureInfo.InvariantCulture) : fallback;

    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    public void Server_survives_malformed_clients(bool readOnly, bool tls)
    {
        // Over TLS every connection pays a TLS handshake: a third of the cases.
        int connections = Setting("CONNECTIONS", CiConnections) / (tls ? 3 : 1);
        int seed = Setting("SEED", CiSeed);
        int first = Setting("FIRST", 0);
        var timeout = TimeSpan.FromSeconds(Setting("TIMEOUT", 10));
        string? report = Environment.GetEnvironmentVariable("PRLFUSE_NBD_FUZZ_REPORT");
        void Log(string line)
        {
            output.WriteLine(line);
            if (report is not null)
            {
                File.AppendAllText(report, line + "\n");
            }
        }

        using var temp = new TempFolder("nbd-fuzz");
        using var fixture = FuzzTarget.Start(temp, readOnly, tls);
        var server = fixture.Server;
        int baseline = server.IdleSockets();
        Log($"nbd fuzz{(tls ? " over TLS" : "")}: {server.CommandLine}; seed {seed}, cases {first}..{first + connections - 1}, {fixture.Exports.Count} exports, {baseline} sockets open");

        var fuzzer = new NbdFuzzer(server.Address, fixture.Exports, seed, timeout, tls);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var result = fuzzer.Run(connections, Setting("WORKERS", 3), first, Log);
        Log($"{result.Summary}; {clock.Elapsed.TotalSeconds:0.0} s");
        foreach (var (note, (count, firstCase)) in result.Notes.OrderBy(n => n.Key, StringComparer.Ordinal))
        {
            Log($"  note: {count} x {note} (first: case {firstCase})");
        }

        var findings = result.Findings.OrderBy(f => f.Case).Select(f => f.Text).ToList();
        Assert.False(server.HasExited, $"the server died during the fuzz run:\n{server.Output}\nfirst findings:\n{string.Join("\n", findings.Take(5))}");

        // A fresh, well-behaved client reads every export as the oracle: ours, and qemu's NBD client.
        fixture.AssertServesOracle();

        int after = server.WaitForSockets(baseline, TimeSpan.FromSeconds(10));
        Assert.True(after <= baseline, $"the server holds {after} sockets after the run, {baseline} before: connections left open");
        Assert.True(findings.Count == 0, $"{findings.Count} findings; the first:\n{string.Join("\n", findings.Take(10))}");

        if (connections >= 1000)
        {
            // Every kind ran, and the server both answered errors and dropped connections: the faults reached it.
            foreach (var kind in Enum.GetValues<NbdCaseKind>())
            {
                Assert.True(result.ByKind.GetValueOrDefault(kind) > 0, $"no {kind} case ran: {result.Summary}");
            }

            foreach (string outcome in new[] { "served", "refused", "dropped", "cut" })
            {
                Assert.True(result.ByOutcome.GetValueOrDefault(outcome) > connections / 50, $"too few '{outcome}' outcomes: {result.Summary}");
            }

            Assert.True(result.SentinelReads > 10, result.Summary);
        }

        if (!readOnly)
        {
            // Every write wrote the oracle's bytes: after a clean stop the images are consistent and still the oracle.
            int exit = server.Stop(TimeSpan.FromSeconds(60));
            Assert.True(exit == 0, $"the server exited {exit} on SIGTERM:\n{server.Output}");
            fixture.AssertImagesClean();
        }
    }

    /// <summary>
    /// More clients than the cap (prlfuse: --max-connections 8) are closed at once, clients that never finish the
    /// handshake are dropped after the handshake limit, and afterwards the server holds no more sockets than before and
    /// serves a fresh client. qemu-nbd queues the excess instead and has no handshake limit: there only the end counts.
    /// </summary>
    [Fact]
    public void Excess_and_idle_connections_are_dropped()
    {
        const int Cap = 8;
        using var temp = new TempFolder("nbd-flood");
        var chain = QemuChain.Build(temp.Folder("chain"), 1, [8192], seed: 9, predefinedTop: true);
        string socket = temp.Combine("nbd.sock");
        using var server = NbdServerProcess.IsQemu
            ? NbdServerProcess.ServeChain(chain, socket, readOnly: true)
            : NbdServerProcess.Start(PrlFuseCli.Binary, ["serve", chain.Bundle, "--socket", socket, "--read-only", "--max-connections", Cap.ToString(CultureInfo.InvariantCulture)], socket);
        int baseline = server.IdleSockets();

        var clients = new List<NbdTestClient>();
        int greeted = 0, closed = 0;
        try
        {
            for (int i = 0; i < 3 * Cap; i++)
            {
                var client = NbdTestClient.Connect(server.Address, TimeSpan.FromSeconds(3));
                clients.Add(client);
                try
                {
                    client.ReadGreeting();
                    greeted++;
                }
                catch (NbdClosedException)
                {
                    closed++;
                }
                catch (NbdTimeoutException)
                {
                    // queued by a server that stops accepting at its cap (qemu-nbd)
                }
            }

            output.WriteLine($"{greeted} greeted, {closed} closed of {clients.Count}");
            if (!NbdServerProcess.IsQemu)
            {
                Assert.Equal(Cap, greeted);
                Assert.Equal(2 * Cap, closed);
                var clock = System.Diagnostics.Stopwatch.StartNew();
                foreach (var client in clients)
                {
                    Assert.True(client.WaitForClose(TimeSpan.FromSeconds(30)), "a client that never finished the handshake was not dropped");
                }

                output.WriteLine($"idle clients dropped after {clock.Elapsed.TotalSeconds:0.0} s");
            }
        }
        finally
        {
            foreach (var client in clients)
            {
                client.Dispose();
            }
        }

        int after = server.WaitForSockets(baseline, TimeSpan.FromSeconds(10));
        Assert.True(after <= baseline, $"the server holds {after} sockets after the flood, {baseline} before");
        using var fresh = NbdTestClient.Connect(server.Address, TimeSpan.FromSeconds(30));
        fresh.Handshake();
        Assert.Equal(NbdWire.RepAck, fresh.Go("current"));
        var r = fresh.Transact(0, NbdWire.CmdRead, 1, 0, 65536);
        Assert.Equal(0u, r.Error);
        Assert.False(server.HasExited, server.Output);
    }

    /// <summary>
    /// Replays cases of a seed alone, PRLFUSE_NBD_FUZZ_REPLAY="SEED:INDEX[,INDEX...]" (a read-write server without TLS
    /// unless PRLFUSE_NBD_FUZZ_READ_ONLY=1, PRLFUSE_NBD_FUZZ_TLS=1); nothing when unset.
    /// </summary>
    [Fact]
    public void Replay_from_environment()
    {
        string? replay = Environment.GetEnvironmentVariable("PRLFUSE_NBD_FUZZ_REPLAY");
        if (string.IsNullOrEmpty(replay))
        {
            return;
        }

        var parts = replay.Split(':');
        int seed = int.Parse(parts[0], CultureInfo.InvariantCulture);
        using var temp = new TempFolder("nbd-replay");
        bool tls = Setting("TLS", 0) == 1;
        using var fixture = FuzzTarget.Start(temp, readOnly: Setting("READ_ONLY", 0) == 1, tls);
        var fuzzer = new NbdFuzzer(fixture.Server.Address, fixture.Exports, seed, TimeSpan.FromSeconds(Setting("TIMEOUT", 10)), tls);
        var findings = new List<string>();
        foreach (string index in parts[1].Split(','))
        {
            int i = int.Parse(index, CultureInfo.InvariantCulture);
            string? finding = fuzzer.RunCase(i);
            output.WriteLine($"case {i} ({fuzzer.KindOf(i)}): {finding ?? "no finding"}");
            if (finding is not null)
            {
                findings.Add(finding);
            }
        }

        Assert.False(fixture.Server.HasExited, fixture.Server.Output);
        Assert.Empty(findings);
    }
}

/// <summary>
/// A 2-level chain built by qemu, its oracle views, and the server serving it: export "current" (the top) and, from
/// prlfuse, one read-only export per snapshot named by its GUID.
/// </summary>
public sealed class FuzzTarget : IDisposable
{
    private readonly TempFolder _temp;
    private readonly QemuChain _chain;
    private readonly string _oracleFile;

    private readonly TestCertificates? _certs;

    private FuzzTarget(TempFolder temp, QemuChain chain, NbdServerProcess server, List<NbdFuzzExport> exports, string oracleFile, TestCertificates? certs)
    {
        _temp = temp;
        _chain = chain;
        Server = server;
        Exports = exports;
        _oracleFile = oracleFile;
        _certs = certs;
    }

    public NbdServerProcess Server { get; }

    /// <summary>"current" first.</summary>
    public IReadOnlyList<NbdFuzzExport> Exports { get; }

    /// <summary>With <paramref name="tls"/> the server has a certificate and requires TLS.</summary>
    public static FuzzTarget Start(TempFolder temp, bool readOnly, bool tls = false)
    {
        var certs = tls ? TestCertificates.Make(temp.Folder("tls")) : null;
        var chain = QemuChain.Build(temp.Folder("chain"), 2, [16384], seed: 41, predefinedTop: true);
        int top = chain.Levels.Count - 1;
        var exports = new List<NbdFuzzExport> { new("current", chain.OracleView(top, temp.Path)) };
        if (!NbdServerProcess.IsQemu)
        {
            for (int level = 0; level < top; level++)
            {
                exports.Add(new NbdFuzzExport(chain.Levels[level].Guid.ToString("B"), chain.OracleView(level, temp.Path)));
            }
        }

        string oracle = temp.Combine("current.raw");
        File.WriteAllBytes(oracle, exports[0].Content);
        var server = NbdServerProcess.ServeChain(chain, temp.Combine("nbd.sock"), readOnly, certs?.ServerDir);
        return new FuzzTarget(temp, chain, server, exports, oracle, certs);
    }

    /// <summary>Every export read whole by a fresh client of ours, and "current" compared by qemu-img through NBD.</summary>
    public void AssertServesOracle()
    {
        foreach (var export in Exports)
        {
            using var client = NbdTestClient.Connect(Server.Address, TimeSpan.FromSeconds(30), tls: _certs is not null);
            client.Handshake();
            client.StructuredReply();
            Assert.Equal(NbdWire.RepAck, client.Go(export.Name));
            Assert.Equal((ulong)export.Content.Length, client.Size);
            const int Piece = 1 << 20;
            for (int at = 0; at < export.Content.Length; at += Piece)
            {
                int length = Math.Min(Piece, export.Content.Length - at);
                var r = client.Transact(0, NbdWire.CmdRead, (ulong)at, (ulong)at, (uint)length);
                Assert.True(r.Error == 0, $"fresh client: error {r.Error} for {r} of {export.Name}");
                Assert.True(export.Content.AsSpan(at, length).SequenceEqual(r.Data), $"fresh client: {r} of {export.Name} differs from the oracle");
            }

            client.SendRequest(0, NbdWire.CmdDisc, 0, 0, 0);
            Assert.True(client.WaitForClose(TimeSpan.FromSeconds(30)), "no close after DISC");
        }

        string[] args = _certs is null
            ? ["compare", "-f", "raw", "-F", "raw", _oracleFile, $"nbd+unix:///current?socket={Server.Address}"]
            : ["compare", "--object", $"tls-creds-x509,id=tls0,dir={_certs.ClientDir},endpoint=client", "--image-opts", $"driver=raw,file.filename={_oracleFile}",
                $"driver=nbd,server.type=unix,server.path={Server.Address},export=current,tls-creds=tls0,tls-hostname=localhost"];
        var compare = ProcessRunner.Run("qemu-img", args, TimeSpan.FromMinutes(2), check: false);
        Assert.True(compare.ExitCode == 0, $"qemu-img compare of the oracle with current over NBD: exit {compare.ExitCode}\n{compare.Stdout}{compare.Stderr}");
    }

    /// <summary>After the server stopped: qemu-img check of every image is clean, and qemu reads the top as the oracle.</summary>
    public void AssertImagesClean()
    {
        for (int level = 0; level < _chain.Levels.Count; level++)
        {
            Qemu.AssertClean(Path.Combine(_chain.Bundle, _chain.Levels[level].Files[0]));
        }

        Assert.Equal(Exports[0].Content, _chain.OracleView(_chain.Levels.Count - 1, _temp.Path));
    }

    public void Dispose() => Server.Dispose();
}
