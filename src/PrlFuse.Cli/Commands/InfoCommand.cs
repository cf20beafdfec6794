using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using PrlFuse.Core;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.Formats.Qcow2;
using PrlFuse.Core.Formats.Qed;
using PrlFuse.Core.Images;
using Spectre.Console;

namespace PrlFuse.Cli.Commands;

internal static class InfoCommand
{
    /// <summary>Indentation of the snapshot tree stops growing here; deeper levels show their depth as a number.</summary>
    internal const int TreeIndentCap = 16;

    public static int Run(InfoOptions o)
    {
        if (o.VmBundlePath is not { } vm || o.VmDisks is not { } disks)
        {
            return Run(o.Disk, o.Json, o.AllowOutsideImages, Console.Out, o.ForceShare, o.DiskFormat);
        }

        // A VM bundle: its disks first; then the chosen (or only) disk, unless the user has yet to choose one.
        bool chosen = o.Disk != vm;
        if (o.Json)
        {
            var vmJson = new JsonObject
            {
                ["path"] = vm,
                ["disks"] = new JsonArray([.. disks.Select(d => (JsonNode)new JsonObject
                {
                    ["number"] = d.Number, ["name"] = d.Name, ["configuredPath"] = d.ConfiguredPath, ["path"] = d.Path, ["enabled"] = d.Enabled,
                })]),
            };
            if (!chosen)
            {
                Console.Out.WriteLine(new JsonObject { ["vmBundle"] = vmJson }.ToJsonString(Indented));
                return Program.ExitOk;
            }

            return Run(o.Disk, json: true, o.AllowOutsideImages, Console.Out, o.ForceShare, o.DiskFormat, vmJson);
        }

        var console = Output.Terminal.Stdout;
        console.MarkupLine($"[bold]VM bundle[/] {Markup.Escape(vm)}");
        foreach (var d in disks)
        {
            string state = (d.Path is null ? ", missing" : "") + (d.Enabled ? "" : ", disabled");
            console.MarkupLine($"  disk {d.Number}  {Markup.Escape(d.Name)}  {Markup.Escape(d.Path ?? d.ConfiguredPath)}{state}");
        }

        if (!chosen)
        {
            console.MarkupLine($"  choose one with --disk N (from 0)");
            return Program.ExitOk;
        }

        return Run(o.Disk, json: false, o.AllowOutsideImages, Console.Out, o.ForceShare, o.DiskFormat);
    }

    /// <summary>
    /// Prints the disk's description. With <paramref name="json"/>, an error is JSON on <paramref name="output"/> too
    /// (exit 1), so a script reading stdout always gets JSON; <paramref name="vmBundle"/> describes the VM bundle the
    /// disk was chosen from.
    /// </summary>
    public static int Run(string diskPath, bool json, bool allowOutsideImages, TextWriter output, bool forceShare = false, DiskFormat format = DiskFormat.Auto, JsonObject? vmBundle = null)
    {
        if (!json)
        {
            using var disk = Open(diskPath, allowOutsideImages, forceShare, format, out var users);
            WriteText(disk, output, users);
            return Program.ExitOk;
        }

        try
        {
            using var disk = Open(diskPath, allowOutsideImages, forceShare, format, out var users);
            var root = ToJson(disk);
            root["inUse"] = new JsonArray([.. users.Select(u => (JsonNode?)JsonValue.Create(u))]);
            if (vmBundle is not null)
            {
                root["vmBundle"] = vmBundle;
            }

            output.WriteLine(root.ToJsonString(Indented));
            return Program.ExitOk;
        }
        catch (ImageInUseException e)
        {
            return JsonError(output, Output.InUse.Explain(e), e.File);
        }
        catch (PrlFuseException e)
        {
            return JsonError(output, e.Message, e.File);
        }
        catch (IOException e)
        {
            return JsonError(output, e.Message, null);
        }
        catch (UnauthorizedAccessException e)
        {
            return JsonError(output, e.Message, null);
        }
    }

    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    /// <summary>
    /// Opens the disk to describe it. A disk that a writer holds is still described, as it is now (force-shared,
    /// read-only): <paramref name="users"/> then says who uses it, by mountpoint when it is one of our mounts.
    /// </summary>
    private static VirtualDisk Open(string diskPath, bool allowOutsideImages, bool forceShare, DiskFormat format, out List<string> users)
    {
        var options = new DiskOpenOptions { CacheBytes = 0, AllowImagesOutsideBundle = allowOutsideImages, ForceShare = forceShare, Format = format };
        var disk = Output.InUse.OpenToDescribe(diskPath, options);

        var files = disk.Storages.SelectMany(s => s.Images.Values).Select(l => l.Path).Append(disk.SourcePath).ToList();
        users = [.. Output.InUse.OurMounts(files)];
        if (users.Count == 0 && disk.Storages.SelectMany(s => s.Images.Values).FirstOrDefault(l => l.InUseByOtherWriter) is { } held)
        {
            users.Add($"{Path.GetFileName(held.Path)} is open for writing in another process (QEMU or prlfuse); shown as it is now, may be inconsistent");
        }

        return disk;
    }

