using PrlFuse.Core;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Management;
using Spectre.Console;

namespace PrlFuse.Cli.Commands;

/// <summary>
/// 'prlfuse snapshot delete', 'prlfuse snapshot switch' and 'prlfuse merge': present <see cref="SnapshotMerger"/> and
/// <see cref="SnapshotSwitcher"/>. The disk must be offline: a mount of it is named and refused before anything is
/// opened, and any other user is refused by the image locks. Merges show a progress bar on a terminal.
/// </summary>
internal static class SnapshotChangeCommands
{
    public static int Delete(SnapshotDeleteOptions o)
    {
        var guid = ParseGuid(o.Guid);
        RefuseMounted(o.Disk, "snapshot delete");
        WithProgress(progress => SnapshotMerger.Delete(o.Disk, guid, progress: progress));
        Console.Out.WriteLine($"deleted snapshot {DiskDescriptor.FormatGuid(guid)}");
        return Program.ExitOk;
    }

    public static int Switch(SnapshotSwitchOptions o)
    {
        var guid = ParseGuid(o.Guid);
        RefuseMounted(o.Disk, "snapshot switch");
        SwitchResult result = null!;
        WithProgress(progress => result = SnapshotSwitcher.Switch(o.Disk, guid, o.KeepCurrent, progress: progress));
        Console.Out.WriteLine($"the current state is now snapshot {DiskDescriptor.FormatGuid(guid)}'s content");
        if (result.Kept is { } kept)
        {
            Console.Out.WriteLine($"the previous current state is kept as snapshot {DiskDescriptor.FormatGuid(kept)}");
        }

        return Program.ExitOk;
    }

    public static int Merge(MergeOptions o)
    {
        RefuseMounted(o.Disk, "merge");
        int merged = 0;
        WithProgress(progress => merged = SnapshotMerger.Merge(o.Disk, progress: progress));
        Console.Out.WriteLine(merged == 0 ? "nothing to merge: the disk has no snapshots" : $"merged {merged} snapshot{(merged == 1 ? "" : "s")} into the current state");
        return Program.ExitOk;
    }

    /// <summary>A GUID with or without braces, any case.</summary>
    private static Guid ParseGuid(string text)
    {
        string t = text.Trim();
        return Guid.TryParseExact(t, "B", out var guid) || Guid.TryParseExact(t, "D", out guid) || Guid.TryParseExact(t, "N", out guid)
            ? guid
            : throw new PrlFuseException(null, $"\"{text}\" is not a snapshot GUID; 'prlfuse snapshot list' lists them");
    }

    /// <summary>A disk one of our mounts serves is refused with the mountpoint named (the image locks would refuse it too, in QEMU's words).</summary>
    private static void RefuseMounted(string disk, string operation)
    {
        IReadOnlyList<string> files;
        string source;
        try
        {
            source = DiskSource.Resolve(disk).Path;
            files = DiskSource.ImageFiles(disk, allowImagesOutsideBundle: false);
        }
        catch (PrlFuseException)
        {
            // The operation itself says what is wrong with the disk.
            return;
        }

        if (Output.InUse.OurMounts([source, .. files]) is [var mount, ..])
        {
            throw new PrlFuseException(disk, $"{operation} refused: the disk is {mount}; unmount it first");
        }
    }

    /// <summary>Runs <paramref name="run"/>, with a progress bar per step on stderr when it is a terminal.</summary>
    private static void WithProgress(Action<OperationProgress?> run)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
        if (Console.IsErrorRedirected || !console.Profile.Capabilities.Interactive)
        {
            run(null);
            return;
        }

        console.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new TransferSpeedColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                ProgressTask? task = null;
                string? current = null;
                run((step, done, total) =>
                {
                    if (step != current)
                    {
                        if (task is not null)
                        {
                            task.Value = task.MaxValue;
                        }

                        current = step;
                        task = ctx.AddTask(Markup.Escape(step), maxValue: Math.Max(1, total));
                    }

                    task!.MaxValue = Math.Max(1, total);
                    task.Value = done;
                });
            });
    }
}
