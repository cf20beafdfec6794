using System.Globalization;
using System.Text;
using System.Xml;
using System.Xml.Linq;

namespace PrlFuse.Tests.Fuzz;

/// <summary>
/// Mutates DiskDescriptor.xml: values (negative, huge, non-numeric, GUID garbage, control characters, paths),
/// structure (remove, duplicate, reorder, nest, rename, unknown elements, a consistent but absurd disk size), then
/// text (truncation, byte flips, a DTD, very long text, deep nesting) and encoding (UTF-16 with BOM, UTF-8 BOM, invalid
/// UTF-8, CRLF, a lying encoding declaration).
/// </summary>
public static class DescriptorMutator
{
    private static readonly string[] NumberValues =
    [
        "-1", "0", "1", "-9223372036854775808", "9223372036854775807", "18014398509481983", "18014398509481984",
        "99999999999999999999999", "abc", "1e3", "0x10", " 12 ", "+5", "1,000", "1.5", "", " ", "\u0661\u0662", "\uff11",
        "4294967296", "2147483647", "2147483648", "63", "512", "2048", "4194304", "-0", "00000000000000000000016",
    ];

    private static readonly string[] GuidValues =
    [
        "{}", "{00000000-0000-0000-0000-000000000000}", "5fbaabe3-6958-40ff-92a7-860e329aab41", "{5fbaabe3-6958-40ff-92a7-860e329aab41}",
        "{704718e1-2314-44c8-9087-d78ed36b0f4e}", "{5fbaabe3-6958-40ff-92a7-860e329aab4}", "{5FBAABE3-6958-40FF-92A7-860E329AAB41}",
        "(5fbaabe3-6958-40ff-92a7-860e329aab41)", "5fbaabe3695840ff92a7860e329aab41", "{5fbaabe3-6958-40ff-92a7-860e329aab41",
        "{11111111-2222-3333-4444-555555555551}", "{11111111-2222-3333-4444-555555555552}", "{11111111-2222-3333-4444-555555555553}",
        "{zzzzzzzz-6958-40ff-92a7-860e329aab41}", "{5fbaabe3-6958-40ff-92a7-860e329aab41}\n{x}", "{0x5fbaabe3,0x6958,0x40ff,{0x92,0xa7,0x86,0x0e,0x32,0x9a,0xab,0x41}}",
    ];

    private static readonly string[] TextValues =
    [
        "", " ", "Plain", "Compressed", "compressed", "Raw", "../x.hds", "/", ".", "..", "DiskDescriptor.xml", "/dev/null", "/dev/zero",
        "nonexistent.hds", "a\nb", "line1\r\nline2", "tab\there", "x\u0001y", "\u00e9\u4e2d\ud83d\ude00.hds", "/nonexistent/dir/single.hds",
        "%s%n%x", "\u202eshd.exe", "single.hds/", "./single.hds", "chain-top.hds", "s0-base.hds", "plain-root.hds",
    ];

    private static readonly string[] KnownNames =
    [
        "Parallels_disk_image", "Disk_Parameters", "Disk_size", "Cylinders", "Heads", "Sectors", "Padding", "StorageData", "Storage",
        "Start", "End", "Blocksize", "Image", "GUID", "Type", "File", "Snapshots", "TopGUID", "Shot", "ParentGUID", "Virtuozzo_disk_image",
    ];

    public static string Mutate(ref byte[] data, Random r)
    {
        var notes = new List<string>();
        int structural = r.Next(4) == 0 ? 0 : r.Next(1, 4);
        // XDocument.Load is superlinear in nesting depth: an earlier "deep nesting" mutation would stall the mutator.
        if (structural > 0 && data.Length < 256 << 10 && TryParse(data, out var doc))
        {
            for (int i = 0; i < structural; i++)
            {
                notes.Add(Structural(doc!.Root!, r));
            }

            try
            {
                data = Serialize(doc!);
            }
            catch (Exception e) when (e is XmlException or ArgumentException or InvalidOperationException)
            {
                // A tree XLinq will not write (clashing namespaces...): keep the bytes as they were.
                notes.Add($"(not written: {e.GetType().Name})");
            }
        }

        if (r.Next(3) == 0 || structural == 0)
        {
            notes.Add(Text(ref data, r));
        }

        if (r.Next(4) == 0)
        {
            notes.Add(Encode(ref data, r));
        }

        return "xml: " + string.Join("; ", notes);
    }

