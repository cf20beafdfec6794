using System.Diagnostics;
using System.Globalization;
using PrlFuse.Core.Checking;
using PrlFuse.Core.Engine;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.EndToEnd;

/// <summary>
/// kill -9 of the daemon in the middle of heavy writing, many times with different timing. After each kill the images
/// hold no corruption (only "not closed cleanly" and leaks), and every block whose fsync returned before the kill
/// reads back with its content.
/// </summary>
[Collection(FuseKernelCollection.Name)]
[Trait("Needs", "Kernel")]
[Trait("Needs", "Qemu")]
[Trait("Needs", "Installed")]
public sealed class CrashTests(Xunit.Abstractions.ITestOutputHelper output)
{
    private const int BlockBytes = 64 * 1024;
    private const int Blocks = 1024; // the verified region: the first 64 MiB

    [Fact]
    public void KillDashNineWhileWritingLosesNothingThatWasFsynced()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [256 * 2048], seed: 3);
        string mountpoint = temp.Combine("mnt");
        var random = new Random(17);

        // Expected content of each verified block: null = the chain's original content, empty = unknown (cut off).
        var expected = new byte[]?[Blocks];
        byte[] original = chain.OracleView(1, temp.Path)[..(Blocks * BlockBytes)];
        int rounds = 6;
        for (int round = 0; round < rounds; round++)
        {
            string source = temp.Combine($"source{round}.bin");
            var bytes = new byte[Blocks * BlockBytes];
            random.NextBytes(bytes);
            File.WriteAllBytes(source, bytes);
            string log = temp.Combine($"log{round}.txt");

            if (round > 0)
            {
                // After a kill the top is unclean: a plain read-write mount is refused and says what to do.
                var refused = PrlFuseCli.Run("mount", chain.Bundle, mountpoint);
                Assert.Equal(1, refused.ExitCode);
                Assert.Contains("prlfuse check --repair", refused.Stderr, StringComparison.Ordinal);
            }

            var mount = new PrlFuseMount(chain.Bundle, mountpoint, "--repair");
            Process syncWriter;
            Process bulkWriter;
            try
            {
                // The verified writer: one 64 KiB block at a time, fsync'd (conv=fsync), logged once dd returned.
                var order = Enumerable.Range(0, Blocks).OrderBy(_ => random.Next()).Take(400);
                string script = string.Join('\n', order.Select(b => string.Create(CultureInfo.InvariantCulture,
                    $"echo S {b} >> {log}; dd if={source} of={mount.Current} bs={BlockBytes} skip={b} seek={b} count=1 conv=notrunc,fsync status=none || exit 0; echo D {b} >> {log}")));
                syncWriter = Start("bash", "-c", script);

                // Heavy load beside it: large unsynced writes into the rest of the disk.
                bulkWriter = Start("bash", "-c", string.Create(CultureInfo.InvariantCulture,
                    $"for i in $(seq 1 400); do dd if=/dev/urandom of={mount.Current} bs=1M seek=$((64 + RANDOM % 190)) count=1 conv=notrunc status=none || exit 0; done"));

                Thread.Sleep(random.Next(300, 2500));
                ProcessRunner.Run("kill", "-KILL", mount.DaemonPid().ToString(CultureInfo.InvariantCulture));
                Assert.True(syncWriter.WaitForExit(30_000) && bulkWriter.WaitForExit(30_000), "writers did not stop after the kill");
            }
            finally
            {
                ProcessRunner.Run("fusermount3", ["-uz", mountpoint], check: false);
            }

            // Which blocks completed (fsync returned) and which were cut off mid-write.
            var lines = File.Exists(log) ? File.ReadAllLines(log) : [];
            var done = lines.Where(l => l.StartsWith('D')).Select(l => int.Parse(l[2..], CultureInfo.InvariantCulture)).ToHashSet();
            foreach (int b in lines.Where(l => l.StartsWith('S')).Select(l => int.Parse(l[2..], CultureInfo.InvariantCulture)))
            {
                expected[b] = done.Contains(b) ? bytes.AsSpan(b * BlockBytes, BlockBytes).ToArray() : [];
            }

            var report = AssertOnlyCrashMarks(chain.Bundle, $"round {round} (done {done.Count})");

            // Every fsync'd block reads back (the unclean image opens read-only).
            using var disk = VirtualDisk.Open(chain.Bundle);
            var buffer = new byte[BlockBytes];
            for (int b = 0; b < Blocks; b++)
            {
                if (expected[b] is { Length: 0 })
                {
                    continue; // cut off mid-write: either content is right
                }

                disk.Top.Read(buffer, (long)b * BlockBytes);
                var want = expected[b] ?? original.AsSpan(b * BlockBytes, BlockBytes).ToArray();
                Assert.True(want.AsSpan().SequenceEqual(buffer), $"round {round}: block {b} lost its fsync'd content");
            }

            Assert.True(done.Count > 0, "the writer completed no block before the kill: the round proves nothing");
            output.WriteLine($"round {round}: {done.Count} fsync'd blocks verified, {lines.Length / 2 - done.Count + (lines.Length % 2)} cut off, problems: {string.Join(", ", report.Images.SelectMany(i => i.Problems).Select(p => p.Kind).Distinct())}");
        }

        // Finally a repair leaves an image QEMU finds clean.
        Assert.Equal(0, PrlFuseCli.Run("check", chain.Bundle, "--repair").ExitCode);
        string top = Path.Combine(chain.Bundle, chain.Levels[1].Files[0]);
        var check = Qemu.Check(top);
        Assert.True(check.ExitCode == 0, check.Stdout + check.Stderr);
    }

    /// <summary>The disk after a kill: no corruption, only the crash's marks (not closed cleanly, leaked space).</summary>
    internal static DiskCheckReport AssertOnlyCrashMarks(string bundle, string when)
    {
        var report = DiskChecker.Check(bundle);
        var bad = report.Images.SelectMany(i => i.Problems)
            .Where(p => p.Kind is not (CheckProblemKind.NotClosedCleanly or CheckProblemKind.LeakedSpace) && p.Severity != CheckSeverity.Warning)
            .Concat(report.DiskProblems).ToList();
        Assert.True(bad.Count == 0, $"{when}: " + string.Join("; ", bad.Select(p => p.ToLine())));
        return report;
    }

    internal static Process Start(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }

        var p = Process.Start(psi)!;
        p.BeginErrorReadLine();
        p.BeginOutputReadLine();
        return p;
    }
}
