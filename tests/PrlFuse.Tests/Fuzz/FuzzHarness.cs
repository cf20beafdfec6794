using System.Diagnostics;
using System.Globalization;
using System.Text;
using PrlFuse.Core;
using PrlFuse.Core.Checking;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.Formats.Qed;
using PrlFuse.Core.Images;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Fuzz;

/// <summary>
/// One generated case: a seed's files after 1-4 mutations, and how to open them. Fully determined by
/// (run seed, index): <see cref="Generate"/> gives the same bytes every time, so a finding is reproduced from
/// those two numbers alone.
/// </summary>
public sealed record FuzzCase(
    int RunSeed,
    int Index,
    FuzzSeed Seed,
    IReadOnlyDictionary<string, byte[]> Files,
    bool OpenFolder,
    bool Write,
    long CacheBytes,
    int ExerciseSeed,
    IReadOnlyList<string> Mutations)
{
    public string Id => $"seed {RunSeed} case {Index} ({Seed.Name})";

    public static FuzzCase Generate(IReadOnlyList<FuzzSeed> seeds, int runSeed, int index)
    {
        var r = new Random(Mix(runSeed, index));
        var seed = seeds[r.Next(seeds.Count)];
        var files = seed.CopyFiles();
        var images = seed.ImageNames.ToList();
        var notes = new List<string>();
        int count = r.Next(10) switch
        {
            < 5 => 1,
            < 8 => 2,
            < 9 => 3,
            _ => 4,
        };
        for (int i = 0; i < count; i++)
        {
            string target = seed.IsBundle && r.Next(10) < 4 ? FuzzSeed.DescriptorName : images[r.Next(images.Count)];
            var bytes = files[target];
            string note = target == FuzzSeed.DescriptorName ? DescriptorMutator.Mutate(ref bytes, r)
                : target.EndsWith(".qcow2", StringComparison.Ordinal) ? Qcow2Mutator.Mutate(ref bytes, r)
                : target.EndsWith(".qed", StringComparison.Ordinal) ? QedMutator.Mutate(ref bytes, r, target)
                : ImageMutator.Mutate(ref bytes, r);
            files[target] = bytes;
            notes.Add($"{target}: {note}");
        }

        return new FuzzCase(runSeed, index, seed, files, seed.IsBundle && r.Next(2) == 0, r.Next(6) == 0, r.Next(3) == 0 ? 0 : 1 << 20, r.Next(), notes);
    }

    /// <summary>splitmix64 of (seed, index): independent streams per case, stable across processes.</summary>
    internal static int Mix(int seed, int index)
    {
        ulong z = ((ulong)(uint)seed << 32) | (uint)index;
        z += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return (int)(z ^ (z >> 31));
    }
}

public enum CaseOutcome
{
    /// <summary>Open threw a clean one-line PrlFuseException.</summary>
    Refused,

    /// <summary>Opened, and every read returned data or a clean IOException.</summary>
    Served,

    /// <summary>Anything else: a bug.</summary>
    Finding,
}

public sealed record CaseResult(CaseOutcome Outcome, string? Finding = null, string? Signature = null, long AllocatedBytes = 0, int IoErrors = 0, bool Wrote = false);

/// <summary>
/// Runs cases: writes a case's files into a folder on tmpfs, then opens and exercises them on a thread of their own
/// with a time limit (no hang) and an allocation limit (no header value drives allocation unchecked). Every check
/// that fails becomes a finding with the exception, its stack and the mutations that led there.
/// </summary>
public sealed class FuzzRunner : IDisposable
{
    private readonly TempFolder _root;
    private string _caseDir;
    private int _hung;

    public FuzzRunner(TimeSpan? timeout = null, long allocationLimit = 64L << 20)
    {
        Timeout = timeout ?? TimeSpan.FromSeconds(5);
        AllocationLimit = allocationLimit;
        _root = new TempFolder($"prlfuse-fuzz-{Environment.ProcessId}", Directory.Exists("/dev/shm") ? "/dev/shm" : null);
        _caseDir = NewCaseDir();
    }

    public TimeSpan Timeout { get; }

    public long AllocationLimit { get; }

    /// <summary>Threads still stuck in a hung case (they cannot be killed; they are background threads).</summary>
    public int HungThreads => _hung;

