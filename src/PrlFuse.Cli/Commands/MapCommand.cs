using System.Globalization;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Images;

namespace PrlFuse.Cli.Commands;

/// <summary>
/// 'prlfuse map DISK [--snapshot GUID] [--json]': where each range of one snapshot's bytes comes from, printed as
/// 'qemu-img map' prints it (its JSON field names and merging, so scripts written for it read ours), plus the image
/// file. Made from the allocation tables alone (nothing is read), and written entry by entry as the walk finds them,
/// so the map of a huge disk is never held in memory.
/// </summary>
internal static class MapCommand
{
    /// <summary>Width of a column of qemu-img map's human format.</summary>
    private const int ColumnWidth = 16;

    private static readonly JsonSerializerOptions FileNameJson = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    public static int Run(MapOptions o)
    {
        // Console.Out flushes every write; a map may have millions of lines.
        using var stdout = new StreamWriter(Console.OpenStandardOutput(), new UTF8Encoding(false), 1 << 16);
        return Run(o.Disk, o.Snapshot, o.Json, stdout, o.AllowOutsideImages, o.ForceShare, o.DiskFormat);
    }

    /// <summary>Writes the map of snapshot <paramref name="snapshot"/> (null: the top) of <paramref name="diskPath"/>.</summary>
    public static int Run(string diskPath, string? snapshot, bool json, TextWriter output, bool allowOutsideImages = false, bool forceShare = false, Core.Descriptor.DiskFormat format = Core.Descriptor.DiskFormat.Auto)
    {
        using var disk = VirtualDisk.Open(diskPath, new DiskOpenOptions { CacheBytes = 0, AllowImagesOutsideBundle = allowOutsideImages, ForceShare = forceShare, Format = format });
        var view = snapshot is null ? disk.Top : disk.GetView(snapshot);
        if (json)
        {
            WriteJson(view, output);
        }
        else
        {
            WriteHuman(view, output);
        }

        output.Flush();
        return Program.ExitOk;
    }

    /// <summary>
    /// One entry of the map: guest [Start, Start + Length) of one storage, held by <see cref="Layer"/> at
    /// <see cref="Depth"/> in the storage's chain (0: the view's top) from <see cref="HostOffset"/> on, or by no layer
    /// (Layer null: it reads as zeros; Depth is then the deepest layer's, as qemu-img reports it).
    /// </summary>
    internal readonly record struct MapEntry(long Start, long Length, int Depth, ImageLayer? Layer, long HostOffset, StorageChain Storage)
    {
        /// <summary>A layer holds these bytes as data (zeros a layer holds, as a qcow2 zero cluster, are not data).</summary>
        public bool IsData => Layer is not null && HostOffset != ImageLayer.ZeroHostOffset;

        /// <summary>A layer holds these bytes, as data or as zeros that hide the layers below (qemu-img's "present").</summary>
        public bool IsPresent => Layer is not null;

        public bool IsDamaged => Layer is not null && HostOffset == ImageLayer.DamagedHostOffset;

        /// <summary>Data with no plain host offset: compressed, or zeros (qemu-img prints no offset for them).</summary>
        public bool HasNoOffset => HostOffset is ImageLayer.DamagedHostOffset or ImageLayer.ZeroHostOffset or ImageLayer.OwnReadHostOffset;
    }

    /// <summary>
    /// The view's map in guest order, entries merged as qemu-img merges them: the same layer with contiguous host
    /// offsets, or both held by no layer; never across a storage boundary. Lazy: one entry at a time.
    /// </summary>
    internal static IEnumerable<MapEntry> Entries(SnapshotView view)
    {
        MapEntry? pending = null;
        for (long offset = 0; offset < view.Size;)
        {
            var extent = view.GetExtent(offset, view.Size - offset);
            if (extent.Length <= 0)
            {
                throw new InvalidOperationException($"the allocation map of snapshot {view.Id:B} makes no progress at offset {offset}");
            }

            int depth = extent.Layer is null ? extent.Storage.Layers.Count - 1 : extent.Depth;
            var next = new MapEntry(extent.Start, extent.Length, depth, extent.Layer, extent.HostOffset, extent.Storage);
            if (pending is { } p && Mergeable(p, next))
            {
                pending = p with { Length = p.Length + next.Length };
            }
            else
            {
                if (pending is { } done)
                {
                    yield return done;
                }

                pending = next;
            }

            offset += extent.Length;
        }

        if (pending is { } last)
        {
            yield return last;
        }
    }

