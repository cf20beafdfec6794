using System.Globalization;
using Xunit.Abstractions;

namespace PrlFuse.Tests.Fuzz;

/// <summary>
/// The mutation fuzzer as tests: a fixed, count-based CI run (same cases every time), and a long run driven by
/// environment variables for `make fuzz` (scripts/fuzz.sh).
/// </summary>
public sealed class FuzzTests(ITestOutputHelper output)
{
    /// <summary>Cases of the CI run: about two minutes on two cores.</summary>
    public const int CiCases = 25000;

    public const int CiSeed = 20250101;

    [Fact]
    public void Seeds_are_valid_and_served()
    {
        using var runner = new FuzzRunner();
        foreach (var seed in FuzzSeeds.All)
        {
            foreach (bool write in new[] { false, true })
            {
                var c = new FuzzCase(0, 0, seed, seed.Files, false, write, 1 << 20, 1, []);
                var result = runner.Run(c);
                Assert.True(result.Outcome == CaseOutcome.Served, $"{seed.Name} (write={write}): {result.Outcome} {result.Finding}");
                Assert.Equal(0, result.IoErrors);
                Assert.Equal(write, result.Wrote);
            }
        }
    }

    /// <summary>
    /// Cases of the qcow2 CI run (a share of the 100,000 of a long run: make fuzz FUZZ_FORMAT=qcow2). Fewer than before
    /// read-only cases were also checked, so that the run takes about as long as it did.
    /// </summary>
    public const int Qcow2CiCases = 6500;

    /// <summary>The format of the long run and of a replay: PRLFUSE_FUZZ_FORMAT (parallels by default, qcow2 or qed).</summary>
    private static IReadOnlyList<FuzzSeed> EnvironmentSeeds => FuzzSeeds.ForFormat(Environment.GetEnvironmentVariable("PRLFUSE_FUZZ_FORMAT"));

    [Trait("Needs", "Qemu")]
    [Fact]
    public void Qcow2_seeds_are_valid_and_served()
    {
        using var runner = new FuzzRunner();
        foreach (var seed in FuzzSeeds.Qcow2)
        {
            var c = new FuzzCase(0, 0, seed, seed.Files, false, false, 1 << 20, 1, []);
            var result = runner.Run(c);
            Assert.True(result.Outcome == CaseOutcome.Served, $"{seed.Name}: {result.Outcome} {result.Finding}");
            Assert.Equal(0, result.IoErrors);
        }
    }

    [Trait("Needs", "Qemu")]
    [Trait("Needs", "Time")]
    [Fact]
    public void Qcow2_ci_run_has_no_findings()
    {
        var log = new List<string>();
        var campaign = FuzzCampaign.Run(CiSeed, Qcow2CiCases, log.Add, seedSet: FuzzSeeds.Qcow2);
        output.WriteLine(campaign.Summary);
        foreach (var (sig, (count, first, _)) in campaign.BySignature)
        {
            output.WriteLine($"  {count} x {sig} (first: {first.Id})");
        }

        Assert.True(campaign.Refused > Qcow2CiCases / 10, campaign.Summary);
        Assert.True(campaign.Served > Qcow2CiCases / 10, campaign.Summary);
        Assert.True(campaign.Findings == 0, campaign.Summary + "\n" + string.Join("\n", log.Where(l => l.StartsWith("FINDING", StringComparison.Ordinal)).Take(5)));
    }

    /// <summary>Cases of the QED CI run (a share of the 100,000 of a long run: make fuzz FUZZ_FORMAT=qed).</summary>
    public const int QedCiCases = 6000;

    [Trait("Needs", "Qemu")]
    [Fact]
    public void Qed_seeds_are_valid_and_served()
    {
        using var runner = new FuzzRunner();
        foreach (var seed in FuzzSeeds.Qed)
        {
            foreach (bool write in new[] { false, true })
            {
                var c = new FuzzCase(0, 0, seed, seed.Files, false, write, 1 << 20, 1, []);
                var result = runner.Run(c);
                Assert.True(result.Outcome == CaseOutcome.Served, $"{seed.Name} (write={write}): {result.Outcome} {result.Finding}");
                Assert.Equal(0, result.IoErrors);
                Assert.Equal(write, result.Wrote);
            }
        }
    }

    [Trait("Needs", "Qemu")]
    [Trait("Needs", "Time")]
    [Fact]
    public void Qed_ci_run_has_no_findings()
    {
        var log = new List<string>();
        var campaign = FuzzCampaign.Run(CiSeed, QedCiCases, log.Add, seedSet: FuzzSeeds.Qed);
        output.WriteLine(campaign.Summary);
        foreach (var (sig, (count, first, _)) in campaign.BySignature)
        {
            output.WriteLine($"  {count} x {sig} (first: {first.Id})");
        }

        Assert.True(campaign.Refused > QedCiCases / 10, campaign.Summary);
        Assert.True(campaign.Served > QedCiCases / 10, campaign.Summary);
        Assert.True(campaign.Wrote > QedCiCases / 100, campaign.Summary);
        Assert.True(campaign.Findings == 0, campaign.Summary + "\n" + string.Join("\n", log.Where(l => l.StartsWith("FINDING", StringComparison.Ordinal)).Take(5)));
    }

