using System.Buffers.Binary;
using PrlFuse.Core.Formats.Qcow2;

namespace PrlFuse.Tests.Fuzz;

/// <summary>
/// Mutates the bytes of a qcow2 image where its structures are: every header field, header extensions (their type and
/// length, and the fields of each kind: backing format and data file names, feature name entries, the bitmaps
/// extension), the bitmap directory, L1 and L2 entries (found through the L1 table as it is now, so mutations stack),
/// refcount table and block entries, snapshot table entries and the snapshots' L1 tables, plus bit flips, truncation
/// and splices. Each mutation returns a short description for the report.
/// </summary>
public static class Qcow2Mutator
{
    /// <summary>(offset, width, name) of the header's fields, from the spec's names in one place.</summary>
    private static readonly (int Offset, int Width, string Name)[] HeaderFields =
    [
        (FieldLocations.Version, 4, "version"), (FieldLocations.BackingFileOffset, 8, "backing_file_offset"),
        (FieldLocations.BackingFileSize, 4, "backing_file_size"), (FieldLocations.ClusterBits, 4, "cluster_bits"),
        (FieldLocations.Size, 8, "size"), (FieldLocations.CryptMethod, 4, "crypt_method"), (FieldLocations.L1Size, 4, "l1_size"),
        (FieldLocations.L1TableOffset, 8, "l1_table_offset"), (FieldLocations.RefcountTableOffset, 8, "refcount_table_offset"),
        (FieldLocations.RefcountTableClusters, 4, "refcount_table_clusters"), (FieldLocations.SnapshotCount, 4, "nb_snapshots"),
        (FieldLocations.SnapshotsOffset, 8, "snapshots_offset"), (FieldLocations.IncompatibleFeatures, 8, "incompatible_features"),
        (FieldLocations.CompatibleFeatures, 8, "compatible_features"), (FieldLocations.AutoclearFeatures, 8, "autoclear_features"),
        (FieldLocations.RefcountOrder, 4, "refcount_order"), (FieldLocations.HeaderLength, 4, "header_length"),
        (FieldLocations.CompressionType, 1, "compression_type"),
    ];

    private static readonly (int Offset, int Width, string Name)[] SnapshotFields =
    [
        (FieldLocations.SnapshotL1TableOffset, 8, "l1_table_offset"), (FieldLocations.SnapshotL1Size, 4, "l1_size"),
        (FieldLocations.SnapshotIdSize, 2, "id_str_size"), (FieldLocations.SnapshotNameSize, 2, "name_size"),
        (FieldLocations.SnapshotDateSeconds, 4, "date_sec"), (FieldLocations.SnapshotVmStateSize, 4, "vm_state_size"),
        (FieldLocations.SnapshotExtraDataSize, 4, "extra_data_size"), (FieldLocations.SnapshotFixedSize + FieldLocations.SnapshotExtraDiskSize, 8, "extra.disk_size"),
    ];

    private static readonly ulong[] Interesting =
    [
        0, 1, 2, 3, 7, 8, 9, 16, 20, 21, 22, 31, 32, 63, 64, 0x7F, 0x80, 0xFF, 0x100, 511, 512, 513, 4096, 0xFFFF, 0x10000,
        0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 0x1_0000_0000, 0x00FF_FFFF_FFFF_FE00, 0x0100_0000_0000_0000,
        0x4000_0000_0000_0000, 0x7FFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000, ulong.MaxValue, long.MaxValue / 512,
    ];

    public static string Mutate(ref byte[] data, Random r)
    {
        int pick = r.Next(100);
        return pick switch
        {
            < 8 => ClusterImageMutations.BitFlips(data, r),
            < 28 => HeaderField(data, r),
            < 33 => Extension(data, r),
            < 38 => ExtensionField(data, r),
            < 50 => L1Entry(data, r),
            < 68 => L2Entry(data, r),
            < 77 => Refcount(data, r),
            < 84 => SnapshotEntry(data, r),
            < 88 => SnapshotL1Entry(data, r),
            < 93 => BitmapDirectoryEntry(data, r),
            < 97 => Resize(ref data, r),
            _ => ClusterImageMutations.Splice(data, r, Read(data).ClusterBits),
        };
    }

