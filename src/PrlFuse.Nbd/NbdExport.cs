using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Engine;
using PrlFuse.Nbd.Protocol;

namespace PrlFuse.Nbd;

/// <summary>One export: a name clients ask for, the snapshot it shows, and whether it may be written.</summary>
public sealed class NbdExport
{
    /// <summary>The name of the top snapshot's export, and what an empty name (the default export) means.</summary>
    public const string CurrentName = "current";

    public NbdExport(string name, SnapshotView view, bool readOnly, string description)
    {
        Name = name;
        View = view;
        ReadOnly = readOnly || !view.IsWritable;
        Description = description;
    }

    public string Name { get; }

    public SnapshotView View { get; }

    /// <summary>True for snapshots, and for the top when the disk was opened read-only or --read-only was given.</summary>
    public bool ReadOnly { get; }

    /// <summary>What NBD_OPT_LIST and NBD_INFO_DESCRIPTION show beside the name.</summary>
    public string Description { get; }

    public long Size => View.Size;

    /// <summary>
    /// The exports of a disk: <see cref="CurrentName"/> (the top, writable unless <paramref name="readOnly"/>), then
    /// every other snapshot by the name the mount gives its file (<c>{GUID}</c>, lower case, braces; a qcow2 internal
    /// snapshot's name or ID), read-only.
    /// </summary>
    public static IReadOnlyList<NbdExport> FromDisk(VirtualDisk disk, bool readOnly)
    {
        var exports = new List<NbdExport>
        {
            new(CurrentName, disk.Top, readOnly, readOnly || !disk.Top.IsWritable ? "the current state (read-only)" : "the current state"),
        };
        foreach (var view in disk.SnapshotViews)
        {
            exports.Add(new NbdExport(view.Name, view, readOnly: true, view.Internal is { } q ? $"internal snapshot {q.Id} \"{q.Name}\" (read-only)" : "snapshot (read-only)"));
        }

        return exports;
    }

    /// <summary>
    /// The transmission flags told for this export. Every connection shares one engine (one cache, and a flush makes
    /// every completed write durable whichever connection made it), so clients may spread their requests over several
    /// connections: CAN_MULTI_CONN, read-only or not.
    /// </summary>
    internal ushort TransmissionFlags(bool structuredReplies)
    {
        ushort flags = NbdTransmissionFlags.HasFlags | NbdTransmissionFlags.SendFlush | NbdTransmissionFlags.SendFua | NbdTransmissionFlags.CanMultiConn;
        flags |= ReadOnly
            ? NbdTransmissionFlags.ReadOnly
            : (ushort)(NbdTransmissionFlags.SendTrim | NbdTransmissionFlags.SendWriteZeroes);
        if (structuredReplies)
        {
            flags |= NbdTransmissionFlags.SendDf;
        }

        return flags;
    }
}
