using PrlFuse.Core.Checking;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Management;
using Spectre.Console;

namespace PrlFuse.Cli.Commands;

/// <summary>
/// 'prlfuse check DISK [--repair]': one line per problem (image file, kind, where, what), then a summary in
/// 'qemu-img check' words; exit 0 clean, 1 check error, 2 corruptions, 3 leaks only. A repair prints what it fixed,
/// checks again and exits by what is left.
/// </summary>
internal static class CheckCommand
{
    /// <summary>Images larger than this get a progress bar (when stderr is a terminal).</summary>
    private const long ProgressThresholdBytes = 1L << 30;

    public static int Run(CheckOptions o) => Run(o.Disk, o.Repair, Console.Out, Console.IsErrorRedirected, o.ForceShare, o.AllowOutsideImages);

    public static int Run(string disk, bool repair, TextWriter output, bool stderrRedirected = true, bool forceShare = false, bool allowOutsideImages = false)
    {
        if (repair && forceShare)
        {
            throw new Core.PrlFuseException(disk, "--repair writes the images, so it does not go with --force-share");
        }

        FinishInterruptedOperation(disk, repair, output);
        ReportOrphanImages(disk, repair, output);
        var (source, images) = FilesOf(disk, allowOutsideImages);
        foreach (var user in Output.InUse.OurMounts([disk, .. source is null ? Array.Empty<string>() : [source], .. images]))
        {
            output.WriteLine($"{disk}: in use, {user}" + (repair ? "; unmount it before a repair" : "; checked read-only as it is now"));
        }

        DiskCheckReport report;
        bool large = !stderrRedirected && AnsiConsole.Profile.Capabilities.Interactive && HasLargeImage(images);
        if (large)
        {
            var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
            report = console.Progress()
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                .Start(ctx =>
                {
                    ProgressTask? task = null;
                    var options = new ImageCheckOptions
                    {
                        ForceShare = forceShare,
                        Progress = (done, total) =>
                        {
                            if (task is not null)
                            {
                                task.MaxValue = Math.Max(1, total);
                                task.Value = done;
                            }
                        },
                    };
                    return DiskChecker.Check(disk, repair, options, allowImagesOutsideBundle: allowOutsideImages, starting: (path, _, _) =>
                    {
                        if (task is not null)
                        {
                            task.Value = task.MaxValue;
                        }

                        task = ctx.AddTask(Markup.Escape($"{(repair ? "repair" : "check")} {Path.GetFileName(path)}"));
                    });
                });
        }
        else
        {
            report = DiskChecker.Check(disk, repair, new ImageCheckOptions { ForceShare = forceShare }, allowImagesOutsideBundle: allowOutsideImages);
        }

        Print(report, output);
        return report.ExitCode;
    }

    /// <summary>
    /// A snapshot deletion a crash interrupted (its intent mark in the descriptor, see <see cref="IntentMark"/>): a repair
    /// finishes it before the images are checked; a plain check says so.
    /// </summary>
    private static void FinishInterruptedOperation(string disk, bool repair, TextWriter output)
    {
        string descriptor;
        IReadOnlyList<Guid> marked;
        try
        {
            var (full, kind) = DiskSource.Resolve(disk);
            if (kind != DiskSourceKind.Descriptor)
            {
                return;
            }

            descriptor = full;
            marked = IntentMark.Marked(DescriptorParser.ParseFile(full));
        }
        catch (Core.PrlFuseException)
        {
            // The checker says what is wrong with the descriptor.
            return;
        }

        if (marked.Count == 0)
        {
            return;
        }

        string which = string.Join(", ", marked.Select(DiskDescriptor.FormatGuid));
        if (!repair)
        {
            output.WriteLine($"{descriptor}: an interrupted operation is deleting snapshot {which}; 'prlfuse check --repair' or the next snapshot command finishes it");
            return;
        }

        SnapshotMerger.FinishInterrupted(descriptor);
        output.WriteLine($"{descriptor}: finished the interrupted deletion of snapshot {which}");
    }

