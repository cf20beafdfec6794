using System.Collections.Immutable;
using System.Globalization;
using System.Xml;
using System.Xml.Linq;

namespace PrlFuse.Core.Descriptor;

/// <summary>
/// Reads DiskDescriptor.xml into a <see cref="DiskDescriptor"/>. The file is untrusted: DTDs are refused (no
/// external entities, no entity expansion) and its size is capped. Structure is checked here; the snapshot tree
/// and storage layout are checked by <see cref="SnapshotTree"/>.
/// </summary>
public static class DescriptorParser
{
    public const string RootName = "Parallels_disk_image";
    public const string VirtuozzoRootName = "Virtuozzo_disk_image";

    /// <summary>Real descriptors are a few KiB; anything this large is not one.</summary>
    public const long MaxDescriptorBytes = 4 << 20;

    /// <summary>Real descriptors nest about five levels; unknown elements get plenty of room above that.</summary>
    public const int MaxDepth = 64;

    public static DiskDescriptor ParseFile(string path)
    {
        var info = new FileInfo(path);
        if (!info.Exists)
        {
            throw new DescriptorException(path, "no such file");
        }

        if (info.Length > MaxDescriptorBytes)
        {
            throw new DescriptorException(path, $"descriptor is {info.Length} bytes, more than the {MaxDescriptorBytes} a DiskDescriptor.xml can be");
        }

        using var stream = File.OpenRead(path);
        return Parse(stream, path);
    }

    public static DiskDescriptor Parse(Stream stream, string fileName) =>
        FromDocument(LoadHardened(stream, fileName, "a DiskDescriptor.xml", MaxDescriptorBytes), fileName);

    /// <summary>
    /// Parses untrusted XML (<paramref name="what"/> names what it should be, for the messages): no DTD, no external
    /// entities, at most <paramref name="maxCharacters"/> characters and <see cref="MaxDepth"/> levels.
    /// </summary>
    internal static XDocument LoadHardened(Stream stream, string fileName, string what, long maxCharacters)
    {
        var settings = new XmlReaderSettings
        {
            DtdProcessing = DtdProcessing.Prohibit,
            XmlResolver = null,
            MaxCharactersInDocument = maxCharacters,
            MaxCharactersFromEntities = 1024,
            IgnoreComments = true,
            IgnoreProcessingInstructions = true,
            IgnoreWhitespace = false,
        };

        try
        {
            // XDocument.Load slows down superlinearly with nesting depth (a 4 MiB file of nested elements takes
            // minutes), so a cheap streaming pass checks the depth before the tree is built.
            var buffered = new MemoryStream();
            stream.CopyTo(buffered);
            buffered.Position = 0;
            using (var scan = XmlReader.Create(buffered, settings))
            {
                while (scan.Read())
                {
                    if (scan.Depth > MaxDepth)
                    {
                        throw new DescriptorException(fileName, $"elements are nested more than {MaxDepth} deep; {what} is a few levels deep");
                    }
                }
            }

            buffered.Position = 0;
            using var reader = XmlReader.Create(buffered, settings);
            return XDocument.Load(reader, LoadOptions.None);
        }
        catch (XmlException e) when (e.Message.Contains("DTD", StringComparison.Ordinal))
        {
            throw new DescriptorException(fileName, $"the XML has a DTD (<!DOCTYPE>), which {what} never has; refused", e);
        }
        catch (XmlException e)
        {
            throw new DescriptorException(fileName, $"not well-formed XML: {e.Message}", e);
        }
    }

    private static DiskDescriptor FromDocument(XDocument document, string fileName)
    {
        var root = document.Root ?? throw new DescriptorException(fileName, "empty document");
        string rootName = root.Name.LocalName;
        if (rootName != RootName && rootName != VirtuozzoRootName)
        {
            throw new DescriptorException(fileName, $"root element is <{rootName}>, not <{RootName}>");
        }

        string? version = root.Attribute("Version")?.Value.Trim();
        if (version is null)
        {
            throw new DescriptorException(fileName, $"<{rootName}> has no Version attribute");
        }

        if (version != "1.0")
        {
            throw new DescriptorException(fileName, $"descriptor Version {version} is not supported (only 1.0)");
        }

        var ctx = new Context(fileName);
        var children = ctx.Split(root, "Disk_Parameters", "StorageData", "Snapshots");
        var parameters = ReadParameters(ctx, ctx.Required(children, "Disk_Parameters", rootName));
        var storageData = ctx.Required(children, "StorageData", rootName);
        var storageChildren = ctx.Split(storageData, multi: ["Storage"]);
        var storages = storageChildren.Many("Storage").Select((s, i) => ReadStorage(ctx, s, i)).ToImmutableArray();
        if (storages.IsEmpty)
        {
            throw new DescriptorException(fileName, "<StorageData> has no <Storage>");
        }

        var snapshots = ReadSnapshots(ctx, ctx.Required(children, "Snapshots", rootName));
        return new DiskDescriptor(rootName, version, parameters, storages, snapshots, children.Extras, storageChildren.Extras);
    }

