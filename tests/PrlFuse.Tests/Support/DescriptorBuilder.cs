using System.Globalization;
using System.Text;
using System.Xml.Linq;

namespace PrlFuse.Tests.Support;

/// <summary>
/// Writes DiskDescriptor.xml text (shared/specs/prl-xml.rst) for tests: storages with images, shots, an optional
/// TopGUID, unknown elements anywhere, CRLF line ends, comments, blank lines, a Virtuozzo root, and arbitrary
/// mutations (remove an element, change a value) for refusal tests. Pure text: write it into a temp folder with
/// <see cref="WriteTo"/> next to the images.
/// </summary>
public sealed class DescriptorBuilder
{
    public static readonly Guid PredefinedTop = new("5fbaabe3-6958-40ff-92a7-860e329aab41");
    public static readonly Guid BackupId = new("704718e1-2314-44c8-9087-d78ed36b0f4e");

    private readonly List<StorageSpec> _storages = [];
    private readonly List<(Guid Guid, Guid Parent)> _shots = [];
    private readonly List<Action<XElement>> _mutations = [];

    public DescriptorBuilder(long diskSectors)
    {
        DiskSectors = diskSectors;
    }

    public long DiskSectors { get; set; }

    /// <summary>
    /// Geometry. Default: 16 heads, 32 sectors and Disk_size / 512 cylinders when that divides, else 1, 1 and
    /// Disk_size, so Cylinders*Heads*Sectors = Disk_size unless a test sets these.
    /// </summary>
    public long? Cylinders { get; set; }

    public long? Heads { get; set; }

    public long? SectorsPerTrack { get; set; }

    public string Padding { get; set; } = "0";

    /// <summary>The Version attribute; null leaves it out.</summary>
    public string? Version { get; set; } = "1.0";

    public string RootName { get; set; } = "Parallels_disk_image";

    public Guid? TopGuid { get; set; }

    /// <summary>Lines end in CR LF.</summary>
    public bool Crlf { get; set; }

    /// <summary>An XML comment as first child of every element and before the root.</summary>
    public bool Comments { get; set; }

    /// <summary>A blank line between every two lines.</summary>
    public bool BlankLines { get; set; }

    /// <summary>Unknown elements (with nested children and attributes) in every element the spec defines.</summary>
    public bool UnknownElementsEverywhere { get; set; }

    /// <summary>Writes the XML declaration.</summary>
    public bool Declaration { get; set; } = true;

    public IReadOnlyList<StorageSpec> Storages => _storages;

    private bool Divides => DiskSectors % (16 * 32) == 0;

    public long HeadsValue => Heads ?? (Divides ? 16 : 1);

    public long SectorsValue => SectorsPerTrack ?? (Divides ? 32 : 1);

    public long CylindersValue => Cylinders ?? (DiskSectors / (HeadsValue * SectorsValue));

    /// <summary>Adds a storage covering sectors [start, end).</summary>
    public StorageSpec Storage(long start, long end, long blocksize = 2048)
    {
        var s = new StorageSpec(start, end, blocksize);
        _storages.Add(s);
        return s;
    }

    /// <summary>One storage over the whole disk with one image per (guid, type, file).</summary>
    public DescriptorBuilder SingleStorage(long blocksize, params (Guid Guid, string Type, string File)[] images)
    {
        var s = Storage(0, DiskSectors, blocksize);
        foreach (var (g, t, f) in images)
        {
            s.Image(g, t, f);
        }

        return this;
    }

    public DescriptorBuilder Shot(Guid guid, Guid parent)
    {
        _shots.Add((guid, parent));
        return this;
    }

    /// <summary>A chain of shots: the first is the root, each next one a child of the previous.</summary>
    public DescriptorBuilder Chain(params Guid[] guids)
    {
        for (int i = 0; i < guids.Length; i++)
        {
            Shot(guids[i], i == 0 ? Guid.Empty : guids[i - 1]);
        }

        return this;
    }

    /// <summary>Changes the XML tree before it is written (runs after everything else is built).</summary>
    public DescriptorBuilder Mutate(Action<XElement> mutation)
    {
        _mutations.Add(mutation);
        return this;
    }

    /// <summary>Removes the <paramref name="occurrence"/>-th element named <paramref name="name"/> (document order).</summary>
    public DescriptorBuilder Remove(string name, int occurrence = 0) =>
        Mutate(root => root.DescendantsAndSelf(name).ElementAt(occurrence).Remove());

