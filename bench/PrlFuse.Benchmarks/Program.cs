using System.Globalization;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;

namespace PrlFuse.Benchmarks;

public static class Program
{
    /// <summary>
    /// dotnet run -c Release --project bench/PrlFuse.Benchmarks -- --filter '*' [--artifacts DIR]
    /// After the run, prints the summary lines (see <see cref="SummaryLines"/>).
    /// </summary>
    public static void Main(string[] args)
    {
        var summaries = BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
        foreach (var summary in summaries)
        {
            foreach (string line in SummaryLines(summary))
            {
                Console.WriteLine(line);
            }
        }
    }

    /// <summary>
    /// Lines starting "in-process " (scripts/bench.sh collects them): throughput from the median time per 1 MiB read (steadier than the mean when other processes share the
    /// machine)
    /// (MB = 10^6 bytes); ratio = prlfuse / raw throughput (1 = as fast as the raw file, higher is better).
    /// </summary>
    private static IEnumerable<string> SummaryLines(Summary summary)
    {
        const string Raw = nameof(SequentialReadBenchmarks.RawFile);
        const string Cached = nameof(SequentialReadBenchmarks.PrlFuseCache64MiB);
        const string Uncached = nameof(SequentialReadBenchmarks.PrlFuseNoCache);
        const string Replay = nameof(SequentialReadBenchmarks.ImagePreadReplay);
        var inv = CultureInfo.InvariantCulture;
        if (Median(summary, Raw) is not { } raw)
        {
            yield break;
        }

        static double MBps(double nanoseconds) => (1 << 20) / (nanoseconds / 1e9) / 1e6;
        foreach (var (method, label) in new[] { (Cached, string.Empty), (Uncached, ", cache off") })
        {
            if (Median(summary, method) is { } ours)
            {
                yield return string.Format(inv, "in-process sequential 1 MiB reads{0}: prlfuse {1:F0} MB/s, raw file {2:F0} MB/s, ratio {3:F2}", label, MBps(ours), MBps(raw), raw / ours);
            }
        }

        if (Median(summary, Replay) is { } replay && Median(summary, Uncached) is { } uncached)
        {
            yield return string.Format(inv, "in-process engine overhead: prlfuse (cache off) / the same preads replayed on the image files {0:F2} (1 = none)", replay / uncached);
        }

        yield return string.Format(
            inv,
            "in-process bytes allocated per 1 MiB read: prlfuse {0} (cache 64 MiB), {1} (cache off), raw file {2}",
            Allocated(summary, Cached),
            Allocated(summary, Uncached),
            Allocated(summary, Raw));
    }

    private static double? Median(Summary summary, string method) => Report(summary, method)?.ResultStatistics?.Median;

    private static string Allocated(Summary summary, string method) =>
        Report(summary, method) is { } r && r.GcStats.GetBytesAllocatedPerOperation(r.BenchmarkCase) is { } bytes
            ? bytes.ToString(CultureInfo.InvariantCulture)
            : "?";

    private static BenchmarkReport? Report(Summary summary, string method) =>
        summary.Reports.FirstOrDefault(r => r.BenchmarkCase.Descriptor.WorkloadMethod.Name == method && r.Success);
}
