using System.Text;
using System.Xml.Linq;
using PrlFuse.Core;
using PrlFuse.Core.Descriptor;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.Descriptor;

/// <summary>DiskDescriptor.xml parsing, validation and top selection (shared/specs/prl-xml.rst).</summary>
public sealed class DescriptorTests
{
    private const string FileName = "/bundle/DiskDescriptor.xml";

    private static readonly Guid Root = new("aaaaaaaa-1111-4111-8111-111111111111");
    private static readonly Guid Mid = new("bbbbbbbb-2222-4222-8222-222222222222");
    private static readonly Guid Other = new("cccccccc-3333-4333-8333-333333333333");
    private static readonly Guid Top = DescriptorBuilder.PredefinedTop;

    private static string F(Guid g) => g.ToString("B");

    public static DiskDescriptor Parse(string xml) =>
        DescriptorParser.Parse(new MemoryStream(Encoding.UTF8.GetBytes(xml)), FileName);

    public static SnapshotTree Tree(DescriptorBuilder b) => SnapshotTree.Build(Parse(b.Build()), FileName);

    /// <summary>One storage of 4096 sectors; snapshots Root -> Mid -> predefined top.</summary>
    private static DescriptorBuilder Valid()
    {
        var b = new DescriptorBuilder(4096);
        b.Storage(0, 4096, 2048).Image(Root, "Plain", "root.hds").Image(Mid, "Compressed", "mid.hds").Image(Top, "Compressed", "top.hds");
        b.Chain(Root, Mid, Top);
        return b;
    }

    private static DescriptorException Refused(DescriptorBuilder b, string expected)
    {
        var e = Assert.Throws<DescriptorException>(() => Tree(b));
        Assert.Equal(FileName, e.File);
        Assert.Contains(expected, e.Problem, StringComparison.Ordinal);
        Assert.StartsWith(FileName + ": ", e.Message, StringComparison.Ordinal);
        return e;
    }

    [Fact]
    public void Every_element_of_the_spec_is_parsed()
    {
        var b = new DescriptorBuilder(3 * 2048) { Cylinders = 12, Heads = 16, SectorsPerTrack = 32, TopGuid = Mid };
        b.Storage(0, 2048, 512).Image(Root, "Plain", "root-0.hds").Image(Mid, "Compressed", "/abs/mid-0.hds");
        b.Storage(2048, 6144, 2048).Image(Mid, "Compressed", "sub/mid-1.hds").Image(Root, "Compressed", "root-1.hds");
        b.Shot(Mid, Root).Shot(Root, Guid.Empty);
        var d = Parse(b.Build());

        Assert.Equal("Parallels_disk_image", d.RootElementName);
        Assert.Equal("1.0", d.Version);
        Assert.Equal((6144L, 12L, 16L, 32L, 0L), (d.Parameters.DiskSizeSectors, d.Parameters.Cylinders, d.Parameters.Heads, d.Parameters.Sectors, d.Parameters.Padding));
        Assert.Equal(6144L * 512, d.DiskSizeBytes);
        Assert.Equal(2, d.Storages.Length);
        Assert.Equal((0L, 2048L, 512L), (d.Storages[0].StartSector, d.Storages[0].EndSector, d.Storages[0].BlockSizeSectors));
        Assert.Equal((2048L, 6144L, 2048L), (d.Storages[1].StartSector, d.Storages[1].EndSector, d.Storages[1].BlockSizeSectors));
        Assert.Equal(
            [(Root, ImageType.Plain, "root-0.hds"), (Mid, ImageType.Compressed, "/abs/mid-0.hds")],
            d.Storages[0].Images.Select(i => (i.Guid, i.Type, i.File)).ToArray());
        Assert.Equal(
            [(Mid, ImageType.Compressed, "sub/mid-1.hds"), (Root, ImageType.Compressed, "root-1.hds")],
            d.Storages[1].Images.Select(i => (i.Guid, i.Type, i.File)).ToArray());
        Assert.Equal(Mid, d.Snapshots.TopGuid);
        Assert.Equal([(Mid, Root), (Root, Guid.Empty)], d.Snapshots.Shots.Select(s => (s.Guid, s.ParentGuid)).ToArray());

        var tree = SnapshotTree.Build(d, FileName);
        Assert.Equal(Root, tree.Root);
        Assert.Equal(Mid, tree.Top);
        Assert.Equal([Mid, Root], tree.ChainOf(Mid).ToArray());
        Assert.Empty(tree.Warnings);
    }

