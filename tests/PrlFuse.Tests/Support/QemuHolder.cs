using System.Diagnostics;
using System.Globalization;

namespace PrlFuse.Tests.Support;

/// <summary>
/// A qemu-io process that keeps an image open ('sleep 60000') and so holds QEMU's image locks on it, until disposed
/// (killed). <see cref="Start"/> returns once the locks are visible to another open file description.
/// </summary>
public sealed class QemuHolder : IDisposable
{
    private readonly Process _process;
    private readonly Task<string> _stderr;

    private QemuHolder(Process process)
    {
        _process = process;
        _stderr = process.StandardError.ReadToEndAsync();
        process.StandardOutput.ReadToEndAsync();
    }

    public int Pid => _process.Id;

    /// <param name="image">The image (qemu-io -f parallels), or with <paramref name="imageOpts"/> the --image-opts text.</param>
    /// <param name="readOnly">-r: a read-only user.</param>
    /// <param name="forceShare">-U: shares everything.</param>
    /// <param name="imageOpts">--image-opts: <paramref name="image"/> is an options text, not a file.</param>
    /// <param name="watch">The file whose locks show that qemu-io is ready (default: <paramref name="image"/>).</param>
    /// <param name="watchBytes">How many lock bytes on <paramref name="watch"/> mean ready (default: what QEMU 7.2 takes for the mode).</param>
    public static QemuHolder Start(string image, bool readOnly = false, bool forceShare = false, bool imageOpts = false, string? watch = null, int? watchBytes = null)
    {
        var psi = new ProcessStartInfo("qemu-io")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        if (imageOpts)
        {
            psi.ArgumentList.Add("--image-opts");
        }
        else
        {
            psi.ArgumentList.Add("-f");
            psi.ArgumentList.Add("parallels");
        }

        if (readOnly)
        {
            psi.ArgumentList.Add("-r");
        }

        if (forceShare)
        {
            psi.ArgumentList.Add("-U");
        }

        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add("sleep 60000");
        psi.ArgumentList.Add(image);
        var holder = new QemuHolder(Process.Start(psi) ?? throw new InvalidOperationException("cannot start qemu-io"));
        holder._process.StandardInput.Close();
        try
        {
            holder.WaitForLocks(watch ?? image, watchBytes ?? (forceShare ? 1 : readOnly ? 3 : 5));
        }
        catch
        {
            holder.Dispose();
            throw;
        }

        return holder;
    }

    /// <summary>Polls /proc/locks until the OFD locks on the file cover at least <paramref name="expectBytes"/> bytes.</summary>
    private void WaitForLocks(string file, int expectBytes)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (DateTime.UtcNow < deadline)
        {
            if (_process.HasExited)
            {
                throw new InvalidOperationException($"qemu-io exited {_process.ExitCode} before holding {file}: {_stderr.Result}");
            }

            if (ProcLocks.Bytes(file).Count >= expectBytes)
            {
                // Taken and checked; qemu-io is in its sleep (or about to be) with nothing more to lock.
                Thread.Sleep(50);
                return;
            }

            Thread.Sleep(20);
        }

        throw new TimeoutException($"qemu-io did not lock {file} in time");
    }

    public void Dispose()
    {
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
            }

            _process.WaitForExit();
        }
        finally
        {
            _process.Dispose();
        }
    }
}

/// <summary>The OFD locks /proc/locks shows on one file (by inode), as (start, end) byte ranges.</summary>
public static class ProcLocks
{
    public static long Inode(string path) =>
        long.Parse(ProcessRunner.Run("stat", "-L", "-c", "%i", path).Stdout.Trim(), CultureInfo.InvariantCulture);

    public static List<(long Start, long End)> Ranges(string path)
    {
        string suffix = ":" + Inode(path).ToString(CultureInfo.InvariantCulture);
        var ranges = new List<(long, long)>();
        foreach (string line in File.ReadAllLines("/proc/locks"))
        {
            // "1: OFDLCK ADVISORY  READ -1 fe:00:11657332 100 101"
            var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (f.Length >= 8 && f[1] == "OFDLCK" && f[5].EndsWith(suffix, StringComparison.Ordinal))
            {
                ranges.Add((long.Parse(f[6], CultureInfo.InvariantCulture), long.Parse(f[7], CultureInfo.InvariantCulture)));
            }
        }

        return ranges;
    }

    /// <summary>Every locked byte on the file, ascending.</summary>
    public static List<int> Bytes(string path) =>
        Ranges(path).SelectMany(r => Enumerable.Range((int)r.Start, (int)(r.End - r.Start + 1))).Order().ToList();
}