    private readonly record struct Layout(int ClusterBits, long L1Offset, long L1Size, long RefcountTableOffset, long RefcountClusters, long SnapshotsOffset, long SnapshotCount, bool Extended, long Length)
    {
        public long ClusterBytes => 1L << ClusterBits;

        public long Clusters => Math.Max(1, Length >> ClusterBits);
    }

    private static Layout Read(byte[] d)
    {
        if (d.Length < FieldLocations.Version3MinimumHeaderSize)
        {
            return new Layout(16, 0, 0, 0, 0, 0, 0, false, d.Length);
        }

        int bits = (int)Math.Clamp(U32(d, FieldLocations.ClusterBits), 9, 21);
        bool extended = (U64(d, FieldLocations.IncompatibleFeatures) & Qcow2Header.IncompatibleExtendedL2) != 0 && U32(d, FieldLocations.Version) >= 3;
        return new Layout(
            bits,
            (long)Math.Min(U64(d, FieldLocations.L1TableOffset), (ulong)d.Length),
            U32(d, FieldLocations.L1Size),
            (long)Math.Min(U64(d, FieldLocations.RefcountTableOffset), (ulong)d.Length),
            U32(d, FieldLocations.RefcountTableClusters),
            (long)Math.Min(U64(d, FieldLocations.SnapshotsOffset), (ulong)d.Length),
            U32(d, FieldLocations.SnapshotCount),
            extended,
            d.Length);
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

        ulong v = name switch
        {
            "version" => (ulong)r.Next(0, 5),
            "cluster_bits" => (ulong)r.Next(7, 24),
            "refcount_order" => (ulong)r.Next(0, 8),
            "compression_type" => (ulong)r.Next(0, 4),
            "header_length" => (ulong)(r.Next(2) == 0 ? r.Next(64, 200) : (int)Value(r, l, Read(d, offset, width))),
            "incompatible_features" or "compatible_features" or "autoclear_features" => Read(d, offset, width) ^ (1UL << r.Next(r.Next(2) == 0 ? 6 : 64)),
            _ => Value(r, l, Read(d, offset, width)),
        };
        Write(d, offset, width, v);
        return $"header {name} = 0x{v:x}";
    }

    /// <summary>A header extension's type or length, or an extension written past the header.</summary>
    private static string Extension(byte[] d, Random r)
    {
        if (d.Length < FieldLocations.Version3MinimumHeaderSize)
        {
            return "extension: too short";
        }

        var found = Extensions(d);
        int ext = found.Count == 0 ? ExtensionsStart(d) : found[r.Next(found.Count)].At;
        if (ext + 8 > d.Length)
        {
            return "extension: past the end";
        }

        uint[] types = [FieldLocations.ExtensionEnd, FieldLocations.ExtensionBackingFormat, FieldLocations.ExtensionFeatureNames, FieldLocations.ExtensionBitmaps, FieldLocations.ExtensionFullDiskEncryption, FieldLocations.ExtensionDataFile, 0x12345678];
        switch (r.Next(3))
        {
            case 0:
                uint type = types[r.Next(types.Length)];
                BinaryPrimitives.WriteUInt32BigEndian(d.AsSpan(ext), type);
                return $"extension at {ext}: type 0x{type:x8}";
            case 1:
                uint length = (uint)Value(new Random(r.Next()), Read(d), BinaryPrimitives.ReadUInt32BigEndian(d.AsSpan(ext + 4)));
                BinaryPrimitives.WriteUInt32BigEndian(d.AsSpan(ext + 4), length);
                return $"extension at {ext}: length {length}";
            default:
                int pos = ext + 8 + r.Next(0, 64);
                if (pos + 8 > d.Length)
                {
                    return "extension data: past the end";
                }

                ulong v = Value(r, Read(d), 0);
                Write(d, pos, 8, v);
                return $"extension data at {pos} = 0x{v:x}";
        }
    }