    private static int JsonError(TextWriter output, string message, string? path)
    {
        var error = new JsonObject { ["error"] = new JsonObject { ["message"] = message, ["path"] = path } };
        output.WriteLine(error.ToJsonString(Indented));
        return Program.ExitError;
    }

    private static void WriteText(VirtualDisk disk, TextWriter output, List<string> users)
    {
        var console = ReferenceEquals(output, Console.Out) ? Output.Terminal.Stdout : Output.Terminal.Create(output, redirected: true);
        var p = disk.Descriptor.Parameters;
        console.MarkupLine($"[bold]Disk[/] {Markup.Escape(disk.SourcePath)}");
        console.MarkupLine($"  size      {disk.Size} bytes ({Sizes.Human(disk.Size)}), {p.DiskSizeSectors} sectors");
        console.MarkupLine($"  geometry  {p.Cylinders} cylinders, {p.Heads} heads, {p.Sectors} sectors/track");
        console.MarkupLine($"  storages  {disk.Storages.Count}{(disk.Storages.Count > 1 ? " (split disk)" : "")}, snapshots {disk.Views.Count}");
        foreach (var user in users)
        {
            console.MarkupLine($"  in use    {Markup.Escape(user)}");
        }

        foreach (var storage in disk.Storages)
        {
            var sd = storage.Descriptor;
            console.MarkupLine($"[bold]Storage {storage.Index}[/]  sectors {sd.StartSector}-{sd.EndSector}, Blocksize {sd.BlockSizeSectors}");
            foreach (var (guid, layer) in storage.Images.OrderBy(x => disk.Tree.ChainOf(x.Key).Length))
            {
                var i = Describe(layer);
                if (disk.RawUnrecognised)
                {
                    i = i with { Type = "raw (no format recognised)" };
                }

                long clusters = (layer.VirtualSize + layer.ClusterBytes - 1) / layer.ClusterBytes;
                console.MarkupLine($"  {Markup.Escape(DiskDescriptor.FormatGuid(guid))}  {Markup.Escape(Path.GetFileName(layer.Path))}");
                console.MarkupLine($"      {Markup.Escape(i.Type)}, cluster {Sizes.Human(layer.ClusterBytes)}, {layer.CountAllocatedClusters()} of {clusters} clusters allocated, file {Sizes.Human(layer.File.Length)}");
                if (layer is Qcow2Image q)
                {
                    WriteQcow2Lines(console, disk, q);
                    continue;
                }

                if (layer is QedImage qed)
                {
                    string state = qed.InUseByOtherWriter ? "[yellow]in use by another writer[/]" : qed.Header.NeedsCheck ? "[red]need-check set[/]" : "clean";
                    var features = qed.Header.FeatureList().ToList();
                    console.MarkupLine($"      {state}, features: {Markup.Escape(features.Count == 0 ? "none" : string.Join(", ", features))}");
                    WriteBackingLines(console, disk, qed);
                    continue;
                }

                console.MarkupLine($"      {(layer.InUseByOtherWriter ? "[yellow]in use by another writer[/]" : i.Clean ? "clean" : "[red]not closed cleanly[/]")}{Markup.Escape(i.InUse)}, extension: {Markup.Escape(i.Extension)}");
            }
        }

        console.MarkupLine("[bold]Snapshots[/] (* = top, the current state)");

        // Plain lines straight to the writer: a console widget would wrap a deep line at the terminal's width.
        foreach (string line in TreeLines(disk.Tree, TreeIndentCap))
        {
            output.WriteLine(line);
        }

        if (!disk.InternalSnapshots.IsEmpty)
        {
            // qemu-img snapshot -l's columns, plus the file name the mount and the server give each.
            console.MarkupLine("[bold]Internal snapshots[/] (read-only; mounted as snapshots/FILE.raw, exported as FILE)");
            output.WriteLine($"  {"ID",-6} {"TAG",-20} {"DATE",-19} {"DISK SIZE",12} {"VM SIZE",10}  FILE");
            foreach (var view in disk.InternalSnapshots)
            {
                var q = view.Internal!;
                output.WriteLine($"  {q.Id,-6} {q.Name,-20} {q.Date.UtcDateTime.ToString("yyyy-MM-dd HH:mm:ss", CultureInfo.InvariantCulture),-19} {Sizes.Human(q.DiskSize),12} {Sizes.Human((long)Math.Min(q.VmStateSize, long.MaxValue)),10}  {view.Name}.raw");
            }
        }

        console.MarkupLine("[bold]Allocated[/] (bytes of each snapshot that its images hold; the rest reads as zeros)");
        var allocatedBytes = disk.CountAllocatedBytesOfEveryView();
        foreach (var g in SnapshotsByDepth(disk.Tree))
        {
            long allocated = allocatedBytes[g];
            output.WriteLine($"  {DiskDescriptor.FormatGuid(g)}{(g == disk.Tree.Top ? " *" : "  ")}  {allocated} bytes ({Sizes.Human(allocated)})");
        }

        if (disk.DiskWarnings.Length > 0)
        {
            console.MarkupLine("[bold yellow]Warnings[/]");
            foreach (var w in disk.DiskWarnings)
            {
                console.MarkupLine($"  [yellow]![/] {Markup.Escape(w.Message)} [dim]({Markup.Escape(w.Code)})[/]");
            }
        }
    }

