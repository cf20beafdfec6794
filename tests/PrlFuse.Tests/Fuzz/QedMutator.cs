using System.Buffers.Binary;
using System.Text;
using PrlFuse.Core.Formats.Qed;

namespace PrlFuse.Tests.Fuzz;

/// <summary>
/// Mutates the bytes of a QED image where its structures are: every header field, the need-check flag, the backing
/// file name, L1 and L2 entries (found through the L1 table as it is now, so mutations stack), plus bit flips,
/// truncation and splices. Each mutation returns a short description for the report.
/// </summary>
public static class QedMutator
{
    /// <summary>(offset, width, name) of the header's fields, from the spec's names in one place.</summary>
    private static readonly (int Offset, int Width, string Name)[] HeaderFields =
    [
        (FieldLocations.ClusterSize, 4, "cluster_size"), (FieldLocations.TableSize, 4, "table_size"),
        (FieldLocations.HeaderSize, 4, "header_size"), (FieldLocations.Features, 8, "features"),
        (FieldLocations.CompatFeatures, 8, "compat_features"), (FieldLocations.AutoclearFeatures, 8, "autoclear_features"),
        (FieldLocations.L1TableOffset, 8, "l1_table_offset"), (FieldLocations.ImageSize, 8, "image_size"),
        (FieldLocations.BackingFilenameOffset, 4, "backing_filename_offset"), (FieldLocations.BackingFilenameSize, 4, "backing_filename_size"),
    ];

    private static readonly ulong[] Interesting =
    [
        0, 1, 2, 3, 4, 8, 16, 17, 32, 0x7F, 0x80, 0xFF, 0x100, 511, 512, 513, 4095, 4096, 4097, 0xFFFF, 0x10000, 1 << 20,
        1 << 26, 1 << 27, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 0x1_0000_0000, 0x00FF_FFFF_FFFF_F000,
        0x4000_0000_0000_0000, 0x7FFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000, ulong.MaxValue,
    ];

    /// <summary>Backing names worth trying: escapes, devices, protocols, the image itself (a cycle), junk.</summary>
    private static readonly string[] BackingNames =
    [
        "", "/", ".", "..", "../x.qed", "/dev/zero", "/dev/null", "/proc/self/mem", "json:{\"driver\":\"null-co\"}", "nbd://localhost/x",
        "http://example.com/x", "missing.qed", "a\nb", "\u00e9t\u00e9.qed", "base.raw", "mid.qed", "top.qed", "pbase.hds", "qbase.qed",
    ];

    /// <summary>Mutates <paramref name="data"/>, the image stored as <paramref name="fileName"/> (a backing name may point back at it).</summary>
    public static string Mutate(ref byte[] data, Random r, string fileName)
    {
        int pick = r.Next(100);
        return pick switch
        {
            < 8 => ClusterImageMutations.BitFlips(data, r),
            < 30 => HeaderField(data, r),
            < 36 => NeedCheck(data, r),
            < 44 => BackingName(ref data, r, fileName),
            < 58 => L1Entry(data, r),
            < 88 => L2Entry(data, r),
            < 95 => Resize(ref data, r),
            _ => ClusterImageMutations.Splice(data, r, Read(data).ClusterBits),
        };
    }

    private readonly record struct Layout(int ClusterBits, long TableEntries, long L1Offset, long Length)
    {
        public long ClusterBytes => 1L << ClusterBits;

        public long Clusters => Math.Max(1, Length >> ClusterBits);
    }

    private static Layout Read(byte[] d)
    {
        if (d.Length < FieldLocations.HeaderBytes)
        {
            return new Layout(12, 0, 0, d.Length);
        }

        uint cluster = U32(d, FieldLocations.ClusterSize);
        int bits = cluster == 0 ? 12 : Math.Clamp(System.Numerics.BitOperations.Log2(cluster), 12, 26);
        long table = Math.Clamp(U32(d, FieldLocations.TableSize), 1, 16);
        return new Layout(bits, (table << bits) / FieldLocations.EntrySize, (long)Math.Min(U64(d, FieldLocations.L1TableOffset), (ulong)d.Length), d.Length);
    }

    private static ulong Value(Random r, Layout l, ulong current) => ClusterImageMutations.Value(r, Interesting, l.ClusterBits, l.Length, current);

