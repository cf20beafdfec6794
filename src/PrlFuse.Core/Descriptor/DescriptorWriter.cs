using System.Collections.Immutable;
using System.Globalization;
using System.Text;
using System.Xml;
using System.Xml.Linq;

namespace PrlFuse.Core.Descriptor;

/// <summary>
/// Writes a <see cref="DiskDescriptor"/> back as XML: the known elements in the spec's order, each element the
/// reader did not interpret put back after the known element it followed.
/// </summary>
public static class DescriptorWriter
{
    public static string Write(DiskDescriptor d)
    {
        var root = new XElement(d.RootElementName, new XAttribute("Version", d.Version));
        var p = d.Parameters;
        Add(root, d.Extras, null);
        var parameters = Known(root, d.Extras, new XElement("Disk_Parameters"));
        Add(parameters, p.Extras, null);
        Leaf(parameters, p.Extras, "Disk_size", p.DiskSizeSectors);
        Leaf(parameters, p.Extras, "Cylinders", p.Cylinders);
        Leaf(parameters, p.Extras, "Heads", p.Heads);
        Leaf(parameters, p.Extras, "Sectors", p.Sectors);
        Leaf(parameters, p.Extras, "Padding", p.Padding);

        var storageData = Known(root, d.Extras, new XElement("StorageData"));
        Add(storageData, d.StorageDataExtras, null);
        foreach (var s in d.Storages)
        {
            var storage = Known(storageData, d.StorageDataExtras, new XElement("Storage"));
            Add(storage, s.Extras, null);
            Leaf(storage, s.Extras, "Start", s.StartSector);
            Leaf(storage, s.Extras, "End", s.EndSector);
            Leaf(storage, s.Extras, "Blocksize", s.BlockSizeSectors);
            foreach (var i in s.Images)
            {
                var image = Known(storage, s.Extras, new XElement("Image"));
                Add(image, i.Extras, null);
                Leaf(image, i.Extras, "GUID", DiskDescriptor.FormatGuid(i.Guid));
                Leaf(image, i.Extras, "Type", i.Type.ToString());
                Leaf(image, i.Extras, "File", i.File);
            }
        }

        var sn = d.Snapshots;
        var snapshots = Known(root, d.Extras, new XElement("Snapshots"));
        Add(snapshots, sn.Extras, null);
        if (sn.TopGuid is { } top)
        {
            Leaf(snapshots, sn.Extras, "TopGUID", DiskDescriptor.FormatGuid(top));
        }

        foreach (var s in sn.Shots)
        {
            var shot = Known(snapshots, sn.Extras, new XElement("Shot"));
            Add(shot, s.Extras, null);
            Leaf(shot, s.Extras, "GUID", DiskDescriptor.FormatGuid(s.Guid));
            Leaf(shot, s.Extras, "ParentGUID", DiskDescriptor.FormatGuid(s.ParentGuid));
        }

        // Laid out as Parallels Desktop writes it (its declaration, four-space indents), so a rewritten descriptor
        // differs from the one it replaces only where the disk changed.
        var settings = new XmlWriterSettings { Indent = true, IndentChars = "    ", NewLineChars = "\n", OmitXmlDeclaration = true, Encoding = new UTF8Encoding(false) };
        var sb = new StringBuilder("<?xml version='1.0' encoding='UTF-8'?>\n");
        using (var writer = XmlWriter.Create(new StringWriter(sb, CultureInfo.InvariantCulture), settings))
        {
            root.Save(writer);
        }

        return sb.ToString() + "\n";
    }

    private static XElement Known(XElement parent, ImmutableArray<ExtraElement> parentExtras, XElement child)
    {
        // Extras that followed the previous element of the same name were already added after it.
        parent.Add(child);
        Add(parent, parentExtras, child.Name.LocalName, onlyOnce: parent.Elements(child.Name).Count() == 1);
        return child;
    }

    private static void Leaf(XElement parent, ImmutableArray<ExtraElement> extras, string name, object value)
    {
        parent.Add(new XElement(name, System.Convert.ToString(value, CultureInfo.InvariantCulture)));
        Add(parent, extras, name);
    }

    private static void Add(XElement parent, ImmutableArray<ExtraElement> extras, string? after, bool onlyOnce = true)
    {
        if (!onlyOnce)
        {
            return;
        }

        foreach (var extra in extras)
        {
            if (extra.After == after)
            {
                parent.Add(XElement.Parse(extra.Xml, LoadOptions.None));
            }
        }
    }
}
