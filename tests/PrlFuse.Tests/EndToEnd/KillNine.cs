using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Engine;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.EndToEnd;

/// <summary>
/// A management command killed with SIGKILL, and what must follow: <see cref="Next"/> gives the commands run after the
/// kill, one at a time (each sees what the one before left), every one of which must succeed; <see cref="MustFinish"/>
/// says they leave the new disk, not the old one.
/// </summary>
internal sealed record KilledCommand(Func<string, string[]> Command, Func<string, IEnumerable<string[]>> Next, bool MustFinish);

/// <summary>
/// Kills the installed binary running a management command on copies of a real bundle, at random moments: after a
/// random delay within an uninterrupted run's time, or (half the rounds) exactly at a random one of the write, sync,
/// truncate, rename and unlink calls the command makes (strace's fault injection delivers the SIGKILL there). After the
/// next commands, every view must equal QEMU's view of the same chain, every image must be clean for qemu-img check,
/// no image file may be left that the descriptor does not name, and the disk must be the old one or the new one.
/// </summary>
internal static class KillNine
{
    private const string Syscalls = "write,pwrite64,pwritev,fsync,fdatasync,ftruncate,fallocate,rename,renameat,renameat2,unlink,unlinkat";

    /// <summary>
    /// Runs <paramref name="rounds"/> killed runs of <paramref name="command"/> on copies of <paramref name="bundle"/>
    /// (left as it is). Returns how many rounds were killed before the command finished (a kill can come too late).
    /// </summary>
    public static int Run(string bundle, KilledCommand command, int seed, int rounds, string scratch)
    {
        var random = new Random(seed);
        var old = Hashes(bundle, scratch);

        // An uninterrupted run: the new disk, its time, and the calls a kill can land on.
        string timing = Path.Combine(scratch, "timing");
        TempFolder.CopyFiles(bundle, timing);
        string trace = Path.Combine(scratch, "trace.log");
        var clock = Stopwatch.StartNew();
        var full = ProcessRunner.Run("strace", ["-f", "-qq", "-o", trace, "-e", "trace=" + Syscalls, PrlFuseCli.Binary, .. command.Command(timing)], TimeSpan.FromMinutes(5), check: false);
        Assert.True(full.ExitCode == 0, full.Stdout + full.Stderr);
        var calls = MainThreadCalls(trace);
        clock.Restart();
        TempFolder.CopyFiles(bundle, Path.Combine(scratch, "timed"));
        Assert.Equal(0, PrlFuseCli.Run(command.Command(Path.Combine(scratch, "timed"))).ExitCode);
        long runMs = Math.Max(30, clock.ElapsedMilliseconds);
        Directory.Delete(Path.Combine(scratch, "timed"), recursive: true);
        var fresh = Hashes(timing, scratch);
        long freshBytes = ImageBytes(timing);
        Directory.Delete(timing, recursive: true);

        int killed = 0;
        for (int round = 0; round < rounds; round++)
        {
            string work = Path.Combine(scratch, $"round{round}");
            TempFolder.CopyFiles(bundle, work);
            string moment;
            int exit;
            if (round % 2 == 1 && calls.Count > 0)
            {
                var (name, count) = calls.ElementAt(random.Next(calls.Count));
                int nth = 1 + random.Next(count);
                moment = $"at {name} call {nth} of {count}";
                exit = ProcessRunner.Run("strace", ["-f", "-qq", "-o", "/dev/null", "-e", "trace=" + name, "-e", $"inject={name}:signal=KILL:when={nth}", PrlFuseCli.Binary, .. command.Command(work)], TimeSpan.FromMinutes(5), check: false).ExitCode;
            }
            else
            {
                int delay = random.Next(5, (int)runMs);
                moment = $"after {delay} ms of {runMs}";
                using var process = Process.Start(new ProcessStartInfo(PrlFuseCli.Binary, command.Command(work)) { RedirectStandardOutput = true, RedirectStandardError = true })!;
                Thread.Sleep(delay);
                process.Kill();
                process.WaitForExit();
                exit = process.ExitCode;
            }

            killed += exit == 0 ? 0 : 1;
            string context = $"round {round}, killed {moment} (exit {exit})";
            foreach (var next in command.Next(work))
            {
                var r = PrlFuseCli.Run(next);
                Assert.True(r.ExitCode == 0, $"{context}: prlfuse {string.Join(' ', next)} exited {r.ExitCode}: {r.Stdout}{r.Stderr}");
            }

            var now = Hashes(work, scratch);
            bool isOld = SameDisk(old, now);
            bool isNew = SameContent(fresh, now);
            Assert.True(isNew || (isOld && !command.MustFinish), $"{context}: the disk is {(isOld ? "the old one, not finished" : "neither the old one nor the new one")}: {Describe(now)}; old {Describe(old)}; new {Describe(fresh)}");
            if (command.MustFinish)
            {
                Assert.True(ImageBytes(work) <= freshBytes, $"{context}: the images take {ImageBytes(work)} bytes, {freshBytes} after an uninterrupted run");
            }

            AssertEveryImageCleanAndNamed(work, context);
            Directory.Delete(work, recursive: true);
        }

        return killed;
    }

