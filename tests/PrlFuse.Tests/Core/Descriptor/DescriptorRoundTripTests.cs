using System.Text;
using System.Xml.Linq;
using PrlFuse.Core.Descriptor;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.Descriptor;

/// <summary>DescriptorWriter puts back every element the parser did not interpret.</summary>
public sealed class DescriptorRoundTripTests
{
    private static DiskDescriptor Parse(string xml) =>
        DescriptorParser.Parse(new MemoryStream(Encoding.UTF8.GetBytes(xml)), "DiskDescriptor.xml");

    /// <summary>Every element as (path, attributes, own text), sorted: sibling order aside, the same document.</summary>
    private static List<string> Shape(string xml)
    {
        var root = XDocument.Parse(xml).Root!;
        var result = new List<string>();
        foreach (var e in root.DescendantsAndSelf())
        {
            string path = string.Join("/", e.AncestorsAndSelf().Reverse().Select(a => a.Name.LocalName));
            string attrs = string.Join(",", e.Attributes().Select(a => $"{a.Name}={a.Value}").Order(StringComparer.Ordinal));
            string text = string.Concat(e.Nodes().OfType<XText>().Select(t => t.Value)).Trim();
            result.Add($"{path}[{attrs}]={text}");
        }

        result.Sort(StringComparer.Ordinal);
        return result;
    }

    /// <summary>Extras without the original's indentation.</summary>
    private static string[] Normalized(IEnumerable<ExtraElement> extras) =>
        extras.Select(e => XElement.Parse(e.Xml, LoadOptions.None).ToString(SaveOptions.DisableFormatting) + " after " + e.After).ToArray();

    public static TheoryData<string> Samples() => new() { "expanding.hdd", "plain.hdd", "split.hdd" };

    [Theory]
    [MemberData(nameof(Samples))]
    public void Real_sample_keeps_every_unknown_element(string bundle)
    {
        string original = File.ReadAllText(Path.Combine(Support.Samples.Root, bundle, "DiskDescriptor.xml"));
        var parsed = Parse(original);
        string written = DescriptorWriter.Write(parsed);

        Assert.Equal(Shape(original), Shape(written));
        foreach (string needle in new[] { "<Encryption>", "<Miscellaneous>", "<CompatLevel>level2</CompatLevel>", "<PhysicalSectorSize>4096</PhysicalSectorSize>", "<Name>" + bundle[..^4] + "</Name>" })
        {
            Assert.Contains(needle, written, StringComparison.Ordinal);
        }

        string uid = XDocument.Parse(original).Descendants("UID").Single().Value;
        Assert.Contains($"<UID>{uid}</UID>", written, StringComparison.Ordinal);

        // Parsing the output gives the same model, and writing it again the same text.
        var again = Parse(written);
        Assert.Equal(Normalized(parsed.Parameters.Extras), Normalized(again.Parameters.Extras));
        Assert.Equal(Normalized(parsed.Extras), Normalized(again.Extras));
        Assert.Equal(parsed.Storages.Length, again.Storages.Length);
        Assert.Equal(DescriptorWriter.Write(again), written);
        var tree = SnapshotTree.Build(again, "DiskDescriptor.xml");
        Assert.Equal(DescriptorBuilder.PredefinedTop, tree.Top);
    }

    [Fact]
    public void Unknown_elements_everywhere_survive_a_rewrite()
    {
        var root = new Guid("aaaaaaaa-1111-4111-8111-111111111111");
        var b = new DescriptorBuilder(4096) { UnknownElementsEverywhere = true, TopGuid = DescriptorBuilder.PredefinedTop, RootName = "Virtuozzo_disk_image" };
        b.Storage(0, 2048).Image(root, "Plain", "r0.hds").Image(DescriptorBuilder.PredefinedTop, "Compressed", "t0.hds");
        b.Storage(2048, 4096).Image(root, "Compressed", "r1.hds").Image(DescriptorBuilder.PredefinedTop, "Compressed", "t1.hds");
        b.Chain(root, DescriptorBuilder.PredefinedTop);
        string original = b.Build();

        string written = DescriptorWriter.Write(Parse(original));
        Assert.Equal(Shape(original), Shape(written));
        Assert.StartsWith("<?xml", written, StringComparison.Ordinal);
        Assert.Contains("<Virtuozzo_disk_image Version=\"1.0\">", written, StringComparison.Ordinal);
        Assert.Equal(written, DescriptorWriter.Write(Parse(written)));
    }

    [Fact]
    public void Known_elements_are_written_in_the_spec_order()
    {
        var b = new DescriptorBuilder(2048);
        b.SingleStorage(2048, (DescriptorBuilder.PredefinedTop, "Compressed", "a.hds")).Shot(DescriptorBuilder.PredefinedTop, Guid.Empty);
        // Reverse the root's children: the writer restores Disk_Parameters, StorageData, Snapshots.
        b.Mutate(r =>
        {
            var children = r.Elements().Reverse().ToList();
            r.RemoveNodes();
            r.Add(children);
        });
        string written = DescriptorWriter.Write(Parse(b.Build()));
        var names = XDocument.Parse(written).Root!.Elements().Select(e => e.Name.LocalName).ToArray();
        Assert.Equal(["Disk_Parameters", "StorageData", "Snapshots"], names);
    }
}