    private static DiskParameters ReadParameters(Context ctx, XElement element)
    {
        RefuseEncryption(ctx.FileName, element);
        var c = ctx.Split(element, "Disk_size", "Cylinders", "Heads", "Sectors", "Padding");
        long padding = ctx.Number(c, "Padding", "Disk_Parameters");
        if (padding != 0)
        {
            throw new DescriptorException(ctx.FileName, $"Padding is {padding}; only 0 is supported (disks with padding are not covered by the format)");
        }

        long size = ctx.Number(c, "Disk_size", "Disk_Parameters");
        if (size <= 0 || size > long.MaxValue / 512)
        {
            throw new DescriptorException(ctx.FileName, $"Disk_size {size} is not a usable number of sectors");
        }

        return new DiskParameters(
            size,
            ctx.Number(c, "Cylinders", "Disk_Parameters"),
            ctx.Number(c, "Heads", "Disk_Parameters"),
            ctx.Number(c, "Sectors", "Disk_Parameters"),
            padding,
            c.Extras);
    }

    /// <summary>
    /// Parallels Desktop writes &lt;Encryption&gt; on every disk: a zero Engine GUID and empty Data mean "not encrypted".
    /// Any engine or key data means the images hold ciphertext, so the disk is refused rather than served as garbage.
    /// </summary>
    private static void RefuseEncryption(string fileName, XElement parameters)
    {
        foreach (var encryption in parameters.Elements("Encryption"))
        {
            string engine = encryption.Element("Engine")?.Value.Trim() ?? string.Empty;
            string data = encryption.Element("Data")?.Value.Trim() ?? string.Empty;
            bool noEngine = engine.Length == 0 || (Guid.TryParse(engine, out var id) && id == Guid.Empty);
            if (!noEngine || data.Length != 0)
            {
                string shown = engine.Length <= 60 ? engine : engine[..57] + "...";
                throw new EncryptedDiskException(fileName, $"the disk is encrypted (Encryption engine {(shown.Length == 0 ? "unnamed" : shown)}); prlfuse cannot read encrypted Parallels disks: decrypt it in Parallels Desktop first");
            }
        }
    }

    private static StorageDescriptor ReadStorage(Context ctx, XElement element, int index)
    {
        string where = $"Storage {index}";
        var c = ctx.Split(element, ["Start", "End", "Blocksize"], ["Image"]);
        long start = ctx.Number(c, "Start", where);
        long end = ctx.Number(c, "End", where);
        long blocksize = ctx.Number(c, "Blocksize", where);
        if (start < 0 || end <= start || end > long.MaxValue / 512)
        {
            throw new DescriptorException(ctx.FileName, $"{where} covers sectors [{start}, {end}), which is empty or invalid");
        }

        if (blocksize <= 0)
        {
            throw new DescriptorException(ctx.FileName, $"{where} has Blocksize {blocksize}");
        }

        var images = c.Many("Image").Select(i => ReadImage(ctx, i, where)).ToImmutableArray();
        if (images.IsEmpty)
        {
            throw new DescriptorException(ctx.FileName, $"{where} has no <Image>");
        }

        return new StorageDescriptor(start, end, blocksize, images, c.Extras);
    }

    private static ImageDescriptor ReadImage(Context ctx, XElement element, string where)
    {
        var c = ctx.Split(element, "GUID", "Type", "File");
        Guid guid = ctx.Guid(c, "GUID", $"an <Image> of {where}");
        string type = ctx.Text(c, "Type", $"image {DiskDescriptor.FormatGuid(guid)}");
        ImageType imageType = type switch
        {
            "Plain" => ImageType.Plain,
            "Compressed" => ImageType.Compressed,
            _ => throw new DescriptorException(ctx.FileName, $"image {DiskDescriptor.FormatGuid(guid)} has Type \"{type}\"; expected Plain or Compressed"),
        };
        string file = ctx.Text(c, "File", $"image {DiskDescriptor.FormatGuid(guid)}");
        if (file.Length == 0)
        {
            throw new DescriptorException(ctx.FileName, $"image {DiskDescriptor.FormatGuid(guid)} has an empty <File>");
        }

        return new ImageDescriptor(guid, imageType, file, c.Extras);
    }