    private static string HeaderField(byte[] d, Random r)
    {
        var l = Read(d);
        var (offset, width, name) = HeaderFields[r.Next(HeaderFields.Length)];
        if (d.Length < offset + width)
        {
            return "header: too short";
        }

        ulong current = Read(d, offset, width);
        ulong v = name switch
        {
            "cluster_size" => r.Next(3) == 0 ? Value(r, l, current) : 1UL << r.Next(8, 30),
            "table_size" or "header_size" => r.Next(3) == 0 ? Value(r, l, current) : (ulong)r.Next(0, 33),
            "features" or "compat_features" or "autoclear_features" => current ^ (1UL << r.Next(r.Next(2) == 0 ? 4 : 64)),
            "image_size" => r.Next(2) == 0 ? current + (ulong)(r.Next(-4, 5) * 512) : Value(r, l, current),
            _ => Value(r, l, current),
        };
        Write(d, offset, width, v);
        return $"header {name} = 0x{v:x}";
    }

    /// <summary>The need-check flag: an image left as if a crash came mid-allocation, to be checked on open.</summary>
    private static string NeedCheck(byte[] d, Random r)
    {
        if (d.Length < FieldLocations.HeaderBytes)
        {
            return "need-check: too short";
        }

        ulong features = U64(d, FieldLocations.Features);
        features = r.Next(4) == 0 ? features & ~FieldLocations.FeatureNeedCheck : features | FieldLocations.FeatureNeedCheck;
        BinaryPrimitives.WriteUInt64LittleEndian(d.AsSpan(FieldLocations.Features), features);
        return $"need-check: features = 0x{features:x}";
    }

    /// <summary>The backing file name: replaced (escapes, devices, protocols, itself), its bytes damaged, or its feature bits toggled.</summary>
    private static string BackingName(ref byte[] d, Random r, string fileName)
    {
        if (d.Length < FieldLocations.HeaderBytes)
        {
            return "backing: too short";
        }

        ulong features = U64(d, FieldLocations.Features);
        switch (r.Next(5))
        {
            case 0:
                features ^= r.Next(2) == 0 ? FieldLocations.FeatureBackingFile : FieldLocations.FeatureBackingFormatNoProbe;
                BinaryPrimitives.WriteUInt64LittleEndian(d.AsSpan(FieldLocations.Features), features);
                return $"backing: features = 0x{features:x}";
            case 1:
                uint offset = U32(d, FieldLocations.BackingFilenameOffset);
                uint size = U32(d, FieldLocations.BackingFilenameSize);
                if (size == 0 || (long)offset + size > d.Length)
                {
                    return "backing: no name to damage";
                }

                int at = (int)offset + r.Next((int)size);
                byte b = (byte)(r.Next(3) switch { 0 => 0, 1 => 0xFF, _ => r.Next(256) });
                d[at] = b;
                return $"backing: name byte {at} = 0x{b:x2}";
            default:
                string name = r.Next(4) == 0 ? fileName
                    : r.Next(8) == 0 ? new string('a', r.Next(200, 5000))
                    : BackingNames[r.Next(BackingNames.Length)];
                byte[] bytes = Encoding.UTF8.GetBytes(name);

                // In the header cluster after the fixed fields (where qemu-img puts it), or anywhere in the file.
                long where = r.Next(3) == 0 ? r.NextInt64(Math.Max(1, d.Length)) : FieldLocations.HeaderBytes + (r.Next(4) * 8);
                if (where + bytes.Length > d.Length)
                {
                    Array.Resize(ref d, (int)(where + bytes.Length));
                }

                bytes.CopyTo(d, where);
                BinaryPrimitives.WriteUInt32LittleEndian(d.AsSpan(FieldLocations.BackingFilenameOffset), (uint)where);
                BinaryPrimitives.WriteUInt32LittleEndian(d.AsSpan(FieldLocations.BackingFilenameSize), (uint)bytes.Length);
                BinaryPrimitives.WriteUInt64LittleEndian(d.AsSpan(FieldLocations.Features), features | FieldLocations.FeatureBackingFile);
                return $"backing: name \"{(name.Length > 40 ? name[..40] + "..." : name)}\" at {where}";
        }
    }