    public CaseResult Run(FuzzCase c)
    {
        foreach (string f in Directory.GetFiles(_caseDir))
        {
            File.Delete(f);
        }

        foreach (var (name, bytes) in c.Files)
        {
            File.WriteAllBytes(Path.Combine(_caseDir, name), bytes);
        }

        string path = c.OpenFolder ? _caseDir : Path.Combine(_caseDir, c.Seed.Entry);
        CaseResult? result = null;
        var thread = new Thread(() => result = Check(path, c)) { IsBackground = true, Name = "fuzz " + c.Id };
        thread.Start();
        if (!thread.Join(Timeout))
        {
            // The stuck thread keeps its folder; the next case gets a fresh one.
            _hung++;
            _caseDir = NewCaseDir();
            return new CaseResult(CaseOutcome.Finding, $"hang: no result after {Timeout.TotalSeconds} s", "hang");
        }

        return result!;
    }

    private string NewCaseDir() => Directory.CreateDirectory(_root.Combine("case-" + Guid.NewGuid().ToString("N")[..8])).FullName;

    private CaseResult Check(string path, FuzzCase c)
    {
        var random = new Random(c.ExerciseSeed);
        var buffer = new byte[(2 << 20) + 4096];
        var findings = new List<(string Text, string Signature)>();
        int ioErrors = 0;
        bool wrote = false;
        long before = GC.GetAllocatedBytesForCurrentThread();
        var options = new DiskOpenOptions { ReadOnly = !c.Write, CacheBytes = c.CacheBytes };
        VirtualDisk? disk = null;
        try
        {
            disk = VirtualDisk.Open(path, options);
        }
        catch (PrlFuseException e)
        {
            CheckMessage(e, "open", findings);
        }
        catch (Exception e)
        {
            findings.Add(Describe("open threw", e));
        }

        List<(long Offset, byte[] Data)>? written = null;
        if (disk is not null)
        {
            try
            {
                foreach (string w in disk.Warnings)
                {
                    if (w.Length == 0 || w.Contains('\n', StringComparison.Ordinal) || w.Contains('\r', StringComparison.Ordinal))
                    {
                        findings.Add(($"warning is not one line: \"{Escape(w)}\"", "multi-line warning"));
                    }
                }

                Exercise(disk, random, buffer, findings, ref ioErrors);
                if (c.Write && disk.Top.IsWritable)
                {
                    written = WriteSome(disk, random, findings, ref ioErrors);
                    wrote = written is not null;
                }
            }
            finally
            {
                try
                {
                    disk.Dispose();
                }
                catch (PrlFuseException e)
                {
                    CheckMessage(e, "dispose", findings);
                    ioErrors++;
                    written = null;
                }
                catch (Exception e)
                {
                    findings.Add(Describe("dispose threw", e));
                }
            }
        }

        if (written is { Count: > 0 })
        {
            VerifyAfterReopen(path, written, buffer, findings);
        }

        long checkAllocated = c.Write ? 0 : CheckImage(path, findings);
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before - checkAllocated;
        long limit = Math.Max(AllocationLimit, c.Seed.AllocationBudget);
        if (allocated > limit)
        {
            findings.Add(($"allocated {allocated >> 20} MiB (limit {limit >> 20} MiB)", "allocation"));
        }

        if (findings.Count > 0)
        {
            return new CaseResult(CaseOutcome.Finding, string.Join("\n", findings.Select(f => f.Text)), findings[0].Signature, allocated, ioErrors, wrote);
        }

        return new CaseResult(disk is null ? CaseOutcome.Refused : CaseOutcome.Served, null, null, allocated, ioErrors, wrote);
    }

    /// <summary>
    /// `prlfuse check` of a qcow2 or QED image (the reader opened the same bytes): a report, or a one-line refusal or
    /// I/O error; the qcow2 checker runs on every write case anyway (the write-hazard check), the QED one only here.
    /// A check reads every table of the file, so its budget is the reader's plus a multiple of the file's length (no
    /// header value may drive it further). Returns the bytes it allocated.
    /// </summary>
    private long CheckImage(string path, List<(string, string)> findings)
    {
        bool qcow2 = path.EndsWith(".qcow2", StringComparison.Ordinal);
        if (!qcow2 && !path.EndsWith(".qed", StringComparison.Ordinal))
        {
            return 0;
        }

        long before = GC.GetAllocatedBytesForCurrentThread();
        try
        {
            var report = qcow2 ? Qcow2Checker.Check(path) : QedChecker.Check(path);
            if (report.ExitCode is < 0 or > 3)
            {
                findings.Add(($"check returned exit code {report.ExitCode}", "check exit code"));
            }
        }
        catch (PrlFuseException e)
        {
            CheckMessage(e, "check", findings);
        }
        catch (IOException)
        {
            // A damaged image may fail to read; the check says so in one line.
        }
        catch (Exception e)
        {
            findings.Add(Describe("check threw", e));
        }

        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        long limit = AllocationLimit + (16 * new FileInfo(path).Length);
        if (allocated > limit)
        {
            findings.Add(($"check allocated {allocated >> 20} MiB (limit {limit >> 20} MiB)", "check allocation"));
        }

        return allocated;
    }

