using PrlFuse.Core;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.Formats.Qcow2;

namespace PrlFuse.Cli.Commands;

/// <summary>
/// Opening a disk to serve it, as mount and serve do: read-write unless asked read-only. A top image that cannot be
/// written where it lies (mode 0444, a read-only filesystem, another user's file) is served read-only with the reason
/// said; one that must not be written (not closed cleanly, blocked by its header, with child snapshots) is refused
/// with what to do.
/// </summary>
internal static class DiskServing
{
    /// <param name="disk">The disk as the user named it (made absolute).</param>
    /// <param name="options">How to open it; its ReadOnly is taken from <paramref name="readOnly"/>.</param>
    /// <param name="readOnly">Asked read-only; set when the disk falls back to read-only.</param>
    /// <param name="command">The command, for the refusals' advice ("mount with --read-only").</param>
    /// <param name="top">What the top is called where it is served ("current.raw"), for the notice.</param>
    /// <param name="offersRepair">The command takes --repair, so the advice for an unclean image names it.</param>
    /// <param name="notices">Where the read-only notice goes.</param>
    public static VirtualDisk Open(string disk, DiskOpenOptions options, ref bool readOnly, string command, string top, bool offersRepair, TextWriter notices)
    {
        var opened = VirtualDisk.Open(disk, options with { ReadOnly = readOnly });
        if (!readOnly && opened.ReadOnlyPlaceReason is { } reason)
        {
            // A read-only medium or read-only image files: serve read-only and say so, rather than fail or write.
            opened.Dispose();
            readOnly = true;
            opened = VirtualDisk.Open(disk, options with { ReadOnly = true });
            string repairAdvice = offersRepair && opened.Top.Storages[0].TopLayer is Qcow2Image { Header: { IsDirty: true } or { IsCorrupt: true } }
                ? $"; '{command} --repair' repairs it first and serves it read-write"
                : "";
            notices.WriteLine($"prlfuse: notice: {reason}; serving read-only ({top} cannot be written){repairAdvice}");
        }

        try
        {
            RefuseUnwritableTop(opened, readOnly, disk, command, offersRepair);
        }
        catch
        {
            opened.Dispose();
            throw;
        }

        return opened;
    }

    /// <summary>A read-write open whose top cannot be written fails with what to do, never silently read-only.</summary>
    private static void RefuseUnwritableTop(VirtualDisk disk, bool readOnly, string diskArgument, string command, bool offersRepair)
    {
        if (readOnly || disk.Top.IsWritable)
        {
            return;
        }

        foreach (var storage in disk.Storages)
        {
            if (storage.Images[disk.Top.Id] is ExpandableImage { WasUnclean: true } image)
            {
                throw new PrlFuseException(image.Path, $"image was not closed cleanly (a crash or a killed writer); run 'prlfuse check --repair {diskArgument}' first, {(offersRepair ? $"{command} with --repair, or " : "or ")}{command} with --read-only");
            }

            if (storage.Images[disk.Top.Id] is ExpandableImage { WriteBlockedReason: { } reason } blocked)
            {
                throw new PrlFuseException(blocked.Path, $"{reason}; {command} with --read-only");
            }
        }

        if (disk.Tree.ChildrenOf(disk.Top.Id).Count > 0)
        {
            throw new PrlFuseException(disk.SourcePath, $"the top snapshot has child snapshots, so writing it would change them; {command} with --read-only");
        }

        throw new PrlFuseException(disk.SourcePath, $"the top snapshot's image cannot be opened for writing; {command} with --read-only");
    }
}
