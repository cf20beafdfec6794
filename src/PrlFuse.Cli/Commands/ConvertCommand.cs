using PrlFuse.Core.Convert;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Engine;
using Spectre.Console;

namespace PrlFuse.Cli.Commands;

/// <summary>
/// 'prlfuse convert SRC DST [--format F] [--snapshot ID] [--plain|--expanding] [--cluster SIZE]': presents
/// <see cref="DiskConverter"/>: one view of SRC flattened into a new image.
/// </summary>
internal static class ConvertCommand
{
    public static int Run(ConvertOptions o)
    {
        var spec = CommandTable.Find("convert");
        if (o.Destination.Length == 0)
        {
            throw new Arguments.UsageException(spec, "missing DST (the new image to write)");
        }

        var format = o.OutputFormat switch
        {
            "parallels" => ConvertFormat.Parallels,
            "qcow2" => ConvertFormat.Qcow2,
            "raw" => ConvertFormat.Raw,
            "qed" => ConvertFormat.Qed,
            null => DiskConverter.FormatFromName(o.Destination)
                ?? throw new Arguments.UsageException(spec, $"cannot tell the output format from the name {o.Destination}: give --format parallels, qcow2, qed or raw"),
            _ => throw new Arguments.UsageException(spec, "--format must be parallels, qcow2, qed or raw"),
        };
        if (o.Plain && o.Expanding)
        {
            throw new Arguments.UsageException(spec, "--plain and --expanding exclude each other");
        }

        if ((o.Plain || o.Expanding) && format != ConvertFormat.Parallels)
        {
            throw new Arguments.UsageException(spec, "--plain and --expanding are for Parallels output only");
        }

        if (o.ClusterBytes is { } cluster && DiskConverter.ClusterSizeProblem(format, cluster) is { } problem)
        {
            throw new Arguments.UsageException(spec, problem);
        }

        if (o.KeepSnapshots && (o.Snapshot is not null || o.Plain || format is not (ConvertFormat.Qcow2 or ConvertFormat.Parallels)))
        {
            throw new Arguments.UsageException(spec, "--keep-snapshots writes qcow2 or an expandable Parallels bundle, every snapshot: without --snapshot or --plain");
        }

        var options = new DiskOpenOptions { AllowImagesOutsideBundle = o.AllowOutsideImages, ForceShare = o.ForceShare, CacheBytes = 0 };
        using var opened = VirtualDisk.Open(o.Disk, options);
        if (o.KeepSnapshots)
        {
            return RunKeepingSnapshots(o, opened, options, format);
        }

        var view = o.Snapshot is null ? opened.Top : opened.GetView(o.Snapshot);
        string what = view.Internal is { } q ? $"internal snapshot {q.Id} \"{q.Name}\"" : $"snapshot {DiskDescriptor.FormatGuid(view.Id)}";
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
        string written;
        if (!Console.IsErrorRedirected && console.Profile.Capabilities.Interactive)
        {
            written = "";
            console.Progress()
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new TransferSpeedColumn(), new RemainingTimeColumn())
                .Start(ctx =>
                {
                    var task = ctx.AddTask($"convert {what}", maxValue: view.Size);
                    written = DiskConverter.Convert(view, o.Destination, format, o.ClusterBytes, o.Plain, done => task.Value = done);
                });
        }
        else
        {
            written = DiskConverter.Convert(view, o.Destination, format, o.ClusterBytes, o.Plain);
        }

        Console.Error.WriteLine($"prlfuse: wrote {Sizes.Human(view.Size)} {what} to {written} ({format.ToString().ToLowerInvariant()})");
        return Program.ExitOk;
    }

    private static int RunKeepingSnapshots(ConvertOptions o, VirtualDisk opened, DiskOpenOptions options, ConvertFormat format)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
        IReadOnlyList<string> written = [];
        if (!Console.IsErrorRedirected && console.Profile.Capabilities.Interactive)
        {
            console.Progress()
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new TransferSpeedColumn(), new RemainingTimeColumn())
                .Start(ctx =>
                {
                    var task = ctx.AddTask("convert every snapshot", maxValue: 1);
                    written = SnapshotTreeConverter.Convert(opened, options, o.Destination, format, o.ClusterBytes, (done, total) =>
                    {
                        task.MaxValue = total;
                        task.Value = done;
                    });
                });
        }
        else
        {
            written = SnapshotTreeConverter.Convert(opened, options, o.Destination, format, o.ClusterBytes);
        }

        Console.Error.WriteLine($"prlfuse: wrote every snapshot to {written[0]} ({format.ToString().ToLowerInvariant()}){(written.Count > 1 ? $" and {written.Count - 1} snapshot files beside it" : "")}");
        return Program.ExitOk;
    }
}
