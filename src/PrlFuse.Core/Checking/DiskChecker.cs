using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Formats.Parallels;

namespace PrlFuse.Core.Checking;

/// <summary>
/// Checks (or repairs) every image of a disk: a bundle folder, its DiskDescriptor.xml, or a bare .hds image.
/// Descriptor problems that <see cref="DescriptorParser"/> or <see cref="SnapshotTree"/> refuse, and missing or
/// unusable image files, are check errors; each expandable image goes through <see cref="ImageChecker"/>.
/// </summary>
public static class DiskChecker
{
    /// <summary>Called before each image: (image path, index, count).</summary>
    public delegate void ImageStarting(string path, int index, int count);

    /// <summary>Checks, or with <paramref name="repair"/> repairs, every image of the disk <paramref name="path"/> names.</summary>
    /// <param name="path">A bundle folder, its DiskDescriptor.xml, or a bare image.</param>
    /// <param name="repair">Repair what is found, then check again.</param>
    /// <param name="options">How each image is opened and progress told.</param>
    /// <param name="starting">Called before each image.</param>
    /// <param name="allowImagesOutsideBundle">Let relative image paths lead out of the bundle folder, as opening the disk does with it.</param>
    public static DiskCheckReport Check(string path, bool repair = false, ImageCheckOptions? options = null, ImageStarting? starting = null, bool allowImagesOutsideBundle = false)
    {
        options ??= new ImageCheckOptions();
        if (repair && options.ForceShare)
        {
            throw new PrlFuseException(null, "--force-share cannot be combined with --repair: a repair writes");
        }

        var diskProblems = new List<CheckProblem>();
        string source;
        DiskSourceKind kind;
        try
        {
            (source, kind) = DiskSource.Resolve(path);
        }
        catch (PrlFuseException e) when (Directory.Exists(path))
        {
            // A folder without a descriptor is a finding about the disk, reported like the others.
            source = e.File ?? Path.GetFullPath(path);
            diskProblems.Add(Error(source, CheckProblemKind.BadDescriptor, e.Problem));
            return new DiskCheckReport(source, diskProblems, [], repair ? [] : null);
        }

        if (kind == DiskSourceKind.Qcow2Image)
        {
            // "No errors" over a format the checker cannot read would be a false all-clear.
            throw new PrlFuseException(source, "prlfuse does not check qcow2 images yet; use 'qemu-img check'");
        }

        var images = new List<string>();
        if (kind == DiskSourceKind.ExpandableImage)
        {
            images.Add(source);
        }
        else if (kind == DiskSourceKind.Descriptor)
        {
            FindImages(source, allowImagesOutsideBundle, images, diskProblems);
        }

        // A bare raw image has no metadata to check.
        var reports = new List<ImageCheckReport>();
        var after = repair ? new List<ImageCheckReport>() : null;
        for (int i = 0; i < images.Count; i++)
        {
            starting?.Invoke(images[i], i, images.Count);
            try
            {
                if (repair)
                {
                    var result = ImageChecker.Repair(images[i], options);
                    reports.Add(result.Repair);
                    after!.Add(result.After);
                }
                else
                {
                    reports.Add(ImageChecker.Check(images[i], options));
                }
            }
            catch (ImageInUseException e)
            {
                // A repair (or a check that not even force-share lets in, which no writer causes): nothing was written.
                string what = repair ? $"image is in use: {e.Holder}; repair refused: close it first" : e.Problem;
                var refused = new ImageCheckReport(images[i], [new CheckProblem(images[i], CheckProblemKind.InUse, CheckSeverity.Error, "image", what)]);
                reports.Add(refused);
                after?.Add(refused);
            }
            catch (Exception e) when (e is PrlFuseException or IOException or UnauthorizedAccessException)
            {
                // One image that cannot be checked does not stop the others.
                string what = e is PrlFuseException p ? p.Problem : e.Message;
                var failed = new ImageCheckReport(images[i], [new CheckProblem(images[i], CheckProblemKind.BadImage, CheckSeverity.Error, "image", what)]);
                reports.Add(failed);
                after?.Add(failed);
            }
        }

        return new DiskCheckReport(source, diskProblems, reports, after);
    }

    /// <summary>
    /// The expandable images the descriptor lists (each once), with descriptor and file problems as errors: an image
    /// path opening the disk would refuse is never checked, let alone repaired.
    /// </summary>
    private static void FindImages(string descriptorPath, bool allowImagesOutsideBundle, List<string> images, List<CheckProblem> problems)
    {
        DiskDescriptor descriptor;
        try
        {
            descriptor = DescriptorParser.ParseFile(descriptorPath);
        }
        catch (PrlFuseException e)
        {
            problems.Add(Error(descriptorPath, CheckProblemKind.BadDescriptor, e.Problem));
            return;
        }

        try
        {
            SnapshotTree.Build(descriptor, descriptorPath);
        }
        catch (PrlFuseException e)
        {
            // The images are still worth checking: the descriptor names them.
            problems.Add(Error(descriptorPath, CheckProblemKind.BadDescriptor, e.Problem));
        }

        var resolver = new ImagePathResolver(descriptorPath, allowImagesOutsideBundle);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var storage in descriptor.Storages)
        {
            foreach (var image in storage.Images)
            {
                string file;
                try
                {
                    var resolved = resolver.Resolve(image.File);
                    file = resolved.Path;
                    if (resolved.Fallback is { } fallback)
                    {
                        problems.Add(new CheckProblem(descriptorPath, CheckProblemKind.BadDescriptor, CheckSeverity.Warning, "descriptor", fallback));
                    }
                }
                catch (ImagePathException e)
                {
                    var kind = e.Refusal switch
                    {
                        ImagePathRefusal.Missing => CheckProblemKind.MissingImage,
                        ImagePathRefusal.OutsideBundle => CheckProblemKind.BadDescriptor,
                        _ => CheckProblemKind.BadImage,
                    };
                    problems.Add(Error(descriptorPath, kind, e.Problem));
                    continue;
                }

                if (!seen.Add(file))
                {
                    continue;
                }

                if (image.Type == ImageType.Plain)
                {
                    long length = new FileInfo(file).Length;
                    if (length < storage.LengthBytes)
                    {
                        problems.Add(Error(file, CheckProblemKind.BadImage, $"raw image is {length} bytes, smaller than its storage ({storage.LengthBytes} bytes)"));
                    }

                    continue;
                }

                images.Add(file);
            }
        }
    }

    private static CheckProblem Error(string file, CheckProblemKind kind, string what) =>
        new(file, kind, CheckSeverity.Error, kind == CheckProblemKind.BadDescriptor ? "descriptor" : "image", what);
}