    private static int ExtensionsStart(byte[] d) =>
        U32(d, FieldLocations.Version) >= 3 ? (int)Math.Clamp(U32(d, FieldLocations.HeaderLength), FieldLocations.Version3MinimumHeaderSize, 1024) : FieldLocations.Version2HeaderSize;

    /// <summary>The header extensions as a reader walks them now (at most 16, within the first 64 KiB): where each starts, its type and length.</summary>
    private static List<(int At, uint Type, uint Length)> Extensions(byte[] d)
    {
        var found = new List<(int, uint, uint)>();
        if (d.Length < FieldLocations.Version3MinimumHeaderSize)
        {
            return found;
        }

        for (int at = ExtensionsStart(d), i = 0; at + 8 <= Math.Min(d.Length, 1 << 16) && i < 16; i++)
        {
            uint type = BinaryPrimitives.ReadUInt32BigEndian(d.AsSpan(at));
            uint length = BinaryPrimitives.ReadUInt32BigEndian(d.AsSpan(at + 4));
            found.Add((at, type, length));
            if (type == FieldLocations.ExtensionEnd)
            {
                break;
            }

            long next = at + 8 + ((length + 7L) & ~7L);
            if (next > 1 << 16)
            {
                break;
            }

            at = (int)next;
        }

        return found;
    }

    /// <summary>Names worth trying in the backing format and data file extensions.</summary>
    private static readonly string[] ExtensionNames =
    [
        "", "raw", "qcow2", "qed", "parallels", "vmdk", "host_device", "RAW", "raw\0x", "/dev/zero", "../ext.data", "ext.data",
        "/proc/self/mem", "json:{\"driver\":\"null-co\"}", "nbd://localhost/x", "missing.data", "v3-64k.qcow2", "a\nb",
    ];

    /// <summary>
    /// A field of one extension of a known kind: the backing format or data file name replaced (its length with it),
    /// a feature name entry's type or bit, the bitmaps extension's count, directory size or directory offset.
    /// </summary>
    private static string ExtensionField(byte[] d, Random r)
    {
        var known = Extensions(d).Where(e => e.Type is FieldLocations.ExtensionBackingFormat or FieldLocations.ExtensionDataFile or FieldLocations.ExtensionFeatureNames or FieldLocations.ExtensionBitmaps).ToList();
        if (known.Count == 0)
        {
            return "extension field: none";
        }

        var (at, type, length) = known[r.Next(known.Count)];
        int data = at + FieldLocations.ExtensionData;
        var l = Read(d);
        switch (type)
        {
            case FieldLocations.ExtensionFeatureNames:
                long entries = Math.Min(length, d.Length - data) / FieldLocations.FeatureNameEntrySize;
                if (entries <= 0)
                {
                    return "feature names: empty";
                }

                int entry = data + (int)(r.NextInt64(entries) * FieldLocations.FeatureNameEntrySize);
                if (r.Next(2) == 0)
                {
                    d[entry + FieldLocations.FeatureNameType] = (byte)r.Next(0, 5);
                    return $"feature name at {entry}: type {d[entry + FieldLocations.FeatureNameType]}";
                }

                d[entry + FieldLocations.FeatureNameBit] = (byte)(r.Next(2) == 0 ? r.Next(0, 64) : r.Next(256));
                return $"feature name at {entry}: bit {d[entry + FieldLocations.FeatureNameBit]}";
            case FieldLocations.ExtensionBitmaps:
                var (field, width, name) = r.Next(3) switch
                {
                    0 => (FieldLocations.BitmapsCount, 4, "nb_bitmaps"),
                    1 => (FieldLocations.BitmapsDirectorySize, 8, "bitmap_directory_size"),
                    _ => (FieldLocations.BitmapsDirectoryOffset, 8, "bitmap_directory_offset"),
                };
                if (data + field + width > d.Length)
                {
                    return "bitmaps extension: past the end";
                }

                ulong v = Value(r, l, Read(d, data + field, width));
                Write(d, data + field, width, v);
                return $"bitmaps extension {name} = 0x{v:x}";
            default:
                // A name of another length moves the extensions after it within the header cluster, as a writer of a
                // longer name would; the clusters after it stay where the tables point.
                byte[] bytes = System.Text.Encoding.UTF8.GetBytes(ExtensionNames[r.Next(ExtensionNames.Length)]);
                int cluster = (int)Math.Min(l.ClusterBytes, d.Length);
                if (length > cluster)
                {
                    return "extension name: longer than the header cluster";
                }

                int oldPadded = (int)((length + 7) & ~7u);
                int newPadded = (bytes.Length + 7) & ~7;
                if (data + Math.Max(oldPadded, newPadded) > cluster)
                {
                    return "extension name: no room in the header cluster";
                }

                byte[] rest = d.AsSpan(data + oldPadded, cluster - data - oldPadded).ToArray();
                d.AsSpan(data, cluster - data).Clear();
                bytes.CopyTo(d, data);
                rest.AsSpan(0, Math.Min(rest.Length, cluster - data - newPadded)).CopyTo(d.AsSpan(data + newPadded));
                BinaryPrimitives.WriteUInt32BigEndian(d.AsSpan(at + FieldLocations.ExtensionLength), (uint)bytes.Length);
                return $"extension 0x{type:x8} name \"{System.Text.Encoding.UTF8.GetString(bytes).Replace("\n", "\\n", StringComparison.Ordinal).Replace("\0", "\\0", StringComparison.Ordinal)}\"";
        }
    }