    [Fact]
    public void Guids_are_accepted_in_any_case_and_without_braces()
    {
        var b = new DescriptorBuilder(2048);
        b.Storage(0, 2048).Image(Root, "Compressed", "a.hds");
        b.Shot(Root, Guid.Empty);
        b.SetValue("GUID", Root.ToString("D").ToUpperInvariant(), 0);
        b.SetValue("GUID", "{" + Root.ToString("D").ToUpperInvariant() + "}", 1);
        var tree = Tree(b);
        Assert.Equal(Root, tree.Top);
    }

    [Fact]
    public void Disk_size_not_equal_to_chs_is_only_a_warning()
    {
        var b = Valid();
        b.Cylinders = 7;
        var tree = Tree(b);
        var warning = Assert.Single(tree.Warnings);
        Assert.Contains("Disk_size 4096 is not Cylinders*Heads*Sectors (7*16*32)", warning, StringComparison.Ordinal);
    }

    [Fact]
    public void Image_of_no_snapshot_is_a_warning()
    {
        var b = Valid();
        b.Storages[0].Image(Other, "Compressed", "stray.hds");
        var tree = Tree(b);
        Assert.Contains(tree.Warnings, w => w.Contains(F(Other), StringComparison.Ordinal) && w.Contains("stray.hds", StringComparison.Ordinal) && w.Contains("no snapshot", StringComparison.Ordinal));
    }

    // ---- refusals of the XML structure ----
    [Theory]
    [InlineData("2.0")]
    [InlineData("1.1")]
    [InlineData("")]
    public void Version_other_than_1_0(string version) =>
        Refused(Valid().Also(b => b.Version = version), $"descriptor Version {version} is not supported (only 1.0)");

    [Fact]
    public void Version_missing() =>
        Refused(Valid().Also(b => b.Version = null), "<Parallels_disk_image> has no Version attribute");

    [Fact]
    public void Wrong_root_element() =>
        Refused(Valid().Also(b => b.RootName = "Disk"), "root element is <Disk>, not <Parallels_disk_image>");

    [Theory]
    [InlineData("1")]
    [InlineData("2")]
    public void Padding_not_zero(string padding) =>
        Refused(Valid().Also(b => b.Padding = padding), $"Padding is {padding}; only 0 is supported");

    [Theory]
    [InlineData("Disk_Parameters", 0, "<Parallels_disk_image> has no <Disk_Parameters>")]
    [InlineData("Disk_size", 0, "<Disk_Parameters> has no <Disk_size>")]
    [InlineData("Cylinders", 0, "<Disk_Parameters> has no <Cylinders>")]
    [InlineData("Heads", 0, "<Disk_Parameters> has no <Heads>")]
    [InlineData("Sectors", 0, "<Disk_Parameters> has no <Sectors>")]
    [InlineData("Padding", 0, "<Disk_Parameters> has no <Padding>")]
    [InlineData("StorageData", 0, "<Parallels_disk_image> has no <StorageData>")]
    [InlineData("Storage", 0, "<StorageData> has no <Storage>")]
    [InlineData("Start", 0, "Storage 0 has no <Start>")]
    [InlineData("End", 0, "Storage 0 has no <End>")]
    [InlineData("Blocksize", 0, "Storage 0 has no <Blocksize>")]
    [InlineData("GUID", 1, "an <Image> of Storage 0 has no <GUID>")]
    [InlineData("Type", 1, "image {bbbbbbbb-2222-4222-8222-222222222222} has no <Type>")]
    [InlineData("File", 2, "image {5fbaabe3-6958-40ff-92a7-860e329aab41} has no <File>")]
    [InlineData("Snapshots", 0, "<Parallels_disk_image> has no <Snapshots>")]
    [InlineData("GUID", 4, "a <Shot> has no <GUID>")]
    [InlineData("ParentGUID", 1, "snapshot {bbbbbbbb-2222-4222-8222-222222222222} has no <ParentGUID>")]
    public void Missing_required_element(string element, int occurrence, string expected) =>
        Refused(Valid().Remove(element, occurrence), expected);