    /// <summary>Writes the tree back as UTF-8, control characters and all (the parser must refuse them, not us).</summary>
    private static byte[] Serialize(XDocument doc)
    {
        using var stream = new MemoryStream();
        var settings = new XmlWriterSettings { CheckCharacters = false, Encoding = new UTF8Encoding(false), Indent = true };
        using (var writer = XmlWriter.Create(stream, settings))
        {
            doc.Save(writer);
        }

        return stream.ToArray();
    }

    private static bool TryParse(byte[] data, out XDocument? doc)
    {
        try
        {
            using var stream = new MemoryStream(data);
            using var reader = XmlReader.Create(stream, new XmlReaderSettings { DtdProcessing = DtdProcessing.Prohibit, XmlResolver = null });
            doc = XDocument.Load(reader);
            doc.Declaration ??= new XDeclaration("1.0", "UTF-8", null);
            doc.Declaration.Encoding = "UTF-8";
            return doc.Root is not null;
        }
        catch (XmlException)
        {
            doc = null;
            return false;
        }
    }

    private static string Structural(XElement root, Random r)
    {
        var all = root.DescendantsAndSelf().ToList();
        var leaves = all.Where(e => !e.HasElements).ToList();
        var element = all[r.Next(all.Count)];
        switch (r.Next(14))
        {
            case < 4:
            {
                var leaf = leaves[r.Next(leaves.Count)];
                string value = ValueFor(leaf.Name.LocalName, r);
                leaf.Value = value;
                return $"<{leaf.Name.LocalName}> = \"{Show(value)}\"";
            }

            case 4:
                if (element != root)
                {
                    element.Remove();
                }

                return $"removed <{element.Name.LocalName}>";
            case 5:
                if (element != root)
                {
                    element.AddAfterSelf(new XElement(element));
                }

                return $"duplicated <{element.Name.LocalName}>";
            case 6:
            {
                var children = element.Elements().ToList();
                foreach (var c in children)
                {
                    c.Remove();
                }

                element.Add(children.OrderBy(_ => r.Next()));
                return $"reordered children of <{element.Name.LocalName}>";
            }

            case 7:
            {
                // Nest: move an element into a sibling or wrap it.
                if (element == root)
                {
                    return "nest: root";
                }

                var sibling = element.Parent!.Elements().Where(e => e != element).ToList();
                element.Remove();
                if (sibling.Count > 0 && r.Next(2) == 0)
                {
                    var target = sibling[r.Next(sibling.Count)];
                    target.Add(element);
                    return $"moved <{element.Name.LocalName}> into <{target.Name.LocalName}>";
                }

                var parent = all[r.Next(all.Count)];
                if (parent == element || parent.Ancestors().Contains(element))
                {
                    parent = root;
                }

                parent.Add(new XElement("Wrapper", element));
                return $"wrapped <{element.Name.LocalName}> into <{parent.Name.LocalName}>";
            }

            case 8:
            {
                var unknown = new XElement(r.Next(2) == 0 ? "Unknown_" + r.Next(100) : KnownNames[r.Next(KnownNames.Length)], new XAttribute("a", "b"), ValueFor("x", r));
                element.Add(unknown);
                return $"added <{unknown.Name.LocalName}> to <{element.Name.LocalName}>";
            }

            case 9:
            {
                string name = KnownNames[r.Next(KnownNames.Length)];
                element.Name = name;
                return $"renamed to <{name}>";
            }

            case 10:
            {
                // A consistent disk size: Disk_size, the last storage's End and the geometry agree, so the size passes
                // the descriptor's checks and reaches the images and the readers.
                string[] sizes = ["1", "8193", "4294967295", "4294967296", "2251799813685248", "18014398509481983", "65536", "32767"];
                string size = sizes[r.Next(sizes.Length)];
                root.Descendants("Disk_size").FirstOrDefault()?.SetValue(size);
                root.Descendants("Cylinders").FirstOrDefault()?.SetValue(size);
                root.Descendants("Heads").FirstOrDefault()?.SetValue("1");
                root.Descendants("Sectors").FirstOrDefault()?.SetValue("1");
                var ends = root.Descendants("End").ToList();
                if (ends.Count > 0)
                {
                    ends.OrderBy(e => long.TryParse(e.Value, out long v) ? v : 0).Last().SetValue(size);
                }

                return $"consistent disk size {size}";
            }

            case 11:
            {
                string v = new[] { "1.0", "1.1", "2.0", "", " 1.0 ", "1.00" }[r.Next(6)];
                if (r.Next(4) == 0)
                {
                    root.Attribute("Version")?.Remove();
                    return "removed Version";
                }

                root.SetAttributeValue("Version", v);
                return $"Version = \"{v}\"";
            }

            case 12:
            {
                // Swap two values of the same kind (GUIDs between shots, Files between images...).
                var leaf = leaves[r.Next(leaves.Count)];
                var same = leaves.Where(e => e.Name == leaf.Name && e != leaf).ToList();
                if (same.Count == 0)
                {
                    return "swap: nothing";
                }

                var other = same[r.Next(same.Count)];
                (leaf.Value, other.Value) = (other.Value, leaf.Value);
                return $"swapped two <{leaf.Name.LocalName}>";
            }

            default:
                root.Name = XName.Get(root.Name.LocalName, "urn:x-" + r.Next(10));
                return "root in a namespace";
        }
    }