    /// <summary>An entry of the bitmap directory (as the bitmaps extension points at it now): table offset and size, flags, type, granularity, name and extra data sizes.</summary>
    private static string BitmapDirectoryEntry(byte[] d, Random r)
    {
        var bitmaps = Extensions(d).FirstOrDefault(e => e.Type == FieldLocations.ExtensionBitmaps);
        int ext = bitmaps.At + FieldLocations.ExtensionData;
        if (bitmaps.Type != FieldLocations.ExtensionBitmaps || ext + FieldLocations.BitmapsExtensionSize > d.Length)
        {
            return "bitmap directory: none";
        }

        long dir = (long)Math.Min(U64(d, ext + FieldLocations.BitmapsDirectoryOffset), (ulong)d.Length);
        long dirSize = (long)Math.Min(U64(d, ext + FieldLocations.BitmapsDirectorySize), (ulong)(d.Length - dir));
        var entries = new List<long>();
        for (long at = dir; at + 24 <= dir + dirSize && entries.Count < 16;)
        {
            entries.Add(at);
            long nameBytes = BinaryPrimitives.ReadUInt16BigEndian(d.AsSpan((int)at + 18));
            long extraBytes = U32(d, (int)at + 20);
            at += (24 + Math.Min(extraBytes, 1 << 16) + nameBytes + 7) & ~7L;
        }

        if (entries.Count == 0)
        {
            return "bitmap directory: empty";
        }

        long entry = entries[r.Next(entries.Count)];
        var (field, width, name) = r.Next(7) switch
        {
            0 => (0, 8, "bitmap_table_offset"),
            1 => (8, 4, "bitmap_table_size"),
            2 => (12, 4, "flags"),
            3 => (16, 1, "type"),
            4 => (17, 1, "granularity_bits"),
            5 => (18, 2, "name_size"),
            _ => (20, 4, "extra_data_size"),
        };
        ulong v = name switch
        {
            "flags" => Read(d, (int)entry + field, width) ^ (1UL << r.Next(r.Next(2) == 0 ? 3 : 32)),
            "type" or "granularity_bits" => (ulong)r.Next(r.Next(2) == 0 ? 64 : 256),
            _ => Value(r, Read(d), Read(d, (int)entry + field, width)),
        };
        Write(d, (int)entry + field, width, v);
        return $"bitmap at {entry} {name} = 0x{v:x}";
    }