    /// <summary>
    /// The SHA-256 of every snapshot's view, as QEMU reads the chain (--image-opts with backing options), checked equal
    /// to the one prlfuse reads. The current state's GUID is kept (<see cref="SnapshotTree.Top"/>) in the key
    /// <see cref="Guid.Empty"/> too, so that a disk is compared by its current state and its snapshots.
    /// </summary>
    public static Dictionary<Guid, string> Hashes(string bundle, string scratch)
    {
        string xml = Path.Combine(bundle, "DiskDescriptor.xml");
        var d = DescriptorParser.ParseFile(xml);
        var tree = SnapshotTree.Build(d, xml);
        var hashes = new Dictionary<Guid, string>();
        using var disk = Reopen.Retrying(() => VirtualDisk.Open(bundle, new DiskOpenOptions { CacheBytes = 0 }));
        var buffer = new byte[4 << 20];
        foreach (var guid in tree.Snapshots)
        {
            string raw = Path.Combine(scratch, "view.raw");
            Qemu.ConvertChain([.. tree.ChainOf(guid).Select(g => Path.Combine(bundle, d.Storages[0].FindImage(g)!.File))], raw);
            string qemu;
            using (var stream = File.OpenRead(raw))
            {
                Assert.Equal(d.DiskSizeBytes, stream.Length);
                qemu = Convert.ToHexString(SHA256.HashData(stream));
            }

            File.Delete(raw);
            using var ours = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            var view = disk.Views[guid];
            Assert.Equal(d.DiskSizeBytes, view.Size);
            for (long at = 0; at < view.Size; at += buffer.Length)
            {
                int n = (int)Math.Min(buffer.Length, view.Size - at);
                Assert.Equal(n, view.Read(buffer.AsSpan(0, n), at));
                ours.AppendData(buffer, 0, n);
            }

            Assert.True(qemu == Convert.ToHexString(ours.GetHashAndReset()), $"{bundle}: snapshot {guid:B} reads differently through prlfuse and QEMU");
            hashes[guid] = qemu;
        }

        hashes[Guid.Empty] = hashes[tree.Top];
        return hashes;
    }

    /// <summary>The same snapshots under the same GUIDs, each reading the same.</summary>
    private static bool SameDisk(Dictionary<Guid, string> a, Dictionary<Guid, string> b) =>
        a.Count == b.Count && a.All(kv => b.TryGetValue(kv.Key, out var h) && h == kv.Value);