    /// <summary>Random reads over every view (and at the edges), allocation queries, the dirty bitmaps.</summary>
    private static void Exercise(VirtualDisk disk, Random random, byte[] buffer, List<(string, string)> findings, ref int ioErrors)
    {
        int v = 0;
        foreach (var view in disk.Views.Values.OrderBy(x => x.Id))
        {
            if (v++ >= 8)
            {
                break;
            }

            long size = view.Size;
            var reads = new List<(long Offset, int Length)> { (0, 65536), (Math.Max(0, size - 1), 1), (Math.Max(0, size - 70000), 140000), (size, 16), (long.MaxValue / 2, 8) };
            int count = view.IsTop ? 10 : 4;
            for (int i = 0; i < count; i++)
            {
                int length = random.Next(4) switch
                {
                    0 => random.Next(1, 600),
                    1 => random.Next(1, 70000),
                    2 => random.Next(1, 300000),
                    _ => random.Next(1, buffer.Length),
                };
                reads.Add((random.NextInt64(0, Math.Max(1, size)), length));
            }

            foreach (var (offset, length) in reads)
            {
                try
                {
                    int n = view.Read(buffer.AsSpan(0, length), offset);
                    long expect = offset >= size ? 0 : Math.Min(length, size - offset);
                    if (n != expect)
                    {
                        findings.Add(($"read of {length} at {offset} returned {n}, expected {expect}", "short read"));
                    }
                }
                catch (IOException)
                {
                    ioErrors++;
                }
                catch (Exception e)
                {
                    findings.Add(Describe($"read of {length} at {offset} of a {size}-byte view threw", e));
                }
            }

            try
            {
                for (int i = 0; i < 3; i++)
                {
                    long offset = random.NextInt64(0, Math.Max(1, size));
                    long run = view.GetAllocationStatus(offset, size - offset, out _);
                    if (run <= 0 || run > size - offset)
                    {
                        findings.Add(($"GetAllocationStatus({offset}) returned a run of {run}", "allocation status run"));
                    }
                }

                long allocatedBytes = view.CountAllocatedBytes();
                if (allocatedBytes < 0 || allocatedBytes > size)
                {
                    findings.Add(($"CountAllocatedBytes returned {allocatedBytes} for a {size}-byte view", "allocated count"));
                }
            }
            catch (IOException)
            {
                ioErrors++;
            }
            catch (Exception e)
            {
                findings.Add(Describe("allocation query threw", e));
            }
        }

        foreach (var storage in disk.Storages)
        {
            foreach (var layer in storage.Images.Values.OfType<ExpandableImage>())
            {
                try
                {
                    layer.DecodeDirtyClusters();
                }
                catch (IOException)
                {
                    ioErrors++;
                }
                catch (Exception e)
                {
                    findings.Add(Describe("DecodeDirtyClusters threw", e));
                }
            }
        }
    }

    /// <summary>A few writes to the top view (partial clusters, edges), each read back; null when a write failed.</summary>
    private static List<(long Offset, byte[] Data)>? WriteSome(VirtualDisk disk, Random random, List<(string, string)> findings, ref int ioErrors)
    {
        var view = disk.Top;
        var written = new List<(long Offset, byte[] Data)>();
        int count = random.Next(1, 5);
        for (int i = 0; i < count; i++)
        {
            long offset = random.Next(3) switch
            {
                0 => 0,
                1 => Math.Max(0, view.Size - random.Next(1, 100000)),
                _ => random.NextInt64(0, view.Size),
            };
            int length = (int)Math.Min(view.Size - offset, random.Next(1, 300000));
            var data = new byte[length];
            random.NextBytes(data);
            try
            {
                view.Write(data, offset);
                written.Add((offset, data));
            }
            catch (IOException)
            {
                ioErrors++;
                return null;
            }
            catch (Exception e)
            {
                findings.Add(Describe($"write of {length} at {offset} threw", e));
                return null;
            }
        }

        try
        {
            view.Flush();
        }
        catch (IOException)
        {
            ioErrors++;
            return null;
        }
        catch (Exception e)
        {
            findings.Add(Describe("flush threw", e));
            return null;
        }

        CompareWritten(view, written, findings, "after writing");
        return written;
    }

