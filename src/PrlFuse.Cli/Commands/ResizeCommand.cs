using PrlFuse.Core.Management;

namespace PrlFuse.Cli.Commands;

/// <summary>'prlfuse resize DISK --size SIZE [--shrink]': presents <see cref="DiskResizer"/>.</summary>
internal static class ResizeCommand
{
    public static int Run(ResizeOptions o)
    {
        var spec = CommandTable.Find("resize");
        if (o.Size is null)
        {
            throw new Arguments.UsageException(spec, "missing --size SIZE (the new size: bytes, or with K, M, G, T)");
        }

        if (!Sizes.TryParse(o.Size, out long bytes) || bytes == 0)
        {
            throw new Arguments.UsageException(spec, $"--size \"{o.Size}\" is not a size (bytes, or with K, M, G, T: 10G)");
        }

        var options = new ManagementOptions { AllowImagesOutsideBundle = o.AllowOutsideImages };
        var result = ManagementProgress.Run(progress => DiskResizer.Resize(
            o.Disk,
            bytes,
            o.Shrink,
            options,
            progress is null ? null : (image, done, total) => progress($"moving clusters of {Path.GetFileName(image)}", done, total)));
        Console.Error.WriteLine(result.OldBytes == result.NewBytes
            ? $"prlfuse: {o.Disk} is already {Sizes.Human(result.NewBytes)}; nothing changed"
            : $"prlfuse: resized {o.Disk} from {Sizes.Human(result.OldBytes)} to {Sizes.Human(result.NewBytes)} ({result.Images} image{(result.Images == 1 ? "" : "s")})");
        return Program.ExitOk;
    }
}