    private static bool Mergeable(MapEntry a, MapEntry b) =>
        a.Storage == b.Storage && a.Layer == b.Layer
        && (a.Layer is null || (a.HasNoOffset && a.HostOffset == b.HostOffset) || (!a.HasNoOffset && !b.HasNoOffset && a.HostOffset + a.Length == b.HostOffset));

    /// <summary>
    /// qemu-img 7.2's --output=json, line for line: "start", "length", "depth", "present", "zero", "data", "offset"
    /// (data only). Ours after them: "filename" for data, "damaged": true where the mapping cannot be read (no offset).
    /// </summary>
    private static void WriteJson(SnapshotView view, TextWriter output)
    {
        var names = new Dictionary<ImageLayer, string>(ReferenceEqualityComparer.Instance);
        var line = new StringBuilder();
        output.Write('[');
        bool first = true;
        foreach (var e in Entries(view))
        {
            line.Clear();
            if (!first)
            {
                line.Append(",\n");
            }

            first = false;
            line.Append(CultureInfo.InvariantCulture, $"{{ \"start\": {e.Start}, \"length\": {e.Length}, \"depth\": {e.Depth}, \"present\": {Flag(e.IsPresent)}, \"zero\": {Flag(!e.IsData)}, \"data\": {Flag(e.IsData)}");
            if (e.Layer is { } layer && e.IsData)
            {
                if (e.IsDamaged)
                {
                    line.Append(", \"damaged\": true");
                }
                else if (!e.HasNoOffset)
                {
                    line.Append(CultureInfo.InvariantCulture, $", \"offset\": {e.HostOffset}");
                }

                if (!names.TryGetValue(layer, out string? name))
                {
                    name = JsonValue.Create(layer.Path)!.ToJsonString(FileNameJson);
                    names.Add(layer, name);
                }

                line.Append(", \"filename\": ").Append(name);
            }

            line.Append('}');
            output.Write(line);
        }

        output.Write("]\n");
    }

    /// <summary>
    /// qemu-img map's human format: the ranges that hold data, in hex, with the host offset ("damaged" where the mapping
    /// cannot be read) and the image file; then how many bytes of the view are allocated.
    /// </summary>
    private static void WriteHuman(SnapshotView view, TextWriter output)
    {
        output.Write($"{"Offset",-ColumnWidth}{"Length",-ColumnWidth}{"Mapped to",-ColumnWidth}File\n");
        long allocated = 0;
        foreach (var e in Entries(view))
        {
            if (e.Layer is not { } layer || !e.IsData)
            {
                continue;
            }

            allocated += e.Length;
            string mapped = e.IsDamaged ? "damaged" : e.HasNoOffset ? "compressed" : Hex(e.HostOffset);
            output.Write(string.Create(CultureInfo.InvariantCulture, $"{Hex(e.Start),-ColumnWidth}{Hex(e.Length),-ColumnWidth}{mapped,-ColumnWidth}{layer.Path}\n"));
        }

        output.Write(string.Create(CultureInfo.InvariantCulture, $"allocated {allocated} of {view.Size} bytes ({Sizes.Human(allocated)} of {Sizes.Human(view.Size)})\n"));
    }

    private static string Flag(bool value) => value ? "true" : "false";

    /// <summary>printf's "%#x": 0x before every value but zero.</summary>
    private static string Hex(long value) => value == 0 ? "0" : "0x" + value.ToString("x", CultureInfo.InvariantCulture);
}
