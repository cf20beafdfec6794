using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Export;
using Spectre.Console;

namespace PrlFuse.Cli.Commands;

/// <summary>
/// 'prlfuse export DISK [--snapshot GUID] -o OUT': presents <see cref="DiskExporter"/>. OUT "-" is standard output,
/// which then carries the disk's bytes only; every message goes to stderr.
/// </summary>
internal static class ExportCommand
{
    public const string StandardOutput = "-";

    public static int Run(ExportOptions o) =>
        Export(o.Disk, o.Snapshot, o.Output ?? throw new Arguments.UsageException(CommandTable.Find("export"), "missing -o/--output FILE (where to write the raw disk; - for standard output)"), o.CacheBytes, o.AllowOutsideImages, Console.OpenStandardOutput, Console.Error, o.ForceShare, o.DiskFormat);

    /// <summary>
    /// Exports snapshot <paramref name="snapshot"/> (null: the top) of <paramref name="disk"/> to <paramref name="output"/>
    /// through Core's exporter. <paramref name="openStdout"/> opens what "-" writes to (standard output; a test passes its
    /// own stream); <paramref name="messages"/> takes the progress bar (on a terminal only) and the final line: stderr.
    /// </summary>
    public static int Export(string disk, string? snapshot, string output, long cacheBytes, bool allowOutsideImages, Func<Stream> openStdout, TextWriter messages, bool forceShare = false, Core.Descriptor.DiskFormat format = Core.Descriptor.DiskFormat.Auto)
    {
        // A disk that a writer holds is refused (its image locks say so), unless --force-share: then it is copied as it is.
        using var opened = VirtualDisk.Open(disk, new DiskOpenOptions { CacheBytes = cacheBytes, AllowImagesOutsideBundle = allowOutsideImages, ForceShare = forceShare, Format = format });
        foreach (var held in opened.Storages.SelectMany(s => s.Images.Values).Where(l => l.InUseByOtherWriter))
        {
            messages.WriteLine($"prlfuse: warning: {held.Path} is being written by another process; the copy may be inconsistent");
        }

        var view = snapshot is null ? opened.Top : opened.GetView(snapshot);

        // The disk's own files, however the output reaches them (a symlink, a hard link), are never written.
        var own = opened.Storages.SelectMany(s => s.Images.Values).Select(l => l.Path).Append(opened.SourcePath);
        using var stdout = output == StandardOutput ? openStdout() : null;
        var destination = stdout is not null ? ExportDestination.ForStream(stdout) : ExportDestination.ForPath(output, own);

        string what = view.Internal is { } q ? $"internal snapshot {q.Id} \"{q.Name}\"" : $"snapshot {DiskDescriptor.FormatGuid(view.Id)}";
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(messages) });
        bool interactive = ReferenceEquals(messages, Console.Error) && !Console.IsErrorRedirected && console.Profile.Capabilities.Interactive;
        if (interactive)
        {
            console.Progress()
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new TransferSpeedColumn(), new RemainingTimeColumn())
                .Start(ctx =>
                {
                    var task = ctx.AddTask($"export {what}", maxValue: view.Size);
                    DiskExporter.Export(view, destination, done => task.Value = done);
                });
        }
        else
        {
            DiskExporter.Export(view, destination);
        }

        string where = destination.Kind == ExportTargetKind.Stream ? "standard output"
            : destination.Target == destination.Named ? destination.Named : $"{destination.Named} ({destination.Target})";
        messages.WriteLine($"prlfuse: wrote {Sizes.Human(view.Size)} {what} to {where}");
        return Program.ExitOk;
    }
}