    private sealed record ImageFacts(string Type, bool Clean, string Extension, string InUse);

    /// <summary>A qcow2 image's state and features, then its backing chain one image a line.</summary>
    private static void WriteQcow2Lines(IAnsiConsole console, VirtualDisk disk, Qcow2Image q)
    {
        var h = q.Header;
        string state = q.InUseByOtherWriter ? "[yellow]in use by another writer[/]" : h.IsCorrupt ? "[red]corrupt[/]" : h.IsDirty ? "[red]dirty[/]" : "clean";
        var features = h.FeatureList().ToList();
        if (h.Version == 3)
        {
            features.Add($"compression {h.CompressionType.ToString().ToLowerInvariant()}");
            features.Add($"refcount {1 << h.RefcountOrder} bits");
        }

        if (h.DataFile is { } dataFile)
        {
            features.Add($"data file {dataFile}");
        }

        console.MarkupLine($"      {state}, features: {Markup.Escape(features.Count == 0 ? "none" : string.Join(", ", features))}");
        WriteBackingLines(console, disk, q);
    }

    /// <summary>The backing chain below <paramref name="layer"/>, one image a line.</summary>
    private static void WriteBackingLines(IAnsiConsole console, VirtualDisk disk, ImageLayer layer)
    {
        int depth = 0;
        foreach (var below in BackingChain(disk, layer))
        {
            depth++;
            string kind = below is Qcow2Image bq ? $"qcow2 version {bq.Header.Version}" : below is QedImage ? "qed" : below is ExpandableImage ? "parallels" : "raw";
            console.MarkupLine($"      backing {depth}: {Markup.Escape(below.Path)} ({Markup.Escape(kind)}, {below.VirtualSize} bytes, cluster {Sizes.Human(below.ClusterBytes)})");
        }
    }

    /// <summary>The layers below <paramref name="layer"/> in the top view that no descriptor names (a qcow2 backing chain).</summary>
    private static IEnumerable<ImageLayer> BackingChain(VirtualDisk disk, ImageLayer layer)
    {
        foreach (var storage in disk.Top.Storages)
        {
            int at = storage.Layers.ToList().IndexOf(layer);
            if (at >= 0)
            {
                return storage.Layers.Skip(at + 1).TakeWhile(l => !IsDescribed(disk, l));
            }
        }

        return [];
    }

    private static bool IsDescribed(VirtualDisk disk, ImageLayer layer) => disk.Storages.Any(s => s.Images.Values.Contains(layer));