    private static SnapshotsDescriptor ReadSnapshots(Context ctx, XElement element)
    {
        var c = ctx.Split(element, ["TopGUID"], ["Shot"]);
        Guid? top = c.One("TopGUID") is null ? null : ctx.Guid(c, "TopGUID", "Snapshots");
        var shots = c.Many("Shot").Select(s =>
        {
            var sc = ctx.Split(s, "GUID", "ParentGUID");
            Guid guid = ctx.Guid(sc, "GUID", "a <Shot>");
            return new ShotDescriptor(guid, ctx.Guid(sc, "ParentGUID", $"snapshot {DiskDescriptor.FormatGuid(guid)}"), sc.Extras);
        }).ToImmutableArray();
        if (shots.IsEmpty)
        {
            throw new DescriptorException(ctx.FileName, "<Snapshots> has no <Shot>");
        }

        return new SnapshotsDescriptor(top, shots, c.Extras);
    }

    /// <summary>Children of one element sorted into known singles, known repeated ones, and extras.</summary>
    private sealed class Children
    {
        public Dictionary<string, XElement> Singles { get; } = new(StringComparer.Ordinal);

        public Dictionary<string, List<XElement>> Multi { get; } = new(StringComparer.Ordinal);

        public ImmutableArray<ExtraElement> Extras { get; set; } = [];

        public XElement? One(string name) => Singles.GetValueOrDefault(name);

        public IEnumerable<XElement> Many(string name) => Multi.TryGetValue(name, out var list) ? list : [];
    }

    private sealed class Context(string fileName)
    {
        public string FileName { get; } = fileName;

        public Children Split(XElement element, params string[] singles) => Split(element, singles, []);

        public Children Split(XElement element, string[]? singles = null, string[]? multi = null)
        {
            var result = new Children();
            var extras = ImmutableArray.CreateBuilder<ExtraElement>();
            string? lastKnown = null;
            foreach (var child in element.Elements())
            {
                string name = child.Name.LocalName;
                if (singles is not null && Array.IndexOf(singles, name) >= 0)
                {
                    if (!result.Singles.TryAdd(name, child))
                    {
                        throw new DescriptorException(FileName, $"<{element.Name.LocalName}> has <{name}> twice");
                    }

                    lastKnown = name;
                }
                else if (multi is not null && Array.IndexOf(multi, name) >= 0)
                {
                    if (!result.Multi.TryGetValue(name, out var list))
                    {
                        result.Multi[name] = list = [];
                    }

                    list.Add(child);
                    lastKnown = name;
                }
                else
                {
                    extras.Add(new ExtraElement(child.ToString(SaveOptions.DisableFormatting), lastKnown));
                }
            }

            result.Extras = extras.ToImmutable();
            return result;
        }

        /// <summary>
        /// <paramref name="where"/> is an element name ("Disk_Parameters") or a description that already reads as
        /// text ("Storage 0", "an &lt;Image&gt; of Storage 0", "snapshot {guid}"); only the former gets brackets.
        /// </summary>
        public XElement Required(Children c, string name, string where) =>
            c.One(name) ?? throw new DescriptorException(FileName, $"{(where.Contains(' ', StringComparison.Ordinal) ? where : $"<{where}>")} has no <{name}>");

        public string Text(Children c, string name, string where) => Required(c, name, where).Value.Trim();

        public long Number(Children c, string name, string where)
        {
            string text = Text(c, name, where);
            if (!long.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out long value))
            {
                throw new DescriptorException(FileName, $"<{name}> of {where} is \"{Shorten(text)}\", not a whole number");
            }

            return value;
        }

        public Guid Guid(Children c, string name, string where)
        {
            string text = Text(c, name, where);
            if (!System.Guid.TryParseExact(text, "B", out var guid) && !System.Guid.TryParseExact(text, "D", out guid))
            {
                throw new DescriptorException(FileName, $"<{name}> of {where} is \"{Shorten(text)}\", not a GUID like {{12345678-9abc-def1-2345-6789abcdef12}}");
            }

            return guid;
        }

        private static string Shorten(string text) => text.Length <= 60 ? text : text[..57] + "...";
    }
}
