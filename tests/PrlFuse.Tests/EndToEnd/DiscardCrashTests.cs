using System.Globalization;
using PrlFuse.Core.Engine;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.EndToEnd;

/// <summary>
/// kill -9 of the daemon while discards (and writes) go on, several times with different timing, on an overlay whose
/// parent holds data everywhere under the verified region: a discarded range whose fsync returned before the kill reads
/// zeros afterwards (the parent's data does not come back), a cut-off operation leaves each page old or new, and the
/// images hold only the crash's marks.
/// </summary>
[Collection(FuseKernelCollection.Name)]
[Trait("Needs", "Kernel")]
[Trait("Needs", "Qemu")]
[Trait("Needs", "Installed")]
public sealed class DiscardCrashTests(Xunit.Abstractions.ITestOutputHelper output)
{
    private const int PageBytes = 4096;
    private const int VerifiedPages = 64 * 256; // the first 64 MiB

    private sealed record Operation(bool Discard, int Page, int Pages);

    [Fact]
    public void KillDashNineWhileDiscardingResurrectsNothingThatWasFsynced()
    {
        using var temp = new TempFolder();
        var chain = QemuChain.Build(temp.Path, 2, [256 * 2048], seed: 4);
        Qemu.Write(Path.Combine(chain.Bundle, chain.Levels[0].Files[0]), "write -P 90 0 64M");
        string mountpoint = temp.Combine("mnt");
        var random = new Random(29);
        const int verifiedBytes = VerifiedPages * PageBytes;
        byte[] expected = chain.OracleView(1, temp.Path)[..verifiedBytes];
        var source = new byte[verifiedBytes];
        string sourcePath = temp.Combine("source.bin");
        for (int round = 0; round < 5; round++)
        {
            random.NextBytes(source);
            File.WriteAllBytes(sourcePath, source);
            string log = temp.Combine($"log{round}.txt");
            var operations = Enumerable.Range(0, 300).Select(_ =>
            {
                int page = random.Next(VerifiedPages);
                return new Operation(random.Next(3) != 0, page, Math.Min(1 + random.Next(768), VerifiedPages - page));
            }).ToList();

            var mount = new PrlFuseMount(chain.Bundle, mountpoint, "--repair");
            try
            {
                // The verified worker: one discard (fallocate -p) or write at a time, each followed by an fsync of
                // current.raw (`sync FILE`), logged once that returned.
                string script = string.Join('\n', operations.Select((o, i) => string.Create(CultureInfo.InvariantCulture,
                    $"echo S {i} >> {log}; {Command(o, sourcePath, mount.Current)} || exit 0; sync {mount.Current} || exit 0; echo D {i} >> {log}")));
                var verified = CrashTests.Start("bash", "-c", script);

                // Unsynced discards and writes beside it, over the rest of the disk.
                var bulk = CrashTests.Start("bash", "-c", string.Create(CultureInfo.InvariantCulture,
                    $"for i in $(seq 1 400); do o=$((64 + RANDOM % 190)); if [ $((RANDOM % 2)) = 0 ]; then fallocate -p -o $((o * 1048576 + RANDOM)) -l $((RANDOM * 64)) {mount.Current} || exit 0; else dd if=/dev/urandom of={mount.Current} bs=1M seek=$o count=1 conv=notrunc status=none || exit 0; fi; done"));

                Thread.Sleep(random.Next(300, 2500));
                ProcessRunner.Run("kill", "-KILL", mount.DaemonPid().ToString(CultureInfo.InvariantCulture));
                Assert.True(verified.WaitForExit(30_000) && bulk.WaitForExit(30_000), "workers did not stop after the kill");
            }
            finally
            {
                ProcessRunner.Run("fusermount3", ["-uz", mountpoint], check: false);
            }

            // Operations whose fsync returned are in; one started after them may be cut off.
            var lines = File.Exists(log) ? File.ReadAllLines(log) : [];
            int done = lines.Count(l => l.StartsWith('D'));
            for (int i = 0; i < done; i++)
            {
                Apply(operations[i], source, expected);
            }

            CrashTests.AssertOnlyCrashMarks(chain.Bundle, $"round {round} (done {done})");
            using (var disk = VirtualDisk.Open(chain.Bundle))
            {
                var actual = new byte[verifiedBytes];
                disk.Top.Read(actual, 0);
                var cutOff = lines.Length > 2 * done ? operations[done] : null;
                for (int page = 0; page < VerifiedPages; page++)
                {
                    var got = actual.AsSpan(page * PageBytes, PageBytes);
                    var want = expected.AsSpan(page * PageBytes, PageBytes);
                    if (cutOff is not null && page >= cutOff.Page && page < cutOff.Page + cutOff.Pages)
                    {
                        // Cut off: this page is old or new, nothing else; from now on it is what it reads.
                        bool isNew = cutOff.Discard ? !got.ContainsAnyExcept((byte)0) : got.SequenceEqual(source.AsSpan(page * PageBytes, PageBytes));
                        Assert.True(isNew || got.SequenceEqual(want), $"round {round}: page {page} of the cut-off operation holds neither its old nor its new content");
                        got.CopyTo(want);
                        continue;
                    }

                    Assert.True(got.SequenceEqual(want), $"round {round}: page {page} lost its fsync'd content{(want.ContainsAnyExcept((byte)0) ? "" : " (discarded, reads data again)")}");
                }
            }

            Assert.True(done > 0, "no operation completed before the kill: the round proves nothing");
            output.WriteLine($"round {round}: {done} fsync'd operations ({operations.Take(done).Count(o => o.Discard)} discards) verified, cut off: {lines.Length > 2 * done}");
        }

        // A repair leaves images QEMU finds clean and reads as we do, the fsync'd zeros included.
        var repair = PrlFuseCli.Run("check", chain.Bundle, "--repair");
        Assert.True(repair.ExitCode == 0, repair.Stdout + repair.Stderr);
        Qemu.AssertClean(Path.Combine(chain.Bundle, chain.Levels[1].Files[0]));
        Assert.True(chain.OracleView(1, temp.Path).AsSpan(0, verifiedBytes).SequenceEqual(expected), "QEMU reads other bytes than the fsync'd ones");
        DiscardTests.AssertEveryViewIsQemus(chain, temp);
    }

    private static string Command(Operation o, string source, string current) => o.Discard
        ? string.Create(CultureInfo.InvariantCulture, $"fallocate -p -o {(long)o.Page * PageBytes} -l {(long)o.Pages * PageBytes} {current}")
        : string.Create(CultureInfo.InvariantCulture, $"dd if={source} of={current} bs={PageBytes} skip={o.Page} seek={o.Page} count={o.Pages} conv=notrunc status=none");

    private static void Apply(Operation o, byte[] source, byte[] expected)
    {
        var range = expected.AsSpan(o.Page * PageBytes, o.Pages * PageBytes);
        if (o.Discard)
        {
            range.Clear();
        }
        else
        {
            source.AsSpan(o.Page * PageBytes, o.Pages * PageBytes).CopyTo(range);
        }
    }
}