    [Fact]
    public void Cases_are_deterministic()
    {
        var seeds = FuzzSeeds.All;
        for (int i = 0; i < 50; i++)
        {
            var a = FuzzCase.Generate(seeds, 7, i);
            var b = FuzzCase.Generate(seeds, 7, i);
            Assert.Equal(a.Seed.Name, b.Seed.Name);
            Assert.Equal(a.Mutations, b.Mutations);
            foreach (var (name, bytes) in a.Files)
            {
                Assert.Equal(bytes, b.Files[name]);
            }
        }
    }

    [Trait("Needs", "Time")]
    [Fact]
    public void Ci_run_has_no_findings()
    {
        var log = new List<string>();
        var campaign = FuzzCampaign.Run(CiSeed, CiCases, log.Add);
        output.WriteLine(campaign.Summary);
        foreach (var (sig, (count, first, _)) in campaign.BySignature)
        {
            output.WriteLine($"  {count} x {sig} (first: {first.Id})");
        }

        foreach (string line in log.Take(20))
        {
            output.WriteLine(line);
        }

        // Both outcomes must be common, or the mutations are too weak (everything refused) or too tame (nothing is).
        Assert.True(campaign.Refused > CiCases / 10, campaign.Summary);
        Assert.True(campaign.Served > CiCases / 10, campaign.Summary);
        Assert.True(campaign.Wrote > CiCases / 100, campaign.Summary);
        Assert.True(campaign.Findings == 0, campaign.Summary + "\n" + string.Join("\n", log.Where(l => l.StartsWith("FINDING", StringComparison.Ordinal)).Take(5)));
    }

    /// <summary>
    /// Replays one case, PRLFUSE_FUZZ_REPLAY="SEED:INDEX", with a long time limit and the time it took. Does nothing
    /// when unset.
    /// </summary>
    [Fact]
    public void Replay_from_environment()
    {
        string? replay = Environment.GetEnvironmentVariable("PRLFUSE_FUZZ_REPLAY");
        if (string.IsNullOrEmpty(replay))
        {
            return;
        }

        var parts = replay.Split(':');
        var c = FuzzCase.Generate(EnvironmentSeeds, int.Parse(parts[0], CultureInfo.InvariantCulture), int.Parse(parts[1], CultureInfo.InvariantCulture));
        using var runner = new FuzzRunner(TimeSpan.FromMinutes(2));
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var result = runner.Run(c);
        output.WriteLine($"{c.Id}: {result.Outcome} in {clock.ElapsedMilliseconds} ms, allocated {result.AllocatedBytes >> 10} KiB\n{string.Join("\n", c.Mutations)}\n{result.Finding}");
        Assert.True(result.Outcome != CaseOutcome.Finding, result.Finding);
    }

    /// <summary>
    /// `make fuzz`: PRLFUSE_FUZZ_COUNT cases from PRLFUSE_FUZZ_SEED, progress and findings appended to
    /// PRLFUSE_FUZZ_REPORT, finding inputs saved under PRLFUSE_FUZZ_SAVE. Does nothing when PRLFUSE_FUZZ_COUNT is unset.
    /// </summary>
    [Fact]
    public void Long_run_from_environment()
    {
        string? countText = Environment.GetEnvironmentVariable("PRLFUSE_FUZZ_COUNT");
        if (string.IsNullOrEmpty(countText))
        {
            return;
        }

        int count = int.Parse(countText, CultureInfo.InvariantCulture);
        int seed = int.Parse(Environment.GetEnvironmentVariable("PRLFUSE_FUZZ_SEED") ?? "1", CultureInfo.InvariantCulture);
        int first = int.Parse(Environment.GetEnvironmentVariable("PRLFUSE_FUZZ_FIRST") ?? "0", CultureInfo.InvariantCulture);
        string? report = Environment.GetEnvironmentVariable("PRLFUSE_FUZZ_REPORT");
        string? save = Environment.GetEnvironmentVariable("PRLFUSE_FUZZ_SAVE");
        void Log(string line)
        {
            output.WriteLine(line);
            if (report is not null)
            {
                File.AppendAllText(report, line + "\n");
            }
        }

        var seeds = EnvironmentSeeds;
        Log($"fuzz: seed {seed}, cases {first}..{first + count - 1}, {seeds.Count} seeds ({seeds[0].Name} ...)");
        var campaign = FuzzCampaign.Run(seed, count, Log, save, first, seeds);
        Log($"cases run: {campaign.Cases}, findings: {campaign.Findings}");
        Log(campaign.Summary);
        foreach (var (sig, (n, firstCase, _)) in campaign.BySignature)
        {
            Log($"  {n} x {sig} (first: {firstCase.Id})");
        }

        Assert.True(campaign.Findings == 0, campaign.Summary);
    }
}