    /// <summary>Our own clean close must leave an image we open again, with what we wrote in it.</summary>
    private static void VerifyAfterReopen(string path, List<(long Offset, byte[] Data)> written, byte[] buffer, List<(string, string)> findings)
    {
        try
        {
            using var again = Reopen.Retrying(() => VirtualDisk.Open(path, new DiskOpenOptions { CacheBytes = 0 }));
            CompareWritten(again.Top, written, findings, "after reopening");
        }
        catch (PrlFuseException e)
        {
            findings.Add(($"image we wrote and closed is refused on reopening: {e.Message}", "refused after our write"));
        }
        catch (IOException e)
        {
            findings.Add(($"image we wrote and closed fails to read on reopening: {e.Message}", "io error after our write"));
        }
        catch (Exception e)
        {
            findings.Add(Describe("reopen after writing threw", e));
        }

        GC.KeepAlive(buffer);
    }

    private static void CompareWritten(SnapshotView view, List<(long Offset, byte[] Data)> written, List<(string, string)> findings, string when)
    {
        for (int i = 0; i < written.Count; i++)
        {
            var (offset, data) = written[i];

            // What the range must hold: this write, overlaid by every later one.
            var expected = (byte[])data.Clone();
            for (int j = i + 1; j < written.Count; j++)
            {
                var (o2, d2) = written[j];
                long from = Math.Max(offset, o2);
                long to = Math.Min(offset + data.Length, o2 + d2.Length);
                if (from < to)
                {
                    d2.AsSpan((int)(from - o2), (int)(to - from)).CopyTo(expected.AsSpan((int)(from - offset)));
                }
            }

            var actual = new byte[data.Length];
            try
            {
                view.Read(actual, offset);
            }
            catch (IOException e)
            {
                findings.Add(($"{when}: reading back {data.Length} bytes at {offset} failed: {e.Message}", "read-back io error"));
                continue;
            }

            int same = actual.AsSpan().CommonPrefixLength(expected);
            if (same != actual.Length)
            {
                findings.Add(($"{when}: {data.Length} bytes written at {offset} read back different at guest offset {offset + same}", "read-back mismatch"));
            }
        }
    }

    private static void CheckMessage(PrlFuseException e, string where, List<(string, string)> findings)
    {
        string m = e.Message;
        if (string.IsNullOrWhiteSpace(m) || string.IsNullOrWhiteSpace(e.Problem))
        {
            findings.Add(($"{where}: PrlFuseException with an empty message", "empty message"));
        }
        else if (m.Contains('\n', StringComparison.Ordinal) || m.Contains('\r', StringComparison.Ordinal))
        {
            findings.Add(($"{where}: error message is not one line: \"{Escape(m)}\"", "multi-line message"));
        }
    }

    private static (string, string) Describe(string what, Exception e)
    {
        var frames = new StackTrace(e, false).GetFrames();
        var core = frames.FirstOrDefault(f => f.GetMethod()?.DeclaringType?.Namespace?.StartsWith("PrlFuse.Core", StringComparison.Ordinal) == true);
        string at = core?.GetMethod() is { } m ? $"{m.DeclaringType?.Name}.{m.Name}" : "?";
        string stack = string.Join("\n", (e.StackTrace ?? string.Empty).Split('\n').Take(8).Select(l => "      " + l.Trim()));
        string message = e.Message.Length > 300 ? e.Message[..300] + "..." : e.Message;
        return ($"{what} {e.GetType().Name}: {Escape(message)}\n{stack}", $"{e.GetType().Name} at {at}");
    }

    private static string Escape(string s)
    {
        var sb = new StringBuilder(s.Length);
        foreach (char ch in s)
        {
            sb.Append(ch switch
            {
                '\n' => "\\n",
                '\r' => "\\r",
                < ' ' => $"\\x{(int)ch:x2}",
                _ => ch.ToString(CultureInfo.InvariantCulture),
            });
        }

        return sb.ToString();
    }