    [Fact]
    public void Storage_without_images() =>
        Refused(Valid().Mutate(r => r.Descendants("Image").Remove()), "Storage 0 has no <Image>");

    [Fact]
    public void Snapshots_without_shots() =>
        Refused(Valid().Mutate(r => r.Descendants("Shot").Remove()), "<Snapshots> has no <Shot>");

    [Theory]
    [InlineData("Disk_size", "abc", "<Disk_size> of Disk_Parameters is \"abc\", not a whole number")]
    [InlineData("Disk_size", "-5", "not a whole number")]
    [InlineData("Disk_size", "0", "Disk_size 0 is not a usable number of sectors")]
    [InlineData("Start", "x", "<Start> of Storage 0 is \"x\", not a whole number")]
    [InlineData("End", "0", "Storage 0 covers sectors [0, 0), which is empty or invalid")]
    [InlineData("Blocksize", "0", "Storage 0 has Blocksize 0")]
    [InlineData("Type", "Sparse", "has Type \"Sparse\"; expected Plain or Compressed")]
    [InlineData("File", " ", "has an empty <File>")]
    [InlineData("GUID", "not-a-guid", "<GUID> of an <Image> of Storage 0 is \"not-a-guid\", not a GUID")]
    [InlineData("ParentGUID", "{123}", "is \"{123}\", not a GUID")]
    public void Bad_values(string element, string value, string expected) =>
        Refused(Valid().SetValue(element, value), expected);

    [Fact]
    public void Element_given_twice() =>
        Refused(Valid().AddElement("Disk_Parameters", "<Disk_size>4096</Disk_size>"), "<Disk_Parameters> has <Disk_size> twice");

    [Fact]
    public void Malformed_xml() =>
        Assert.Contains("not well-formed XML", Assert.Throws<DescriptorException>(() => Parse("<Parallels_disk_image Version=\"1.0\"><Disk_Parameters>")).Problem, StringComparison.Ordinal);

    // ---- refusals of the snapshot tree ----
    [Fact]
    public void Unknown_parent_guid() =>
        Refused(Valid().SetValue("ParentGUID", F(Other), 2), $"snapshot {F(Top)} has ParentGUID {F(Other)}, which is no snapshot of this disk");

    [Fact]
    public void Unknown_top_guid() =>
        Refused(Valid().Also(b => b.TopGuid = Other), $"TopGUID {F(Other)} is no snapshot of this disk");

    [Fact]
    public void Duplicate_shot_guids()
    {
        var b = Valid();
        b.Shot(Mid, Root);
        Refused(b, $"snapshot {F(Mid)} is listed twice in <Snapshots>");
    }

    [Fact]
    public void Duplicate_image_guid_in_a_storage()
    {
        var b = Valid();
        b.Storages[0].Image(Mid, "Compressed", "again.hds");
        Refused(b, $"image {F(Mid)} is listed twice in storage 0");
    }

    [Fact]
    public void Shot_without_an_image_in_some_storage()
    {
        var b = new DescriptorBuilder(4096);
        b.Storage(0, 2048).Image(Root, "Compressed", "r0.hds").Image(Top, "Compressed", "t0.hds");
        b.Storage(2048, 4096).Image(Root, "Compressed", "r1.hds");
        b.Chain(Root, Top);
        Refused(b, $"snapshot {F(Top)} has no <Image> in storage 1 (sectors 2048-4096)");
    }

    [Fact]
    public void Several_roots()
    {
        var b = Valid();
        b.Storages[0].Image(Other, "Compressed", "other.hds");
        b.Shot(Other, Guid.Empty);
        var e = Refused(b, "several root snapshots");
        Assert.Contains(F(Root), e.Problem, StringComparison.Ordinal);
        Assert.Contains(F(Other), e.Problem, StringComparison.Ordinal);
    }