    private static string ValueFor(string name, Random r)
    {
        return name switch
        {
            "GUID" or "ParentGUID" or "TopGUID" when r.Next(4) != 0 => GuidValues[r.Next(GuidValues.Length)],
            "File" or "Type" when r.Next(4) != 0 => TextValues[r.Next(TextValues.Length)],
            "Disk_size" or "Cylinders" or "Heads" or "Sectors" or "Padding" or "Start" or "End" or "Blocksize" when r.Next(4) != 0 => NumberValues[r.Next(NumberValues.Length)],
            _ => r.Next(3) switch
            {
                0 => NumberValues[r.Next(NumberValues.Length)],
                1 => GuidValues[r.Next(GuidValues.Length)],
                _ => TextValues[r.Next(TextValues.Length)],
            },
        };
    }

    private static string Text(ref byte[] data, Random r)
    {
        string text = Encoding.UTF8.GetString(data);
        switch (r.Next(10))
        {
            case 0:
            {
                int at = r.Next(data.Length + 1);
                Array.Resize(ref data, at);
                return $"truncated to {at} bytes";
            }

            case 1:
            {
                for (int i = 0; i < r.Next(1, 5) && data.Length > 0; i++)
                {
                    data[r.Next(data.Length)] ^= (byte)(1 << r.Next(8));
                }

                return "byte flips";
            }

            case 2:
            {
                string dtd = new[]
                {
                    "<!DOCTYPE Parallels_disk_image [<!ENTITY x \"y\">]>",
                    "<!DOCTYPE r [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\">]>",
                    "<!DOCTYPE r SYSTEM \"file:///etc/passwd\">",
                }[r.Next(3)];
                data = Encoding.UTF8.GetBytes(InsertAfterDeclaration(text, dtd));
                return "DTD";
            }

            case 3:
            {
                int length = new[] { 10_000, 1 << 20, (3 << 20) + 1000, (4 << 20) + 1 }[r.Next(4)];
                string filler = new(r.Next(2) == 0 ? 'x' : '9', length);
                data = Encoding.UTF8.GetBytes(ReplaceFirstValue(text, r.Next(2) == 0 ? "File" : "Disk_size", filler));
                return $"very long text ({length} chars)";
            }

            case 4:
            {
                int depth = new[] { 100, 10_000, 100_000, 500_000 }[r.Next(4)];
                var sb = new StringBuilder(depth * 8);
                for (int i = 0; i < depth; i++)
                {
                    sb.Append("<a>");
                }

                for (int i = 0; i < depth; i++)
                {
                    sb.Append("</a>");
                }

                string parent = new[] { "Snapshots", "Disk_Parameters", "StorageData", "Image", "Shot" }[r.Next(5)];
                data = Encoding.UTF8.GetBytes(InsertInto(text, parent, sb.ToString()));
                return $"nesting {depth} deep in <{parent}>";
            }

            case 5:
            {
                // Character references, CDATA, comments inside values.
                string[] forms = ["&#x31;&#x36;&#x33;&#x38;&#x34;", "<![CDATA[16384]]>", "163<!-- c -->84", "&amp;", "&#0;", "&#xD800;", "&lt;x&gt;", "&undefined;"];
                string form = forms[r.Next(forms.Length)];
                data = Encoding.UTF8.GetBytes(ReplaceFirstValue(text, new[] { "Disk_size", "File", "GUID", "End" }[r.Next(4)], form));
                return $"value as {form}";
            }

            case 6:
            {
                // Invalid UTF-8 somewhere.
                byte[][] bad = [[0xFF], [0xC0, 0x80], [0xED, 0xA0, 0x80], [0xF8, 0x88, 0x80, 0x80, 0x80], [0xE2, 0x82], [0x00]];
                var b = bad[r.Next(bad.Length)];
                int at = r.Next(data.Length + 1);
                data = [.. data.AsSpan(0, at), .. b, .. data.AsSpan(at)];
                return $"invalid UTF-8 at {at}";
            }

            case 7:
            {
                string decl = new[]
                {
                    "<?xml version='1.0' encoding='UTF-16'?>", "<?xml version='1.0' encoding='utf-7'?>", "<?xml version='1.0' encoding='bogus'?>",
                    "<?xml version='1.0' encoding='ISO-8859-1'?>", "<?xml version='1.0' encoding='UTF-32'?>", "<?xml version='1.0' encoding='IBM037'?>",
                    "<?xml version='1.1'?>", "<?xml version='2.0'?>", string.Empty, "<?xml version='1.0' encoding='shift_jis'?>",
                }[r.Next(10)];
                int end = text.IndexOf("?>", StringComparison.Ordinal);
                text = end >= 0 && text.StartsWith("<?xml", StringComparison.Ordinal) ? decl + text[(end + 2)..] : decl + text;
                data = Encoding.UTF8.GetBytes(text);
                return $"declaration {decl}";
            }

            case 8:
            {
                // Garbage before or after the root.
                string junk = new[] { "junk", "<second/>", "\0", "<?pi x?>", "<!-- tail -->", "]]>" }[r.Next(6)];
                data = Encoding.UTF8.GetBytes(r.Next(2) == 0 ? text + junk : junk + text);
                return $"junk \"{Show(junk)}\" around the root";
            }

            default:
            {
                int at = r.Next(data.Length + 1);
                int length = r.Next(1, 64);
                var junk = new byte[length];
                r.NextBytes(junk);
                data = [.. data.AsSpan(0, at), .. junk, .. data.AsSpan(at)];
                return $"{length} random bytes at {at}";
            }
        }
    }

