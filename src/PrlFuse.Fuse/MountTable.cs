namespace PrlFuse.Fuse;

/// <summary>What the kernel says about mounts and loop devices (procfs and sysfs), for clear messages.</summary>
public static class MountTable
{
    /// <summary>The filesystem type mounted exactly at <paramref name="mountpoint"/>, or null.</summary>
    public static string? FileSystemTypeAt(string mountpoint)
    {
        string target = Path.TrimEndingDirectorySeparator(Path.GetFullPath(mountpoint));
        foreach (var line in File.ReadLines("/proc/self/mountinfo"))
        {
            // id parent major:minor root mountpoint options [optional...] - fstype source superoptions
            var parts = line.Split(' ');
            if (parts.Length < 5 || Unescape(parts[4]) != target)
            {
                continue;
            }

            int dash = Array.IndexOf(parts, "-");
            return dash > 0 && dash + 1 < parts.Length ? parts[dash + 1] : "unknown";
        }

        return null;
    }

    /// <summary>Loop devices whose backing file lies under <paramref name="folder"/>, with that file.</summary>
    public static IReadOnlyList<(string Device, string BackingFile)> LoopDevicesUnder(string folder)
    {
        string prefix = Path.TrimEndingDirectorySeparator(Path.GetFullPath(folder)) + "/";
        var result = new List<(string, string)>();
        if (!Directory.Exists("/sys/block"))
        {
            return result;
        }

        foreach (var dir in Directory.GetDirectories("/sys/block", "loop*"))
        {
            string file = Path.Combine(dir, "loop", "backing_file");
            try
            {
                if (File.Exists(file))
                {
                    string backing = File.ReadAllText(file).Trim();
                    if (backing.StartsWith(prefix, StringComparison.Ordinal))
                    {
                        result.Add(("/dev/" + Path.GetFileName(dir), backing));
                    }
                }
            }
            catch (IOException)
            {
                // The device went away while we looked.
            }
        }

        return result;
    }

    internal static string Unescape(string field) =>
        field.Replace("\\040", " ", StringComparison.Ordinal).Replace("\\011", "\t", StringComparison.Ordinal)
             .Replace("\\012", "\n", StringComparison.Ordinal).Replace("\\134", "\\", StringComparison.Ordinal);
}