    [Fact]
    public void Cycle_beside_the_root()
    {
        var b = new DescriptorBuilder(2048);
        b.Storage(0, 2048).Image(Root, "Compressed", "r.hds").Image(Mid, "Compressed", "m.hds").Image(Other, "Compressed", "o.hds");
        b.Shot(Root, Guid.Empty).Shot(Mid, Other).Shot(Other, Mid);
        var e = Refused(b, "form a cycle and never reach the root");
        Assert.Contains(F(Mid), e.Problem, StringComparison.Ordinal);
        Assert.Contains(F(Other), e.Problem, StringComparison.Ordinal);
        Assert.DoesNotContain(F(Root), e.Problem, StringComparison.Ordinal);
    }

    [Fact]
    public void Self_parent_is_a_cycle()
    {
        var b = Valid();
        b.Storages[0].Image(Other, "Compressed", "o.hds");
        b.Shot(Other, Other);
        Refused(b, "form a cycle");
    }

    [Fact]
    public void Cycle_without_a_root()
    {
        var b = new DescriptorBuilder(2048);
        b.Storage(0, 2048).Image(Mid, "Compressed", "m.hds").Image(Other, "Compressed", "o.hds");
        b.Shot(Mid, Other).Shot(Other, Mid);
        Refused(b, "no snapshot is a root");
    }

    [Fact]
    public void All_zero_shot_guid()
    {
        var b = Valid();
        b.Shot(Guid.Empty, Root);
        Refused(b, "all-zero GUID");
    }

    [Fact]
    public void Backup_id_as_explicit_top()
    {
        var b = new DescriptorBuilder(2048) { TopGuid = DescriptorBuilder.BackupId };
        b.Storage(0, 2048).Image(Root, "Compressed", "r.hds").Image(DescriptorBuilder.BackupId, "Compressed", "b.hds");
        b.Chain(Root, DescriptorBuilder.BackupId);
        Refused(b, "the top snapshot has the backup GUID {704718e1-2314-44c8-9087-d78ed36b0f4e}");
    }

    [Fact]
    public void Backup_id_as_the_only_leaf()
    {
        var b = new DescriptorBuilder(2048);
        b.Storage(0, 2048).Image(Root, "Compressed", "r.hds").Image(DescriptorBuilder.BackupId, "Compressed", "b.hds");
        b.Chain(Root, DescriptorBuilder.BackupId);
        Refused(b, "backup GUID");
    }

    [Fact]
    public void Backup_id_as_a_normal_snapshot_is_fine()
    {
        var b = new DescriptorBuilder(2048);
        b.Storage(0, 2048).Image(Root, "Compressed", "r.hds").Image(DescriptorBuilder.BackupId, "Compressed", "b.hds").Image(Top, "Compressed", "t.hds");
        b.Chain(Root, DescriptorBuilder.BackupId, Top);
        var tree = Tree(b);
        Assert.Equal(Top, tree.Top);
        Assert.Equal([Top, DescriptorBuilder.BackupId, Root], tree.ChainOf(Top).ToArray());
    }

    [Fact]
    public void Plain_overlay_is_refused()
    {
        var b = new DescriptorBuilder(2048);
        b.Storage(0, 2048).Image(Root, "Compressed", "r.hds").Image(Top, "Plain", "t.hds");
        b.Chain(Root, Top);
        Refused(b, $"snapshot {F(Top)} is a Plain image in storage 0; only a root may be Plain");
    }

    [Fact]
    public void Storages_with_a_gap()
    {
        var b = new DescriptorBuilder(4096);
        b.Storage(0, 1000).Image(Root, "Compressed", "a.hds");
        b.Storage(1200, 4096).Image(Root, "Compressed", "b.hds");
        b.Shot(Root, Guid.Empty);
        Refused(b, "storages leave sectors [1000, 1200) of the disk uncovered (storage 1 starts at 1200)");
    }

    [Fact]
    public void Storages_not_starting_at_zero()
    {
        var b = new DescriptorBuilder(4096);
        b.Storage(8, 4096).Image(Root, "Compressed", "a.hds");
        b.Shot(Root, Guid.Empty);
        Refused(b, "storages leave sectors [0, 8) of the disk uncovered");
    }