    /// <summary>
    /// Image files in the bundle folder that the descriptor does not name (left by an interrupted snapshot command): a
    /// warning each, which leaves the exit code alone; a repair removes those that are unused Parallels images.
    /// </summary>
    private static void ReportOrphanImages(string disk, bool repair, TextWriter output)
    {
        IReadOnlyList<OrphanImage> orphans;
        try
        {
            var (full, kind) = DiskSource.Resolve(disk);
            orphans = kind == DiskSourceKind.Descriptor ? OrphanImages.Find(full) : [];
        }
        catch (Core.PrlFuseException)
        {
            // The checker says what is wrong with the disk itself.
            return;
        }

        if (!repair)
        {
            foreach (var orphan in orphans)
            {
                output.WriteLine($"{orphan.Path}: warning: orphan image ({orphan.Bytes} bytes), not named by the descriptor; 'prlfuse check --repair' removes it");
            }

            return;
        }

        foreach (var (orphan, kept) in OrphanImages.Remove(orphans))
        {
            output.WriteLine(kept is null ? $"{orphan.Path}: removed orphan image ({orphan.Bytes} bytes)" : $"{orphan.Path}: warning: orphan image ({orphan.Bytes} bytes) {kept}");
        }
    }

    /// <summary>The disk's descriptor (or bare image) and its image files as Core maps them, as far as they can be read.</summary>
    private static (string? Source, IReadOnlyList<string> Images) FilesOf(string disk, bool allowOutsideImages)
    {
        string? source = null;
        try
        {
            source = DiskSource.Resolve(disk).Path;
            return (source, DiskSource.ImageFiles(disk, allowOutsideImages));
        }
        catch (Core.PrlFuseException)
        {
            // The checker says what is wrong with the disk itself.
            return (source, []);
        }
    }

    private static bool HasLargeImage(IReadOnlyList<string> images)
    {
        try
        {
            return images.Any(f => new FileInfo(f).Length > ProgressThresholdBytes);
        }
        catch (IOException)
        {
            return false;
        }
    }

    internal static void Print(DiskCheckReport report, TextWriter output)
    {
        foreach (var p in report.DiskProblems)
        {
            output.WriteLine(p.ToLine());
        }

        var images = report.Images;
        foreach (var image in images)
        {
            // A repair lists what it fixed here and what is left after its fresh check below.
            foreach (var p in image.Problems.Where(p => report.After is null || p.Repaired || p.Severity == CheckSeverity.Warning))
            {
                output.WriteLine(p.ToLine());
            }
        }

        bool inUse = images.Concat(report.After ?? []).SelectMany(i => i.Problems).Any(p => p.Kind == CheckProblemKind.InUse);
        if (report.After is { } refusedAfter && inUse && report.RepairedCount == 0)
        {
            output.WriteLine("Repair refused: an image is in use (see below); nothing was written.");
            foreach (var p in refusedAfter.SelectMany(i => i.Problems).Where(p => p.Severity != CheckSeverity.Warning))
            {
                output.WriteLine(p.ToLine());
            }
        }
        else if (report.After is { } after2)
        {
            var after = after2;
            output.WriteLine($"Repaired {report.RepairedCount} problem{(report.RepairedCount == 1 ? "" : "s")} in {images.Count} image{(images.Count == 1 ? "" : "s")}; checking again.");
            foreach (var p in after.SelectMany(i => i.Problems).Where(p => p.Severity != CheckSeverity.Warning))
            {
                output.WriteLine(p.ToLine());
            }
        }

        int count = (report.After ?? images).Count;
        output.WriteLine($"Checked {count} image{(count == 1 ? "" : "s")} of {report.Source}.");
        if (report.Errors > 0)
        {
            output.WriteLine($"{report.Errors} check error{(report.Errors == 1 ? " was" : "s were")} found: the disk or an image could not be checked fully.");
        }

        if (report.Corruptions > 0)
        {
            output.WriteLine($"{report.Corruptions} error{(report.Corruptions == 1 ? " was" : "s were")} found on the images.");
            output.WriteLine("Data may be corrupted, or further writes to the image may corrupt it. 'prlfuse check --repair' fixes it.");
        }

        if (report.LeakedClusters > 0)
        {
            output.WriteLine($"{report.LeakedClusters} leaked cluster{(report.LeakedClusters == 1 ? " was" : "s were")} found on the images.");
            output.WriteLine("This means waste of disk space, but no harm to data.");
        }

        if (report.ExitCode == CheckExit.Clean)
        {
            output.WriteLine("No errors were found on the images.");
        }
    }
}
