using PrlFuse.Core.Management;

namespace PrlFuse.Cli.Commands;

/// <summary>'prlfuse compact DISK': presents <see cref="DiskCompactor"/>.</summary>
internal static class CompactCommand
{
    public static int Run(CompactOptions o)
    {
        var options = new ManagementOptions { AllowImagesOutsideBundle = o.AllowOutsideImages };
        var result = ManagementProgress.Run(progress => DiskCompactor.Compact(
            o.Disk,
            options,
            progress is null ? null : (image, phase, done, total) => progress($"{(phase == "scan" ? "scanning" : "moving")} {Path.GetFileName(image)}", done, total)));
        foreach (var image in result.Images)
        {
            Console.Error.WriteLine($"prlfuse: {image.Path}: {Sizes.Human(image.BytesBefore)} -> {Sizes.Human(image.BytesAfter)} ({image.ClustersDropped} zero clusters released, {image.ClustersMoved} moved)");
        }

        Console.Error.WriteLine($"prlfuse: compacted {o.Disk}: {Sizes.Human(result.BytesBefore)} -> {Sizes.Human(result.BytesAfter)}");
        return Program.ExitOk;
    }
}