    [Fact]
    public void Storages_overlapping()
    {
        var b = new DescriptorBuilder(4096);
        b.Storage(0, 2100).Image(Root, "Compressed", "a.hds");
        b.Storage(2048, 4096).Image(Root, "Compressed", "b.hds");
        b.Shot(Root, Guid.Empty);
        Refused(b, "storage 1 (sectors 2048-4096) overlaps the storage before it, which ends at 2100");
    }

    [Theory]
    [InlineData(4000L)]
    [InlineData(5000L)]
    public void Storages_not_ending_at_disk_size(long end)
    {
        var b = new DescriptorBuilder(4096);
        b.Storage(0, 2048).Image(Root, "Compressed", "a.hds");
        b.Storage(2048, end).Image(Root, "Compressed", "b.hds");
        b.Shot(Root, Guid.Empty);
        Refused(b, $"storages cover sectors [0, {end}) but Disk_size is 4096");
    }

    [Fact]
    public void Storages_listed_out_of_order_tile_the_disk()
    {
        var b = new DescriptorBuilder(4096);
        b.Storage(2048, 4096).Image(Root, "Compressed", "b.hds");
        b.Storage(0, 2048).Image(Root, "Compressed", "a.hds");
        b.Shot(Root, Guid.Empty);
        Assert.Equal(Root, Tree(b).Top);
    }

    // ---- top selection ----
    [Fact]
    public void Top_guid_wins_and_the_predefined_guid_is_then_a_normal_snapshot()
    {
        var b = new DescriptorBuilder(2048) { TopGuid = Other };
        b.Storage(0, 2048).Image(Root, "Compressed", "r.hds").Image(Top, "Compressed", "p.hds").Image(Other, "Compressed", "o.hds");
        b.Chain(Root, Top, Other);
        var tree = Tree(b);
        Assert.Equal(Other, tree.Top);
        Assert.Equal([Other, Top, Root], tree.ChainOf(Other).ToArray());
        Assert.Empty(tree.Warnings);
    }

    [Fact]
    public void Top_guid_on_an_inner_snapshot_is_served_with_a_warning()
    {
        var b = Valid();
        b.TopGuid = Mid;
        var tree = Tree(b);
        Assert.Equal(Mid, tree.Top);
        Assert.Contains(tree.Warnings, w => w.Contains("has child snapshots", StringComparison.Ordinal) && w.Contains(F(Mid), StringComparison.Ordinal));
    }

    [Fact]
    public void Predefined_guid_is_top_without_top_guid_even_beside_another_leaf()
    {
        var b = new DescriptorBuilder(2048);
        b.Storage(0, 2048).Image(Root, "Compressed", "r.hds").Image(Top, "Compressed", "p.hds").Image(Other, "Compressed", "o.hds");
        b.Shot(Other, Root).Shot(Top, Root).Shot(Root, Guid.Empty);
        Assert.Equal(Top, Tree(b).Top);
    }

    [Fact]
    public void Single_leaf_is_top_without_either()
    {
        var b = new DescriptorBuilder(2048);
        b.Storage(0, 2048).Image(Other, "Compressed", "o.hds").Image(Root, "Compressed", "r.hds").Image(Mid, "Compressed", "m.hds");
        // Leaf first, root last: file order does not matter.
        b.Shot(Other, Mid).Shot(Mid, Root).Shot(Root, Guid.Empty);
        var tree = Tree(b);
        Assert.Equal(Other, tree.Top);
        Assert.Equal(Root, tree.Root);
        Assert.Equal([Other, Mid, Root], tree.ChainOf(Other).ToArray());
    }

    [Fact]
    public void Two_leaves_without_either_is_an_error_listing_both()
    {
        var b = new DescriptorBuilder(2048);
        b.Storage(0, 2048).Image(Root, "Compressed", "r.hds").Image(Mid, "Compressed", "m.hds").Image(Other, "Compressed", "o.hds");
        b.Shot(Root, Guid.Empty).Shot(Mid, Root).Shot(Other, Root);
        var e = Refused(b, "the top is ambiguous: candidates are ");
        Assert.Contains(F(Mid), e.Problem, StringComparison.Ordinal);
        Assert.Contains(F(Other), e.Problem, StringComparison.Ordinal);
        Assert.Contains("TopGUID", e.Problem, StringComparison.Ordinal);
    }