    private static string Encode(ref byte[] data, Random r)
    {
        string text = Encoding.UTF8.GetString(data);
        switch (r.Next(6))
        {
            case 0:
                data = [.. Encoding.Unicode.GetPreamble(), .. Encoding.Unicode.GetBytes(text)];
                return "UTF-16LE with BOM";
            case 1:
                data = [.. Encoding.BigEndianUnicode.GetPreamble(), .. Encoding.BigEndianUnicode.GetBytes(text)];
                return "UTF-16BE with BOM";
            case 2:
                data = Encoding.Unicode.GetBytes(text);
                return "UTF-16LE without BOM";
            case 3:
                data = [0xEF, 0xBB, 0xBF, .. data];
                return "UTF-8 BOM";
            case 4:
                data = Encoding.UTF8.GetBytes(text.Replace("\r\n", "\n", StringComparison.Ordinal).Replace("\n", "\r\n", StringComparison.Ordinal));
                return "CRLF";
            default:
                data = Encoding.UTF8.GetBytes(text.Replace("\r\n", "\n", StringComparison.Ordinal).Replace("\n", "\r", StringComparison.Ordinal));
                return "CR only";
        }
    }

    private static string InsertAfterDeclaration(string text, string what)
    {
        int end = text.StartsWith("<?xml", StringComparison.Ordinal) ? text.IndexOf("?>", StringComparison.Ordinal) + 2 : 0;
        return text[..end] + what + text[end..];
    }

    private static string InsertInto(string text, string element, string what)
    {
        int at = text.IndexOf("<" + element + ">", StringComparison.Ordinal);
        if (at < 0)
        {
            at = text.IndexOf("<Parallels_disk_image", StringComparison.Ordinal);
            at = at < 0 ? 0 : text.IndexOf('>', at) + 1;
            return text[..at] + what + text[at..];
        }

        at += element.Length + 2;
        return text[..at] + what + text[at..];
    }

    private static string ReplaceFirstValue(string text, string element, string value)
    {
        string open = "<" + element + ">";
        int start = text.IndexOf(open, StringComparison.Ordinal);
        int end = start < 0 ? -1 : text.IndexOf("</" + element + ">", start, StringComparison.Ordinal);
        if (start < 0 || end < 0)
        {
            return text;
        }

        return text[..(start + open.Length)] + value + text[end..];
    }

    private static string Show(string s) =>
        s.Length > 40 ? s[..40] + "..." : string.Concat(s.Select(c => c < 0x20 ? $"\\x{(int)c:x2}" : c.ToString(CultureInfo.InvariantCulture)));
}
