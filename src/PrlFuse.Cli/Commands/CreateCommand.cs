using PrlFuse.Core.Management;

namespace PrlFuse.Cli.Commands;

/// <summary>'prlfuse create DISK.hdd --size SIZE [--plain] [--cluster SIZE]': presents <see cref="BundleCreator"/>.</summary>
internal static class CreateCommand
{
    public static int Run(CreateOptions o)
    {
        long size = o.SizeBytes ?? throw new Arguments.UsageException(CommandTable.Find("create"), "missing --size SIZE (the disk's size: bytes, or with K, M, G, T)");
        string full = BundleCreator.Create(o.Disk, size, o.Plain, o.ClusterBytes);
        string kind = o.Plain ? "plain (preallocated)" : $"expandable, {Sizes.Human(o.ClusterBytes)} clusters";
        Console.Out.WriteLine($"created {full}: {Sizes.Human(size)} disk, {kind}");
        return Program.ExitOk;
    }

    /// <summary>--size: a positive whole number of sectors.</summary>
    public static long ParseSize(string text) =>
        Sizes.TryParse(text, out long bytes) && bytes > 0 && bytes % 512 == 0
            ? bytes
            : throw new FormatException("is not a disk size: a positive multiple of 512 bytes (examples: 64M, 10G, 1T)");

    /// <summary>--cluster: a size <see cref="Core.Formats.Parallels.ParallelsImageCreator"/> accepts.</summary>
    public static long ParseCluster(string text)
    {
        if (!Sizes.TryParse(text, out long bytes))
        {
            throw new FormatException("is not a size (examples: 64K, 1M)");
        }

        return Core.Formats.Parallels.ParallelsImageCreator.ClusterSizeProblem(bytes) is { } problem ? throw new FormatException(problem) : bytes;
    }
}