    /// <summary>An entry of a snapshot's L1 table (the snapshot views read through it), found through the snapshot table as it is now.</summary>
    private static string SnapshotL1Entry(byte[] d, Random r)
    {
        var l = Read(d);
        if (l.SnapshotsOffset == 0 || l.SnapshotCount == 0 || l.SnapshotsOffset + FieldLocations.SnapshotFixedSize > l.Length)
        {
            return "snapshot l1: none";
        }

        long table = (long)Math.Min(U64(d, (int)l.SnapshotsOffset + FieldLocations.SnapshotL1TableOffset), (ulong)l.Length);
        long entries = Math.Min(U32(d, (int)l.SnapshotsOffset + FieldLocations.SnapshotL1Size), (l.Length - table) / 8);
        if (table == 0 || entries <= 0)
        {
            return "snapshot l1: empty";
        }

        long i = r.NextInt64(entries);
        int pos = (int)(table + (i * 8));
        ulong v = Value(r, l, U64(d, pos));
        Write(d, pos, 8, v);
        return $"snapshot 0 l1[{i}] = 0x{v:x}";
    }

    private static string L1Entry(byte[] d, Random r)
    {
        var l = Read(d);
        long entries = Math.Min(l.L1Size, (l.Length - l.L1Offset) / 8);
        if (l.L1Offset == 0 || entries <= 0)
        {
            return "l1: none";
        }

        long i = r.NextInt64(entries);
        int pos = (int)(l.L1Offset + (i * 8));
        ulong current = U64(d, pos);
        ulong v = r.Next(3) == 0 ? current | (1UL << r.Next(1, 63)) : Value(r, l, current);
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
        int entryBytes = l.Extended ? 16 : 8;
        long entries = Math.Min(l.ClusterBytes / entryBytes, (l.Length - table) / entryBytes);
        if (entries <= 0)
        {
            return "l2: table past the end";
        }

        long i = r.NextInt64(entries);
        int pos = (int)(table + (i * entryBytes));
        ulong current = U64(d, pos);
        ulong v;
        string what;
        switch (r.Next(l.Extended ? 7 : 6))
        {
            case 0:
                v = current ^ FieldLocations.ZeroFlag;
                what = "zero flag";
                break;
            case 1:
                // A compressed descriptor: offset and sector count fields of this cluster size.
                int x = 62 - (l.ClusterBits - 8);
                v = FieldLocations.CompressedFlag | ((ulong)r.Next(0, 1 << Math.Min(20, 62 - x)) << x) | (ulong)r.NextInt64(l.Length + 4096);
                what = "compressed";
                break;
            case 2:
                v = current ^ FieldLocations.CopiedFlag;
                what = "copied flag";
                break;
            case 3:
                v = current | (1UL << r.Next(1, 9));
                what = "reserved bit";
                break;
            case 6:
                pos += 8;
                current = U64(d, pos);
                v = r.Next(2) == 0 ? (ulong)r.NextInt64() : current ^ (1UL << r.Next(64));
                what = "subcluster bitmap";
                break;
            default:
                v = (current & (FieldLocations.CopiedFlag | FieldLocations.ZeroFlag)) | (Value(r, l, current & FieldLocations.OffsetMask) & ~(FieldLocations.CopiedFlag | FieldLocations.CompressedFlag));
                what = "offset";
                break;
        }

        Write(d, pos, 8, v);
        return $"l2 at {table} [{i}] {what} = 0x{v:x}";
    }

    /// <summary>The L2 tables the L1 table points at now (within the file, cluster-aligned).</summary>
    private static List<long> L2Tables(byte[] d, Layout l)
    {
        var tables = new List<long>();
        long entries = Math.Min(l.L1Size, (l.Length - l.L1Offset) / 8);
        for (long i = 0; l.L1Offset != 0 && i < entries && tables.Count < 256; i++)
        {
            long offset = (long)(U64(d, (int)(l.L1Offset + (i * 8))) & FieldLocations.OffsetMask);
            if (offset != 0 && offset % l.ClusterBytes == 0 && offset < l.Length)
            {
                tables.Add(offset);
            }
        }

        return tables;
    }

