using System.Text.Json;
using System.Text.Json.Nodes;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Images;
using Spectre.Console;

namespace PrlFuse.Cli.Commands;

internal static class InfoCommand
{
    public static int Run(InfoOptions o)
    {
        using var disk = VirtualDisk.Open(o.Disk, new DiskOpenOptions { CacheBytes = 0, AllowImagesOutsideBundle = o.AllowOutsideImages });
        if (o.Json)
        {
            Console.Out.WriteLine(ToJson(disk).ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            return Program.ExitOk;
        }

        var console = Output.Terminal.Stdout;
        var p = disk.Descriptor.Parameters;
        console.MarkupLine($"[bold]Disk[/] {Markup.Escape(disk.SourcePath)}");
        console.MarkupLine($"  size      {disk.Size} bytes ({Sizes.Human(disk.Size)}), {p.DiskSizeSectors} sectors");
        console.MarkupLine($"  geometry  {p.Cylinders} cylinders, {p.Heads} heads, {p.Sectors} sectors/track");
        console.MarkupLine($"  storages  {disk.Storages.Count}{(disk.Storages.Count > 1 ? " (split disk)" : "")}, snapshots {disk.Views.Count}");

        foreach (var storage in disk.Storages)
        {
            var sd = storage.Descriptor;
            console.MarkupLine($"[bold]Storage {storage.Index}[/]  sectors {sd.StartSector}-{sd.EndSector}, Blocksize {sd.BlockSizeSectors}");
            foreach (var (guid, layer) in storage.Images.OrderBy(x => disk.Tree.ChainOf(x.Key).Length))
            {
                var i = Describe(layer);
                long clusters = (layer.VirtualSize + layer.ClusterBytes - 1) / layer.ClusterBytes;
                console.MarkupLine($"  {Markup.Escape(DiskDescriptor.FormatGuid(guid))}  {Markup.Escape(Path.GetFileName(layer.Path))}");
                console.MarkupLine($"      {Markup.Escape(i.Type)}, cluster {Sizes.Human(layer.ClusterBytes)}, {layer.CountAllocatedClusters()} of {clusters} clusters allocated, file {Sizes.Human(layer.File.Length)}");
                console.MarkupLine($"      {(layer.InUseByOtherWriter ? "[yellow]in use by another writer[/]" : i.Clean ? "clean" : "[red]not closed cleanly[/]")}{Markup.Escape(i.InUse)}, extension: {Markup.Escape(i.Extension)}");
            }
        }

        console.MarkupLine("[bold]Snapshots[/] (* = top, the current state)");
        console.Write(BuildTree(disk));
        if (disk.Warnings.Length > 0)
        {
            console.MarkupLine("[bold yellow]Warnings[/]");
            foreach (var w in disk.Warnings)
            {
                console.MarkupLine($"  [yellow]![/] {Markup.Escape(w)}");
            }
        }

        return Program.ExitOk;
    }

    private sealed record ImageFacts(string Type, bool Clean, string Extension, string InUse);

    private static ImageFacts Describe(ImageLayer layer)
    {
        if (layer is not ExpandableImage e)
        {
            return new ImageFacts("plain (raw)", true, "-", "");
        }

        string ext = "-";
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

    private static Tree BuildTree(VirtualDisk disk)
    {
        var t = disk.Tree;
        var tree = new Tree(Label(t.Root));
        Add(tree, t.Root);
        return tree;

        string Label(Guid g) => Markup.Escape(DiskDescriptor.FormatGuid(g)) + (g == t.Top ? " [green]*[/]" : "");

        void Add(IHasTreeNodes node, Guid g)
        {
            foreach (var c in t.ChildrenOf(g).OrderBy(x => x))
            {
                Add(node.AddNode(Label(c)), c);
            }
        }
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
                var i = Describe(layer);
                var image = new JsonObject
                {
                    ["snapshot"] = DiskDescriptor.FormatGuid(guid),
                    ["file"] = layer.Path,
                    ["kind"] = layer.Kind.ToString().ToLowerInvariant(),
                    ["clusterBytes"] = layer.ClusterBytes,
                    ["allocatedClusters"] = layer.CountAllocatedClusters(),
                    ["virtualSize"] = layer.VirtualSize,
                    ["fileSize"] = layer.File.Length,
                    ["clean"] = i.Clean,
                    ["inUseByOtherWriter"] = layer.InUseByOtherWriter,
                };
                if (layer is ExpandableImage e)
                {
                    image["magic"] = e.Header.Magic.ToString();
                    image["inUse"] = e.Header.InUseText;
                    image["dataOffsetSectors"] = e.DataOffsetBytes / 512;
                    image["extension"] = i.Extension;
                }

                images.Add(image);
            }

            storages.Add(new JsonObject
            {
                ["index"] = storage.Index,
                ["startSector"] = storage.Descriptor.StartSector,
                ["endSector"] = storage.Descriptor.EndSector,
                ["blocksize"] = storage.Descriptor.BlockSizeSectors,
                ["images"] = images,
            });
        }

        var snapshots = new JsonArray();
        foreach (var g in disk.Tree.Snapshots.OrderBy(g => disk.Tree.ChainOf(g).Length).ThenBy(g => g))
        {
            var parent = disk.Tree.ParentOf(g);
            snapshots.Add(new JsonObject
            {
                ["guid"] = DiskDescriptor.FormatGuid(g),
                ["parent"] = parent == Guid.Empty ? null : DiskDescriptor.FormatGuid(parent),
                ["top"] = g == disk.Tree.Top,
                ["depth"] = disk.Tree.ChainOf(g).Length - 1,
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
            ["warnings"] = new JsonArray(disk.Warnings.Select(w => (JsonNode?)JsonValue.Create(w)).ToArray()),
        };
    }
}