    private static JsonObject? Qcow2Json(VirtualDisk disk, ImageLayer layer)
    {
        if (layer is not Qcow2Image q)
        {
            return null;
        }

        var h = q.Header;
        return new JsonObject
        {
            ["version"] = h.Version,
            ["compressionType"] = h.CompressionType.ToString().ToLowerInvariant(),
            ["refcountBits"] = 1 << h.RefcountOrder,
            ["features"] = new JsonArray([.. h.FeatureList().Select(f => (JsonNode?)JsonValue.Create(f))]),
            ["dirty"] = h.IsDirty,
            ["corrupt"] = h.IsCorrupt,
            ["backingFile"] = h.BackingFile,
            ["backingFormat"] = h.BackingFormat,
            ["dataFile"] = h.DataFile,
            ["backingChain"] = new JsonArray([.. BackingChain(disk, q).Select(b => (JsonNode?)new JsonObject
            {
                ["file"] = b.Path,
                ["kind"] = b.Kind.ToString().ToLowerInvariant(),
                ["virtualSize"] = b.VirtualSize,
                ["clusterBytes"] = b.ClusterBytes,
            })]),
        };
    }

    private static ImageFacts Describe(ImageLayer layer)
    {
        if (layer is Qcow2Image q)
        {
            return new ImageFacts($"qcow2 version {q.Header.Version}", !q.Header.IsDirty && !q.Header.IsCorrupt, "none", "");
        }

        if (layer is QedImage qed)
        {
            return new ImageFacts("qed", !qed.Header.NeedsCheck, "none", "");
        }

        if (layer is not ExpandableImage e)
        {
            return new ImageFacts("plain (raw)", true, "none", "");
        }

        string ext = "none";
        if (e.ExtensionError is not null)
        {
            ext = "broken: " + e.ExtensionError;
        }
        else if (e.Extension is { } x)
        {
            ext = x.Features.Count == 0 ? "empty" : string.Join(", ", x.Features.Select(f => f.Name));
            if (x.DirtyBitmap is { } bm)
            {
                int dirty = e.DecodeDirtyClusters()!.Count(d => d);
                ext += $" (id {bm.Id}, granularity {bm.GranularitySectors} sectors, {dirty} dirty clusters)";
            }
        }

        // A live writer's "Ynot" (a force-share open beside it) is neither clean nor a crash: see InUseByOtherWriter.
        return new ImageFacts($"expandable {e.Header.Magic}", !e.WasUnclean && !e.InUseByOtherWriter, ext, $" (in_use {e.Header.InUseText})");
    }

    /// <summary>
    /// The snapshot tree as text lines, root first, children by GUID. Indentation grows to <paramref name="cap"/>
    /// levels; a line deeper than that shows "[depth N]": its parent is the nearest line above at depth N-1.
    /// </summary>
    internal static List<string> TreeLines(SnapshotTree tree, int cap)
    {
        var lines = new List<string>();
        var lastAt = new List<bool>();
        var stack = new Stack<(Guid Guid, int Depth, bool Last)>();
        stack.Push((tree.Root, 0, true));
        var sb = new System.Text.StringBuilder();
        while (stack.Count > 0)
        {
            var (g, depth, last) = stack.Pop();
            while (lastAt.Count <= depth)
            {
                lastAt.Add(false);
            }

            lastAt[depth] = last;
            sb.Clear();
            if (depth > 0)
            {
                for (int level = 1; level < Math.Min(depth, cap); level++)
                {
                    sb.Append(lastAt[level] ? "    " : "\u2502   ");
                }

                sb.Append(last ? "\u2514\u2500\u2500 " : "\u251c\u2500\u2500 ");
                if (depth > cap)
                {
                    sb.Append(System.Globalization.CultureInfo.InvariantCulture, $"[depth {depth}] ");
                }
            }

            sb.Append(DiskDescriptor.FormatGuid(g));
            if (g == tree.Top)
            {
                sb.Append(" *");
            }

            lines.Add(sb.ToString());
            var children = tree.ChildrenOf(g).Order().ToList();
            for (int i = children.Count - 1; i >= 0; i--)
            {
                stack.Push((children[i], depth + 1, i == children.Count - 1));
            }
        }

        return lines;
    }

    /// <summary>The snapshots root first, then by depth in the tree, then by GUID.</summary>
    private static IEnumerable<Guid> SnapshotsByDepth(SnapshotTree tree) => tree.Snapshots.OrderBy(g => tree.ChainOf(g).Length).ThenBy(g => g);

    /// <summary>The format extension, or null when the image has none.</summary>
    private static JsonObject? ExtensionJson(ExpandableImage e)
    {
        if (e.Extension is null && e.ExtensionError is null)
        {
            return null;
        }

        JsonObject? bitmap = null;
        if (e.Extension?.DirtyBitmap is { } bm)
        {
            bitmap = new JsonObject
            {
                ["id"] = DiskDescriptor.FormatGuid(bm.Id),
                ["granularitySectors"] = bm.GranularitySectors,
                ["dirtyClusters"] = e.DecodeDirtyClusters()!.Count(d => d),
            };
        }

        return new JsonObject
        {
            ["features"] = new JsonArray((e.Extension?.Features ?? []).Select(f => (JsonNode?)JsonValue.Create(f.Name)).ToArray()),
            ["dirtyBitmap"] = bitmap,
            ["error"] = e.ExtensionError,
        };
    }