    /// <summary>The same current state and the same snapshot contents, whatever GUIDs new snapshots got.</summary>
    private static bool SameContent(Dictionary<Guid, string> a, Dictionary<Guid, string> b) =>
        a[Guid.Empty] == b[Guid.Empty] && a.Values.Order(StringComparer.Ordinal).SequenceEqual(b.Values.Order(StringComparer.Ordinal));

    private static string Describe(Dictionary<Guid, string> hashes) =>
        string.Join(", ", hashes.Where(kv => kv.Key != Guid.Empty).Select(kv => $"{kv.Key.ToString()[..8]}={kv.Value[..8]}"));

    private static long ImageBytes(string bundle) => Directory.GetFiles(bundle, "*.hds").Sum(f => new FileInfo(f).Length);

    private static void AssertEveryImageCleanAndNamed(string bundle, string context)
    {
        var d = DescriptorParser.ParseFile(Path.Combine(bundle, "DiskDescriptor.xml"));
        var named = d.Storages.SelectMany(s => s.Images).Select(i => i.File).ToHashSet(StringComparer.Ordinal);
        foreach (string file in Directory.GetFiles(bundle, "*.hds").Select(f => Path.GetFileName(f)))
        {
            Assert.True(named.Contains(file), $"{context}: {file} is left, and the descriptor does not name it");
        }

        foreach (var image in d.Storages.SelectMany(s => s.Images).Where(i => i.Type == ImageType.Compressed))
        {
            var check = Qemu.Check(Path.Combine(bundle, image.File));
            Assert.True(check.ExitCode == 0, $"{context}: qemu-img check {image.File}: {check.Stdout}{check.Stderr}");
        }

        var ours = PrlFuseCli.Run("check", bundle);
        Assert.True(ours.ExitCode == 0, $"{context}: prlfuse check: {ours.Stdout}{ours.Stderr}");
    }

    /// <summary>How many times the traced process's main thread made each call (strace -f output, one call a line).</summary>
    private static Dictionary<string, int> MainThreadCalls(string trace)
    {
        var counts = new Dictionary<string, int>(StringComparer.Ordinal);
        string? main = null;
        foreach (string line in File.ReadLines(trace))
        {
            int space = line.IndexOf(' ', StringComparison.Ordinal);
            int paren = line.IndexOf('(', StringComparison.Ordinal);
            if (space < 0 || paren < space || line.Contains(" resumed>", StringComparison.Ordinal))
            {
                continue;
            }

            string pid = line[..space];
            main ??= pid;
            if (pid != main)
            {
                continue;
            }

            string name = line[(space + 1)..paren].Trim();
            counts[name] = counts.GetValueOrDefault(name) + 1;
        }

        return counts;
    }

    /// <summary>
    /// A chain of images written by qemu-io, one per entry of <paramref name="writes"/> (its qemu-io commands), root first;
    /// the last is the current state, with the predefined GUID.
    /// </summary>
    public static (string Bundle, Guid[] Guids) Chain(string folder, long sizeMiB, int clusterKiB, params string[][] writes)
    {
        string bundle = Path.Combine(folder, "big.hdd");
        Directory.CreateDirectory(bundle);
        var guids = writes.Select((_, i) => i == writes.Length - 1 ? DescriptorBuilder.PredefinedTop : Guid.NewGuid()).ToArray();
        long sectors = sizeMiB * 2048;
        var d = new DescriptorBuilder(sectors) { Cylinders = sectors / 32, Heads = 1, SectorsPerTrack = 32 };
        var storage = d.Storage(0, sectors);
        for (int i = 0; i < guids.Length; i++)
        {
            string file = $"big.hdd.0.{guids[i]:B}.hds";
            Qemu.Create(Path.Combine(bundle, file), sizeMiB.ToString(CultureInfo.InvariantCulture) + "M", clusterSize: $"{clusterKiB}k");
            Qemu.Write(Path.Combine(bundle, file), writes[i]);
            storage.Image(guids[i], "Compressed", file);
        }

        d.Chain(guids).WriteTo(bundle);
        return (bundle, guids);
    }
}
