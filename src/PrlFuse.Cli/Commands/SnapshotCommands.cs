using System.Text.Json;
using System.Text.Json.Nodes;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Engine;
using PrlFuse.Core;
using PrlFuse.Core.Management;
using PrlFuse.Fuse;

namespace PrlFuse.Cli.Commands;

/// <summary>'prlfuse snapshot list' and 'prlfuse snapshot create': present <see cref="SnapshotLister"/> and <see cref="SnapshotCreator"/>.</summary>
internal static class SnapshotCommands
{
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    public static int List(SnapshotListOptions o) => List(o, Console.Out);

    public static int List(SnapshotListOptions o, TextWriter output)
    {
        // Only the descriptor and the images' headers and tables are read: a disk another process writes (a read-write
        // mount) is listed as it is now, without -U.
        using var disk = Output.InUse.OpenToDescribe(o.Disk, new DiskOpenOptions { CacheBytes = 0, AllowImagesOutsideBundle = o.AllowOutsideImages, ForceShare = o.ForceShare, Format = o.DiskFormat });
        var entries = SnapshotLister.List(disk);
        if (o.Json)
        {
            var root = new JsonObject
            {
                ["disk"] = disk.SourcePath,
                ["current"] = DiskDescriptor.FormatGuid(disk.Tree.Top),
                ["snapshots"] = new JsonArray([.. entries.Select(e => (JsonNode?)new JsonObject
                {
                    ["guid"] = DiskDescriptor.FormatGuid(e.Guid),
                    ["parent"] = e.Parent == Guid.Empty ? null : DiskDescriptor.FormatGuid(e.Parent),
                    ["depth"] = e.Depth,
                    ["current"] = e.IsCurrent,
                    ["name"] = e.Name,
                    ["description"] = e.Description,
                    ["images"] = new JsonArray([.. e.Images.Select(i => (JsonNode?)new JsonObject
                    {
                        ["storage"] = i.Storage,
                        ["file"] = i.File,
                        ["type"] = i.Type.ToString(),
                        ["allocatedBytes"] = i.AllocatedBytes,
                    })]),
                })]),
            };
            output.WriteLine(root.ToJsonString(Indented));
            return Program.ExitOk;
        }

        foreach (var e in entries)
        {
            string indent = new(' ', 2 * e.Depth);
            string label = e.IsCurrent ? "  (current state)" : e.Name is { Length: > 0 } n ? $"  \"{n}\"" : "";
            output.WriteLine($"{indent}{DiskDescriptor.FormatGuid(e.Guid)}{label}");
            if (e.Description is { Length: > 0 } description)
            {
                output.WriteLine($"{indent}    description: {description}");
            }

            foreach (var i in e.Images)
            {
                output.WriteLine($"{indent}    {i.File} ({i.Type}, {Sizes.Human(i.AllocatedBytes)} allocated)");
            }
        }

        return Program.ExitOk;
    }

    /// <summary>How long a live snapshot may take: the daemon first flushes what the mount has written.</summary>
    private static readonly TimeSpan LiveSnapshotTimeout = TimeSpan.FromMinutes(10);

    public static int Create(SnapshotCreateOptions o)
    {
        if (MountOf(o.Disk, o.AllowOutsideImages) is { } mount)
        {
            Console.Out.WriteLine(CreateLive(mount, o.Name));
            return Program.ExitOk;
        }

        var guid = SnapshotCreator.Create(o.Disk, o.Name, allowImagesOutsideBundle: o.AllowOutsideImages);
        Console.Out.WriteLine(DiskDescriptor.FormatGuid(guid));
        return Program.ExitOk;
    }

    /// <summary>Our mount serving the disk, or null (also when the disk cannot be resolved: the offline command says why).</summary>
    private static PrlFuseMountInfo? MountOf(string disk, bool allowOutsideImages)
    {
        try
        {
            string source = DiskSource.Resolve(disk).Path;
            var files = DiskSource.ImageFiles(disk, allowOutsideImages);
            return MountRegistry.MountsUsing([source, .. files]).FirstOrDefault();
        }
        catch (PrlFuseException)
        {
            return null;
        }
    }

    /// <summary>A snapshot of a mounted disk, taken by the daemon serving it: its GUID.</summary>
    private static string CreateLive(PrlFuseMountInfo mount, string? name)
    {
        string what = Output.InUse.Describe(mount);
        string unmount = $"'prlfuse unmount {mount.Mountpoint}'";
        if (mount.ReadOnly)
        {
            throw new PrlFuseException(mount.Mountpoint, $"snapshot create refused: the disk is {what}, and only a read-write mount takes snapshots; unmount it first ({unmount})");
        }

        if (mount.DaemonPid is not { } pid || ControlSocket.Find(pid) is not { } socket)
        {
            throw new PrlFuseException(mount.Mountpoint, $"snapshot create refused: the disk is {what}, and that daemon takes no snapshots (started by an older prlfuse?); unmount it ({unmount}), then snapshot it or mount it again with this prlfuse");
        }

        ControlReply reply;
        try
        {
            reply = ControlSocket.Ask(socket, ControlSocket.SnapshotCreate, name, LiveSnapshotTimeout);
        }
        catch (Exception e) when (e is System.Net.Sockets.SocketException or IOException)
        {
            throw new PrlFuseException(mount.Mountpoint, $"snapshot create failed: the daemon serving this mount (PID {pid}) does not answer on {socket} ({e.Message}); see its log, or unmount it ({unmount}) and snapshot it offline", e);
        }

        return reply.Ok ? reply.Text : throw new PrlFuseException(null, reply.Text);
    }

    /// <summary>--name: one line of text a descriptor can hold.</summary>
    public static string ParseName(string text) =>
        text.Any(char.IsControl) || !IsValidUtf16(text)
            ? throw new FormatException("must be one line of text without control characters")
            : text;

    private static bool IsValidUtf16(string text)
    {
        for (int i = 0; i < text.Length; i++)
        {
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                i++;
            }
            else if (char.IsSurrogate(text[i]))
            {
                return false;
            }
        }

        return true;
    }
}