    [Fact]
    public void Shot_order_does_not_matter()
    {
        var orders = new[] { new[] { 0, 1, 2 }, [2, 1, 0], [1, 2, 0], [2, 0, 1] };
        var shots = new[] { (Root, Guid.Empty), (Mid, Root), (Top, Mid) };
        foreach (var order in orders)
        {
            var b = new DescriptorBuilder(4096);
            b.Storage(0, 4096).Image(Top, "Compressed", "t.hds").Image(Root, "Plain", "r.hds").Image(Mid, "Compressed", "m.hds");
            foreach (int i in order)
            {
                b.Shot(shots[i].Item1, shots[i].Item2);
            }

            var tree = Tree(b);
            Assert.Equal(Top, tree.Top);
            Assert.Equal(Root, tree.Root);
            Assert.Equal([Top, Mid, Root], tree.ChainOf(Top).ToArray());
            Assert.Equal([Mid], tree.ChildrenOf(Root));
        }
    }

    // ---- tolerance ----
    [Fact]
    public void Unknown_elements_crlf_comments_blank_lines_and_virtuozzo_root_are_tolerated()
    {
        var plain = Parse(Valid().Build());
        var odd = Valid();
        odd.UnknownElementsEverywhere = true;
        odd.Crlf = true;
        odd.Comments = true;
        odd.BlankLines = true;
        odd.RootName = "Virtuozzo_disk_image";
        odd.TopGuid = Top;
        string xml = odd.Build();
        Assert.Contains("\r\n\r\n", xml, StringComparison.Ordinal);
        Assert.Contains("<!--", xml, StringComparison.Ordinal);
        Assert.Contains("<Unknown_0", xml, StringComparison.Ordinal);

        var d = Parse(xml);
        Assert.Equal("Virtuozzo_disk_image", d.RootElementName);
        Assert.Equal(plain.Parameters with { Extras = [] }, d.Parameters with { Extras = [] });
        Assert.Equal(
            plain.Storages.SelectMany(s => s.Images).Select(i => (i.Guid, i.Type, i.File)),
            d.Storages.SelectMany(s => s.Images).Select(i => (i.Guid, i.Type, i.File)));
        Assert.Equal(plain.Snapshots.Shots.Select(s => (s.Guid, s.ParentGuid)), d.Snapshots.Shots.Select(s => (s.Guid, s.ParentGuid)));
        Assert.NotEmpty(d.Extras);
        Assert.NotEmpty(d.Parameters.Extras);
        Assert.NotEmpty(d.StorageDataExtras);
        Assert.All(d.Storages, s => Assert.NotEmpty(s.Extras));
        Assert.All(d.Storages.SelectMany(s => s.Images), i => Assert.NotEmpty(i.Extras));
        Assert.NotEmpty(d.Snapshots.Extras);
        Assert.All(d.Snapshots.Shots, s => Assert.NotEmpty(s.Extras));

        var tree = SnapshotTree.Build(d, FileName);
        Assert.Equal(Top, tree.Top);
        Assert.Empty(tree.Warnings);
    }

    [Fact]
    public void Whitespace_around_values_is_trimmed()
    {
        var b = Valid();
        b.SetValue("Disk_size", "\n   4096  \t");
        b.SetValue("File", "  root.hds \r\n");
        var d = Parse(b.Build());
        Assert.Equal(4096, d.Parameters.DiskSizeSectors);
        Assert.Equal("root.hds", d.Storages[0].Images[0].File);
    }

    [Fact]
    public void Utf8_bom_and_no_declaration_are_fine()
    {
        var b = Valid();
        b.Declaration = false;
        byte[] bytes = [0xEF, 0xBB, 0xBF, .. Encoding.UTF8.GetBytes(b.Build())];
        var d = DescriptorParser.Parse(new MemoryStream(bytes), FileName);
        Assert.Equal(3, d.Snapshots.Shots.Length);
    }
}

internal static class BuilderExtensions
{
    /// <summary>Applies a change to a builder inline.</summary>
    public static DescriptorBuilder Also(this DescriptorBuilder b, Action<DescriptorBuilder> change)
    {
        change(b);
        return b;
    }
}