    private static string L1Entry(byte[] d, Random r)
    {
        var l = Read(d);
        long entries = Math.Min(l.TableEntries, (l.Length - l.L1Offset) / 8);
        if (l.L1Offset == 0 || entries <= 0)
        {
            return "l1: none";
        }

        // Mostly the entries in use (the first ones in these small images), sometimes any.
        long i = r.Next(3) == 0 ? r.NextInt64(entries) : r.NextInt64(Math.Min(entries, 8));
        int pos = (int)(l.L1Offset + (i * 8));
        ulong v = Value(r, l, U64(d, pos));
        Write(d, pos, 8, v);
        return $"l1[{i}] = 0x{v:x}";
    }

    private static string L2Entry(byte[] d, Random r)
    {
        var l = Read(d);
        var tables = L2Tables(d, l);
        if (tables.Count == 0)
        {
            return "l2: none";
        }

        long table = tables[r.Next(tables.Count)];
        long entries = Math.Min(l.TableEntries, (l.Length - table) / 8);
        if (entries <= 0)
        {
            return "l2: table past the end";
        }

        // Prefer entries in use, so mutations hit mapped data.
        var used = new List<long>();
        for (long e = 0; e < entries && used.Count < 64; e++)
        {
            if (U64(d, (int)(table + (e * 8))) != FieldLocations.Unallocated)
            {
                used.Add(e);
            }
        }

        long i = used.Count > 0 && r.Next(3) != 0 ? used[r.Next(used.Count)] : r.NextInt64(entries);
        int pos = (int)(table + (i * 8));
        ulong current = U64(d, pos);
        ulong v = r.Next(6) switch
        {
            0 => FieldLocations.ZeroCluster,
            1 => FieldLocations.Unallocated,
            2 => (ulong)tables[r.Next(tables.Count)],
            3 => (ulong)l.L1Offset,
            _ => Value(r, l, current),
        };
        Write(d, pos, 8, v);
        return $"l2 at {table} [{i}] = 0x{v:x}";
    }

    /// <summary>The L2 tables the L1 table points at now (within the file, cluster-aligned).</summary>
    private static List<long> L2Tables(byte[] d, Layout l)
    {
        var tables = new List<long>();
        long entries = Math.Min(l.TableEntries, (l.Length - l.L1Offset) / 8);
        for (long i = 0; l.L1Offset != 0 && i < entries && tables.Count < 256; i++)
        {
            long offset = (long)U64(d, (int)(l.L1Offset + (i * 8)));
            if (offset > 1 && offset % l.ClusterBytes == 0 && offset < l.Length)
            {
                tables.Add(offset);
            }
        }

        return tables;
    }

    private static string Resize(ref byte[] d, Random r)
    {
        var l = Read(d);
        int length = r.Next(5) switch
        {
            0 => r.Next(0, Math.Min(d.Length + 1, 512)),
            1 => Math.Max(0, d.Length - r.Next(1, 1 << 16)),
            2 => d.Length + r.Next(1, 1 << 16),
            3 => (int)Math.Max(0, d.Length - ((long)r.Next(1, 4) * l.ClusterBytes)),
            _ => (int)(r.NextInt64(Math.Max(1, d.Length)) & ~511L),
        };
        Array.Resize(ref d, length);
        return $"resize to {length}";
    }

    private static uint U32(byte[] d, int at) => at + 4 <= d.Length ? BinaryPrimitives.ReadUInt32LittleEndian(d.AsSpan(at)) : 0;

    private static ulong U64(byte[] d, int at) => at + 8 <= d.Length ? BinaryPrimitives.ReadUInt64LittleEndian(d.AsSpan(at)) : 0;

    private static ulong Read(byte[] d, int at, int width) => width == 4 ? BinaryPrimitives.ReadUInt32LittleEndian(d.AsSpan(at)) : BinaryPrimitives.ReadUInt64LittleEndian(d.AsSpan(at));

    private static void Write(byte[] d, int at, int width, ulong v)
    {
        if (width == 4)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(d.AsSpan(at), (uint)v);
        }
        else
        {
            BinaryPrimitives.WriteUInt64LittleEndian(d.AsSpan(at), v);
        }
    }
}