    private static JsonObject ToJson(VirtualDisk disk)
    {
        var p = disk.Descriptor.Parameters;
        var storages = new JsonArray();
        foreach (var storage in disk.Storages)
        {
            var images = new JsonArray();
            foreach (var (guid, layer) in storage.Images)
            {
                var e = layer as ExpandableImage;
                var image = new JsonObject
                {
                    ["snapshot"] = DiskDescriptor.FormatGuid(guid),
                    ["file"] = layer.Path,
                    ["kind"] = layer.Kind.ToString().ToLowerInvariant(),
                    ["clusterBytes"] = layer.ClusterBytes,
                    ["allocatedClusters"] = layer.CountAllocatedClusters(),
                    ["virtualSize"] = layer.VirtualSize,
                    ["fileSize"] = layer.File.Length,
                    ["clean"] = layer is Qcow2Image or QedImage ? Describe(layer).Clean && !layer.InUseByOtherWriter : e is null || (!e.WasUnclean && !e.InUseByOtherWriter),
                    ["inUseByOtherWriter"] = layer.InUseByOtherWriter,

                    // Every image has every key; what a raw image has not got is null.
                    ["magic"] = e?.Header.Magic.ToString(),
                    ["inUse"] = e?.Header.InUseText,
                    ["dataOffsetSectors"] = e is null ? null : e.DataOffsetBytes / 512,
                    ["extension"] = e is null ? null : ExtensionJson(e),
                    ["qcow2"] = Qcow2Json(disk, layer),
                };
                images.Add((JsonNode)image);
            }

            storages.Add((JsonNode)new JsonObject
            {
                ["index"] = storage.Index,
                ["startSector"] = storage.Descriptor.StartSector,
                ["endSector"] = storage.Descriptor.EndSector,
                ["blocksize"] = storage.Descriptor.BlockSizeSectors,
                ["images"] = images,
            });
        }

        var snapshots = new JsonArray();
        var allocatedBytes = disk.CountAllocatedBytesOfEveryView();
        foreach (var g in SnapshotsByDepth(disk.Tree))
        {
            var parent = disk.Tree.ParentOf(g);
            snapshots.Add((JsonNode)new JsonObject
            {
                ["guid"] = DiskDescriptor.FormatGuid(g),
                ["parent"] = parent == Guid.Empty ? null : DiskDescriptor.FormatGuid(parent),
                ["top"] = g == disk.Tree.Top,
                ["depth"] = disk.Tree.ChainOf(g).Length - 1,
                ["allocatedBytes"] = allocatedBytes[g],
            });
        }

        var internalSnapshots = new JsonArray();
        foreach (var view in disk.InternalSnapshots)
        {
            var q = view.Internal!;
            internalSnapshots.Add((JsonNode)new JsonObject
            {
                ["id"] = q.Id,
                ["name"] = q.Name,
                ["file"] = view.Name + ".raw",
                ["date"] = q.Date.UtcDateTime.ToString("yyyy-MM-ddTHH:mm:ss.fffffffZ", CultureInfo.InvariantCulture),
                ["vmClockNanoseconds"] = q.VmClockNanoseconds,
                ["sizeBytes"] = q.DiskSize,
                ["vmStateBytes"] = q.VmStateSize,
                ["allocatedBytes"] = view.CountAllocatedBytes(),
            });
        }

        return new JsonObject
        {
            ["source"] = disk.SourcePath,
            ["sizeBytes"] = disk.Size,
            ["sizeSectors"] = p.DiskSizeSectors,
            ["cylinders"] = p.Cylinders,
            ["heads"] = p.Heads,
            ["sectors"] = p.Sectors,
            ["top"] = DiskDescriptor.FormatGuid(disk.Tree.Top),
            ["storages"] = storages,
            ["snapshots"] = snapshots,
            ["internalSnapshots"] = internalSnapshots,
            ["warnings"] = new JsonArray(disk.DiskWarnings.Select(w => (JsonNode?)new JsonObject { ["code"] = w.Code, ["message"] = w.Message }).ToArray()),
        };
    }
}