    /// <summary>Sets the text of the <paramref name="occurrence"/>-th element named <paramref name="name"/>.</summary>
    public DescriptorBuilder SetValue(string name, string value, int occurrence = 0) =>
        Mutate(root => root.DescendantsAndSelf(name).ElementAt(occurrence).Value = value);

    /// <summary>Adds raw XML (an element) as the last child of the first element named <paramref name="parent"/>.</summary>
    public DescriptorBuilder AddElement(string parent, string xml) =>
        Mutate(root => root.DescendantsAndSelf(parent).First().Add(XElement.Parse(xml)));

    public static string G(Guid g) => g.ToString("B");

    public XElement BuildTree()
    {
        var root = new XElement(RootName);
        if (Version is not null)
        {
            root.SetAttributeValue("Version", Version);
        }

        var parameters = new XElement(
            "Disk_Parameters",
            new XElement("Disk_size", DiskSectors.ToString(CultureInfo.InvariantCulture)),
            new XElement("Cylinders", CylindersValue.ToString(CultureInfo.InvariantCulture)),
            new XElement("Heads", HeadsValue.ToString(CultureInfo.InvariantCulture)),
            new XElement("Sectors", SectorsValue.ToString(CultureInfo.InvariantCulture)),
            new XElement("Padding", Padding));
        var storageData = new XElement("StorageData");
        foreach (var s in _storages)
        {
            var storage = new XElement(
                "Storage",
                new XElement("Start", s.Start.ToString(CultureInfo.InvariantCulture)),
                new XElement("End", s.End.ToString(CultureInfo.InvariantCulture)),
                new XElement("Blocksize", s.Blocksize.ToString(CultureInfo.InvariantCulture)));
            foreach (var (g, t, f) in s.Images)
            {
                storage.Add(new XElement("Image", new XElement("GUID", G(g)), new XElement("Type", t), new XElement("File", f)));
            }

            storageData.Add(storage);
        }

        var snapshots = new XElement("Snapshots");
        if (TopGuid is { } top)
        {
            snapshots.Add(new XElement("TopGUID", G(top)));
        }

        foreach (var (g, p) in _shots)
        {
            snapshots.Add(new XElement("Shot", new XElement("GUID", G(g)), new XElement("ParentGUID", G(p))));
        }

        root.Add(parameters, storageData, snapshots);

        if (UnknownElementsEverywhere)
        {
            int n = 0;
            foreach (var e in root.DescendantsAndSelf().Where(e => e.HasElements).ToList())
            {
                // One before the known children, one in the middle, one at the end.
                e.AddFirst(Unknown(n++));
                var children = e.Elements().ToList();
                children[children.Count / 2].AddAfterSelf(Unknown(n++));
                e.Add(Unknown(n++));
            }
        }

        foreach (var m in _mutations)
        {
            m(root);
        }

        if (Comments)
        {
            foreach (var e in root.DescendantsAndSelf().ToList())
            {
                e.AddFirst(new XComment($" comment in {e.Name.LocalName} "));
            }
        }

        return root;
    }

    public string Build()
    {
        var root = BuildTree();
        var doc = new XDocument(root);
        if (Comments)
        {
            doc.AddFirst(new XComment(" written by DescriptorBuilder "));
        }

        string text = doc.ToString(SaveOptions.None);
        if (Declaration)
        {
            text = "<?xml version='1.0' encoding='UTF-8'?>\n" + text;
        }

        text = text.Replace("\r\n", "\n", StringComparison.Ordinal) + "\n";
        if (BlankLines)
        {
            text = text.Replace("\n", "\n\n", StringComparison.Ordinal);
        }

        if (Crlf)
        {
            text = text.Replace("\n", "\r\n", StringComparison.Ordinal);
        }

        return text;
    }

    /// <summary>Writes DiskDescriptor.xml into <paramref name="folder"/> and returns its path.</summary>
    public string WriteTo(string folder, string fileName = "DiskDescriptor.xml")
    {
        string path = System.IO.Path.Combine(folder, fileName);
        File.WriteAllText(path, Build(), new UTF8Encoding(false));
        return path;
    }

    private static XElement Unknown(int n) =>
        new($"Unknown_{n}", new XAttribute("attr", $"value {n}"), new XElement("Nested", new XElement("Deeper", $"text {n}")), new XElement("Empty"));

    public sealed class StorageSpec(long start, long end, long blocksize)
    {
        public long Start { get; } = start;

        public long End { get; } = end;

        public long Blocksize { get; } = blocksize;

        public List<(Guid Guid, string Type, string File)> Images { get; } = [];

        public StorageSpec Image(Guid guid, string type, string file)
        {
            Images.Add((guid, type, file));
            return this;
        }
    }
}
