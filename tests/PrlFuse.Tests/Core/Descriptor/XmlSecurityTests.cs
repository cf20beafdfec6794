using System.Diagnostics;
using System.Text;
using PrlFuse.Core;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Engine;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.Descriptor;

/// <summary>DiskDescriptor.xml is untrusted input: no DTDs, no entities, a size cap.</summary>
public sealed class XmlSecurityTests : IDisposable
{
    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    private static string ValidBody()
    {
        var b = new DescriptorBuilder(2048) { Declaration = false };
        b.SingleStorage(2048, (DescriptorBuilder.PredefinedTop, "Compressed", "a.hds")).Shot(DescriptorBuilder.PredefinedTop, Guid.Empty);
        return b.Build();
    }

    /// <summary>A valid descriptor with an internal subset, and an entity used in the Name element.</summary>
    private static string WithDoctype(string doctype, string entityUse) =>
        "<?xml version='1.0' encoding='UTF-8'?>\n" + doctype + "\n" +
        ValidBody().Replace("<Padding>0</Padding>", $"<Padding>0</Padding><Name>{entityUse}</Name>", StringComparison.Ordinal);

    [Fact]
    public void External_entity_is_refused_and_its_file_not_read()
    {
        string xml = WithDoctype("<!DOCTYPE Parallels_disk_image [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>", "&xxe;");
        string folder = _temp.Folder("xxe.hdd");
        string path = Path.Combine(folder, "DiskDescriptor.xml");
        File.WriteAllText(path, xml);

        var e = Assert.Throws<DescriptorException>(() => DescriptorParser.ParseFile(path));
        Assert.Equal(path, e.File);
        Assert.Contains("DTD", e.Problem, StringComparison.Ordinal);
        Assert.Contains("refused", e.Problem, StringComparison.Ordinal);
        Assert.DoesNotContain("root:", e.ToString(), StringComparison.Ordinal);

        var e2 = Assert.Throws<DescriptorException>(() => VirtualDisk.Open(folder).Dispose());
        Assert.Contains("DTD", e2.Problem, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("<!DOCTYPE Parallels_disk_image SYSTEM \"file://{0}\">", "x")]
    [InlineData("<!DOCTYPE Parallels_disk_image [<!ENTITY xxe SYSTEM \"file://{0}\">]>", "&xxe;")]
    [InlineData("<!DOCTYPE Parallels_disk_image [<!ENTITY % p SYSTEM \"file://{0}\"> %p;]>", "x")]
    public void Entity_files_are_never_opened(string doctypeFormat, string use)
    {
        // A FIFO with no writer: opening it for reading blocks, so a parser that touches it never returns.
        string fifo = _temp.Combine("trap.fifo");
        using (var mk = Process.Start(new ProcessStartInfo("mkfifo", [fifo]) { UseShellExecute = false })!)
        {
            mk.WaitForExit();
            Assert.Equal(0, mk.ExitCode);
        }

        string xml = WithDoctype(string.Format(System.Globalization.CultureInfo.InvariantCulture, doctypeFormat, fifo), use);
        Exception? outcome = null;
        var parser = new Thread(() =>
        {
            try
            {
                DescriptorParser.Parse(new MemoryStream(Encoding.UTF8.GetBytes(xml)), "d.xml");
            }
            catch (Exception ex)
            {
                outcome = ex;
            }
        })
        { IsBackground = true };
        parser.Start();
        if (!parser.Join(TimeSpan.FromSeconds(20)))
        {
            // Release the blocked reader so the test host can go on, then fail.
            using (new FileStream(fifo, FileMode.Open, FileAccess.Write))
            {
            }

            Assert.Fail("the parser opened the external entity's file");
        }

        var e = Assert.IsType<DescriptorException>(outcome);
        Assert.Contains("DTD", e.Problem, StringComparison.Ordinal);
    }

    [Fact]
    public void Entity_expansion_bomb_is_refused_quickly()
    {
        var sb = new StringBuilder("<!DOCTYPE Parallels_disk_image [<!ENTITY lol0 \"lollollollollollollollollollol\">");
        for (int i = 1; i <= 12; i++)
        {
            sb.Append(EntityStart(i)).Append(string.Concat(Enumerable.Repeat($"&lol{i - 1};", 10))).Append("\">");
        }

        sb.Append("]>");
        string xml = WithDoctype(sb.ToString(), "&lol12;");
        var watch = Stopwatch.StartNew();
        var e = Assert.Throws<DescriptorException>(() => DescriptorParser.Parse(new MemoryStream(Encoding.UTF8.GetBytes(xml)), "bomb.xml"));
        watch.Stop();
        Assert.Contains("DTD", e.Problem, StringComparison.Ordinal);
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(2), $"took {watch.Elapsed}");

        static string EntityStart(int i) => $"<!ENTITY lol{i} \"";
    }

    [Fact]
    public void Descriptor_over_the_size_cap_is_refused()
    {
        string folder = _temp.Folder("big.hdd");
        string path = Path.Combine(folder, "DiskDescriptor.xml");
        string body = ValidBody();
        string padding = "<!--" + new string('x', (int)DescriptorParser.MaxDescriptorBytes) + "-->";
        File.WriteAllText(path, body.Replace("<Disk_Parameters>", "<Disk_Parameters>" + padding, StringComparison.Ordinal));
        Assert.True(new FileInfo(path).Length > DescriptorParser.MaxDescriptorBytes);

        var watch = Stopwatch.StartNew();
        var e = Assert.Throws<DescriptorException>(() => DescriptorParser.ParseFile(path));
        Assert.Contains($"more than the {DescriptorParser.MaxDescriptorBytes}", e.Problem, StringComparison.Ordinal);
        var e2 = Assert.Throws<DescriptorException>(() => VirtualDisk.Open(folder).Dispose());
        Assert.Contains("more than", e2.Problem, StringComparison.Ordinal);
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(2), $"took {watch.Elapsed}");

        // A stream (no file length to check first) is cut off by the character cap.
        var e3 = Assert.Throws<DescriptorException>(() => DescriptorParser.Parse(File.OpenRead(path), path));
        Assert.Equal(path, e3.File);
    }

    [Fact]
    public void Descriptor_just_under_the_cap_still_parses()
    {
        string body = ValidBody();
        int room = (int)DescriptorParser.MaxDescriptorBytes - body.Length - 100;
        string xml = body.Replace("<Disk_Parameters>", "<Disk_Parameters><!--" + new string('x', room) + "-->", StringComparison.Ordinal);
        var d = DescriptorParser.Parse(new MemoryStream(Encoding.UTF8.GetBytes(xml)), "ok.xml");
        Assert.Equal(2048, d.Parameters.DiskSizeSectors);
    }
}