    private static string Refcount(byte[] d, Random r)
    {
        var l = Read(d);
        if (l.RefcountTableOffset == 0 || l.RefcountTableOffset + 8 > l.Length)
        {
            return "refcount: none";
        }

        long tableEntries = Math.Min(l.RefcountClusters * l.ClusterBytes / 8, (l.Length - l.RefcountTableOffset) / 8);
        long i = r.NextInt64(Math.Max(1, Math.Min(tableEntries, 64)));
        int pos = (int)(l.RefcountTableOffset + (i * 8));
        ulong block = U64(d, pos);
        if (r.Next(2) == 0 || block == 0 || block % (ulong)l.ClusterBytes != 0 || block >= (ulong)l.Length)
        {
            ulong v = Value(r, l, block);
            Write(d, pos, 8, v);
            return $"refcount table[{i}] = 0x{v:x}";
        }

        int at = (int)block + r.Next((int)Math.Min(l.ClusterBytes, l.Length - (long)block) - 1);
        byte b = (byte)r.Next(256);
        d[at] = b;
        return $"refcount block at {block}: byte {at} = 0x{b:x2}";
    }

    private static string SnapshotEntry(byte[] d, Random r)
    {
        var l = Read(d);
        if (l.SnapshotsOffset == 0 || l.SnapshotCount == 0)
        {
            return "snapshot: none";
        }

        // Walks to a random entry as the reader does, padded to 8 bytes each.
        long at = l.SnapshotsOffset;
        long index = r.NextInt64(Math.Min(l.SnapshotCount, 16));
        for (long i = 0; i < index && at + FieldLocations.SnapshotFixedSize <= l.Length; i++)
        {
            long extra = U32(d, (int)at + FieldLocations.SnapshotExtraDataSize);
            long length = FieldLocations.SnapshotFixedSize + Math.Min(extra, 1 << 20) + BinaryPrimitives.ReadUInt16BigEndian(d.AsSpan((int)at + FieldLocations.SnapshotIdSize)) + BinaryPrimitives.ReadUInt16BigEndian(d.AsSpan((int)at + FieldLocations.SnapshotNameSize));
            at += (length + 7) & ~7L;
        }

        var (offset, width, name) = SnapshotFields[r.Next(SnapshotFields.Length)];
        if (at + offset + width > l.Length)
        {
            return "snapshot: entry past the end";
        }

        ulong v = Value(r, l, Read(d, (int)at + offset, width));
        Write(d, (int)at + offset, width, v);
        return $"snapshot {index} {name} = 0x{v:x}";
    }

    private static string Resize(ref byte[] d, Random r)
    {
        int length = r.Next(4) switch
        {
            0 => r.Next(0, Math.Min(d.Length + 1, 512)),
            1 => Math.Max(0, d.Length - r.Next(1, 1 << 16)),
            2 => d.Length + r.Next(1, 1 << 16),
            _ => (int)(r.NextInt64(Math.Max(1, d.Length)) & ~511L),
        };
        Array.Resize(ref d, length);
        return $"resize to {length}";
    }

    private static uint U32(byte[] d, int at) => at + 4 <= d.Length ? BinaryPrimitives.ReadUInt32BigEndian(d.AsSpan(at)) : 0;

    private static ulong U64(byte[] d, int at) => at + 8 <= d.Length ? BinaryPrimitives.ReadUInt64BigEndian(d.AsSpan(at)) : 0;

    private static ulong Read(byte[] d, int at, int width) => width switch
    {
        1 => d[at],
        2 => BinaryPrimitives.ReadUInt16BigEndian(d.AsSpan(at)),
        4 => BinaryPrimitives.ReadUInt32BigEndian(d.AsSpan(at)),
        _ => BinaryPrimitives.ReadUInt64BigEndian(d.AsSpan(at)),
    };

    private static void Write(byte[] d, int at, int width, ulong v)
    {
        switch (width)
        {
            case 1: d[at] = (byte)v; break;
            case 2: BinaryPrimitives.WriteUInt16BigEndian(d.AsSpan(at), (ushort)v); break;
            case 4: BinaryPrimitives.WriteUInt32BigEndian(d.AsSpan(at), (uint)v); break;
            default: BinaryPrimitives.WriteUInt64BigEndian(d.AsSpan(at), v); break;
        }
    }
}
