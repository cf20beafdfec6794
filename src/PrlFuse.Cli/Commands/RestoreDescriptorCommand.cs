using PrlFuse.Core.Management;

namespace PrlFuse.Cli.Commands;

/// <summary>'prlfuse restore-descriptor FOLDER': presents <see cref="DescriptorRestorer"/>.</summary>
internal static class RestoreDescriptorCommand
{
    public static int Run(RestoreDescriptorOptions o)
    {
        var result = DescriptorRestorer.Restore(o.Folder);
        if (result.Written)
        {
            var image = result.Images[0];
            Console.Out.WriteLine($"wrote {result.DescriptorPath}: one {Sizes.Human(image.SizeBytes)} {image.Type} image {image.File}");
            return Program.ExitOk;
        }

        foreach (var image in result.Images)
        {
            string cluster = image.Type == Core.Descriptor.ImageType.Compressed ? $", {Sizes.Human(image.ClusterBytes)} clusters" : "";
            Console.Error.WriteLine($"  {image.File}: {image.Type}, disk size {Sizes.Human(image.SizeBytes)}{cluster}, file {Sizes.Human(image.FileBytes)}");
        }

        string found = result.Images.Count == 0 ? "no image files" : $"{result.Images.Count} image files (listed above)";
        Console.Error.WriteLine($"prlfuse: {result.DescriptorPath}: not written: found {found}; only a folder with exactly one image can be restored (the order of a chain was in the lost descriptor: restore it from DiskDescriptor.xml.Backup or a backup)");
        return Program.ExitError;
    }
}