    /// <summary>Saves a case's files under <paramref name="folder"/>/&lt;id&gt; for a look by hand.</summary>
    public static string Save(FuzzCase c, CaseResult result, string folder)
    {
        string dir = Path.Combine(folder, $"seed{c.RunSeed}-case{c.Index}");
        Directory.CreateDirectory(dir);
        foreach (var (name, bytes) in c.Files)
        {
            File.WriteAllBytes(Path.Combine(dir, name), bytes);
        }

        File.WriteAllText(Path.Combine(dir, "FINDING.txt"), $"{c.Id}\nopen {(c.OpenFolder ? "folder" : c.Seed.Entry)}, write={c.Write}, cache={c.CacheBytes}\n{string.Join("\n", c.Mutations)}\n\n{result.Finding}\n");
        return dir;
    }

    public void Dispose()
    {
        if (_hung > 0)
        {
            // A stuck thread may still hold files open in its folder; leave them for the process exit.
            return;
        }

        _root.Dispose();
    }
}

/// <summary>Runs many cases and summarises them.</summary>
public sealed class FuzzCampaign
{
    private readonly Dictionary<string, (int Count, FuzzCase First, CaseResult Result)> _bySignature = new(StringComparer.Ordinal);

    /// <summary>Logs every case before it runs (PRLFUSE_FUZZ_VERBOSE=1), to find one that stops the run.</summary>
    public static bool Verbose { get; } = Environment.GetEnvironmentVariable("PRLFUSE_FUZZ_VERBOSE") == "1";

    public int Cases { get; private set; }

    public int Refused { get; private set; }

    public int Served { get; private set; }

    public int Wrote { get; private set; }

    public int IoErrors { get; private set; }

    public int Findings { get; private set; }

    public long MaxAllocated { get; private set; }

    public IReadOnlyDictionary<string, (int Count, FuzzCase First, CaseResult Result)> BySignature => _bySignature;

    public List<(FuzzCase Case, CaseResult Result)> FindingCases { get; } = [];

    public static FuzzCampaign Run(int runSeed, int count, Action<string>? log = null, string? saveFolder = null, int first = 0, IReadOnlyList<FuzzSeed>? seedSet = null)
    {
        var seeds = seedSet ?? FuzzSeeds.All;
        var campaign = new FuzzCampaign();
        using var runner = new FuzzRunner();
        var clock = Stopwatch.StartNew();
        for (int i = first; i < first + count; i++)
        {
            if (Verbose)
            {
                log?.Invoke($"case {i}");
            }

            var c = FuzzCase.Generate(seeds, runSeed, i);
            var result = runner.Run(c);
            campaign.Add(c, result);
            if (result.Outcome == CaseOutcome.Finding)
            {
                string saved = saveFolder is null ? string.Empty : " saved in " + FuzzRunner.Save(c, result, saveFolder);
                log?.Invoke($"FINDING {c.Id}{saved}\n  {string.Join("\n  ", c.Mutations)}\n  {result.Finding!.Replace("\n", "\n  ", StringComparison.Ordinal)}");
                if (runner.HungThreads >= 3)
                {
                    log?.Invoke("stopping: three cases hung");
                    break;
                }
            }

            if (log is not null && (i - first + 1) % 1000 == 0)
            {
                log($"{i - first + 1} cases in {clock.Elapsed.TotalSeconds:F0} s: {campaign.Summary}");
            }
        }

        return campaign;
    }

    public string Summary => $"{Cases} cases: {Refused} refused, {Served} served ({Wrote} with writes, {IoErrors} clean I/O errors), {Findings} findings in {_bySignature.Count} kinds, max allocation {MaxAllocated >> 20} MiB";

    private void Add(FuzzCase c, CaseResult r)
    {
        Cases++;
        IoErrors += r.IoErrors;
        MaxAllocated = Math.Max(MaxAllocated, r.AllocatedBytes);
        Wrote += r.Wrote ? 1 : 0;
        switch (r.Outcome)
        {
            case CaseOutcome.Refused:
                Refused++;
                break;
            case CaseOutcome.Served:
                Served++;
                break;
            default:
                Findings++;
                FindingCases.Add((c, r));
                string sig = r.Signature ?? "?";
                _bySignature[sig] = _bySignature.TryGetValue(sig, out var e) ? (e.Count + 1, e.First, e.Result) : (1, c, r);
                break;
        }
    }
}
