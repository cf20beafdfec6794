using System.Buffers.Binary;
using System.Security.Cryptography;

namespace PrlFuse.Tests.Fuzz;

/// <summary>
/// Mutates the bytes of a Parallels expandable image: bit flips, interesting values at random places, every header
/// field, BAT entries, truncation and extension, and the format extension cluster (with or without a fixed-up MD5, so
/// the parser gets past the checksum). Reads the header of the bytes as they are now, so mutations stack.
/// Each mutation returns a short description for the report.
/// </summary>
public static class ImageMutator
{
    private const ulong ExtMagic = 0xAB234CEF23DCEA87;
    private const ulong BitmapMagic = 0x20385FAE252CB34A;

    /// <summary>(offset, width, name) of the 64-byte header's fields.</summary>
    private static readonly (int Offset, int Width, string Name)[] HeaderFields =
    [
        (0, 16, "magic"), (16, 4, "version"), (20, 4, "heads"), (24, 4, "cylinders"), (28, 4, "tracks"),
        (32, 4, "bat_entries"), (36, 8, "nb_sectors"), (40, 4, "nb_sectors.hi"), (44, 4, "in_use"),
        (48, 4, "data_off"), (52, 4, "flags"), (56, 8, "ext_off"),
    ];

    private static readonly ulong[] Interesting =
    [
        0, 1, 2, 3, 7, 8, 16, 63, 64, 0x7F, 0x80, 0xFF, 0x100, 511, 512, 513, 2048, 4096, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
        int.MaxValue / 513, (int.MaxValue / 513) + 1, int.MaxValue / 4, (int.MaxValue / 4) + 1, 0x7FFF_FFFF, 0x8000_0000,
        0xFFFF_FFFE, 0xFFFF_FFFF, 0x1_0000_0000, 0x1_0000_0001, long.MaxValue / 512, long.MaxValue / 1024,
        0x7FFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000, ulong.MaxValue, 0x746F6E59, 0x312E3276,
    ];

    public static string Mutate(ref byte[] data, Random r)
    {
        int pick = r.Next(100);
        return pick switch
        {
            < 12 => BitFlips(data, r),
            < 22 => InterestingBytes(data, r),
            < 47 => HeaderField(data, r),
            < 67 => BatEntry(data, r),
            < 77 => Resize(ref data, r),
            < 95 => ExtensionCluster(ref data, r),
            _ => Splice(data, r),
        };
    }

    private readonly record struct Layout(bool Ext, long ClusterBytes, long BatEntries, long DataOffsetBytes, long ExtOffsetBytes, long Length)
    {
        public long Unit => Ext ? ClusterBytes : 512;

        public long BatSlots => Math.Max(0, Math.Min(BatEntries, (Length - 64) / 4));
    }

    private static Layout Read(byte[] d)
    {
        if (d.Length < 64)
        {
            return new Layout(false, 512, 0, 512, 0, d.Length);
        }

        bool ext = d[14] == (byte)'E' && d[15] == (byte)'x';
        long tracks = BinaryPrimitives.ReadUInt32LittleEndian(d.AsSpan(28));
        long cluster = Math.Clamp(tracks, 1, 1 << 22) * 512;
        long bat = BinaryPrimitives.ReadUInt32LittleEndian(d.AsSpan(32));
        long dataOff = BinaryPrimitives.ReadUInt32LittleEndian(d.AsSpan(48)) * 512L;
        if (dataOff == 0)
        {
            dataOff = (64 + (4 * bat) + 511) / 512 * 512;
        }

        ulong extOff = BinaryPrimitives.ReadUInt64LittleEndian(d.AsSpan(56));
        long extBytes = extOff < (ulong)(d.Length / 512) ? (long)extOff * 512 : 0;
        return new Layout(ext, cluster, bat, dataOff, extBytes, d.Length);
    }

    /// <summary>Values worth trying for a field of an image with this layout.</summary>
    private static ulong Value(Random r, Layout l, ulong current)
    {
        return r.Next(10) switch
        {
            < 4 => Interesting[r.Next(Interesting.Length)],
            4 => (ulong)(l.Length / 512) + (ulong)r.Next(-2, 3),
            5 => (ulong)(l.Length / Math.Max(1, l.ClusterBytes)) + (ulong)r.Next(-2, 3),
            6 => current + (ulong)r.Next(-3, 4),
            7 => r.Next(2) == 0 ? current * 2 : current / 2,
            8 => (ulong)l.Length + (ulong)r.Next(-2, 3),
            _ => (ulong)r.NextInt64() ^ ((ulong)r.Next() << 40),
        };
    }

    private static string BitFlips(byte[] d, Random r)
    {
        if (d.Length == 0)
        {
            return "bitflip: empty";
        }

        var l = Read(d);
        int n = r.Next(1, 9);
        var where = new List<long>();
        for (int i = 0; i < n; i++)
        {
            // Half in the metadata (header + BAT), half anywhere.
            long limit = r.Next(2) == 0 ? Math.Min(d.Length, 64 + (4 * l.BatSlots)) : d.Length;
            long pos = r.NextInt64(Math.Max(1, limit));
            d[pos] ^= (byte)(1 << r.Next(8));
            where.Add(pos);
        }

        return $"bitflip at {string.Join(",", where)}";
    }

    private static string InterestingBytes(byte[] d, Random r)
    {
        var l = Read(d);
        int width = new[] { 1, 2, 4, 8 }[r.Next(4)];
        if (d.Length < width)
        {
            return "interesting: too short";
        }

        long limit = r.Next(3) == 0 ? d.Length : Math.Min(d.Length, 64 + (4 * l.BatSlots) + 16);
        int pos = (int)r.NextInt64(Math.Max(1, limit - width + 1));
        ulong v = Value(r, l, 0);
        Write(d, pos, width, v);
        return $"set {width} bytes at {pos} to 0x{v:x}";
    }

    private static string HeaderField(byte[] d, Random r)
    {
        if (d.Length < 64)
        {
            return "header: too short";
        }

        var l = Read(d);
        var (offset, width, name) = HeaderFields[r.Next(HeaderFields.Length)];
        if (name == "magic")
        {
            switch (r.Next(4))
            {
                case 0:
                    "WithoutFreeSpace"u8.CopyTo(d);
                    return "magic = WithoutFreeSpace";
                case 1:
                    "WithouFreSpacExt"u8.CopyTo(d);
                    return "magic = WithouFreSpacExt";
                case 2:
                    d[r.Next(16)] ^= (byte)(1 << r.Next(8));
                    return "magic bit flipped";
                default:
                    "<?xml version='1"u8.CopyTo(d);
                    return "magic = <?xml";
            }
        }

        ulong current = width == 4 ? BinaryPrimitives.ReadUInt32LittleEndian(d.AsSpan(offset)) : BinaryPrimitives.ReadUInt64LittleEndian(d.AsSpan(offset));
        ulong v = name switch
        {
            "in_use" when r.Next(2) == 0 => new ulong[] { 0, 0x746F6E59, 0x312E3276, 0x37316470 }[r.Next(4)],
            "flags" when r.Next(2) == 0 => (ulong)r.Next(4),
            "data_off" when r.Next(2) == 0 => (ulong)((l.DataOffsetBytes / 512) + (r.Next(2) == 0 ? r.Next(-2, 3) : (l.ClusterBytes / 512 * r.Next(-1, 3)))),
            "ext_off" when r.Next(2) == 0 => (ulong)(((l.Length / 512) - (l.ClusterBytes / 512 * r.Next(0, 3))) + r.Next(-1, 2)),
            "tracks" when r.Next(2) == 0 => new ulong[] { 1, 8, 63, 64, 252 * 2, 512, 2048, 4096, 1 << 14, 1 << 22 }[r.Next(10)],
            "nb_sectors" when r.Next(2) == 0 => (ulong)(l.BatEntries * (l.ClusterBytes / 512)) + (ulong)r.Next(-1, 2),
            _ => Value(r, l, current),
        };
        Write(d, offset, width, v);
        return $"header {name} = 0x{v:x}";
    }

    private static string BatEntry(byte[] d, Random r)
    {
        var l = Read(d);
        if (l.BatSlots == 0)
        {
            return "bat: none";
        }

        var allocated = new List<long>();
        for (long i = 0; i < l.BatSlots; i++)
        {
            if (BinaryPrimitives.ReadUInt32LittleEndian(d.AsSpan((int)(64 + (4 * i)))) != 0)
            {
                allocated.Add(i);
            }
        }

        int count = r.Next(8) == 0 ? r.Next(2, 20) : 1;
        var notes = new List<string>();
        for (int k = 0; k < count; k++)
        {
            long index = allocated.Count > 0 && r.Next(2) == 0 ? allocated[r.Next(allocated.Count)] : r.NextInt64(l.BatSlots);
            long unitsInFile = l.Length / l.Unit;
            long dataUnits = l.DataOffsetBytes / l.Unit;
            long clusterUnits = Math.Max(1, l.ClusterBytes / l.Unit);
            uint v = r.Next(11) switch
            {
                0 => 0,
                1 => (uint)r.NextInt64(uint.MaxValue + 1L),
                2 when allocated.Count > 0 => BinaryPrimitives.ReadUInt32LittleEndian(d.AsSpan((int)(64 + (4 * allocated[r.Next(allocated.Count)])))),
                3 => (uint)(unitsInFile + r.Next(0, 3)),
                4 => (uint)Math.Max(1, dataUnits - r.Next(0, 2)),
                5 => new uint[] { uint.MaxValue, int.MaxValue, 0x8000_0000, uint.MaxValue - 1 }[r.Next(4)],
                6 when allocated.Count > 0 => BinaryPrimitives.ReadUInt32LittleEndian(d.AsSpan((int)(64 + (4 * allocated[r.Next(allocated.Count)])))) + (uint)r.Next(1, 3),
                7 => (uint)Math.Max(0, unitsInFile - clusterUnits),
                8 => (uint)(unitsInFile - clusterUnits + 1),
                9 => (uint)(dataUnits + (clusterUnits * r.Next(0, 64))),
                _ => (uint)(dataUnits + (clusterUnits * ((unitsInFile - dataUnits) / clusterUnits))),
            };
            BinaryPrimitives.WriteUInt32LittleEndian(d.AsSpan((int)(64 + (4 * index))), v);
            notes.Add($"{index}=0x{v:x}");
        }

        return $"bat {string.Join(",", notes)}";
    }

    private static string Resize(ref byte[] d, Random r)
    {
        var l = Read(d);
        if (r.Next(3) != 0)
        {
            long[] choices =
            [
                0, 1, 15, 16, 63, 64, 65, 64 + (4 * l.BatSlots) - 1, 64 + (4 * l.BatSlots), l.DataOffsetBytes, l.DataOffsetBytes + 1,
                d.Length - 1, d.Length - 512, d.Length - l.ClusterBytes, d.Length - l.ClusterBytes + 1, r.NextInt64(d.Length + 1L),
            ];
            long length = Math.Clamp(choices[r.Next(choices.Length)], 0, d.Length);
            Array.Resize(ref d, (int)length);
            return $"truncated to {length}";
        }

        long[] grow = [1, 511, 512, 4096, l.ClusterBytes, l.ClusterBytes + 1, r.Next(1, 2 << 20)];
        long extra = Math.Min(grow[r.Next(grow.Length)], 4 << 20);
        int old = d.Length;
        Array.Resize(ref d, (int)(old + extra));
        bool random = r.Next(2) == 0;
        if (random)
        {
            r.NextBytes(d.AsSpan(old));
        }

        return $"extended by {extra} {(random ? "random" : "zero")} bytes";
    }

    /// <summary>
    /// Mutates the format extension cluster, or implants one in a data cluster. Fixes up the MD5 most of the time so
    /// the features are parsed; the rest of the time the stale checksum is what is tested.
    /// </summary>
    private static string ExtensionCluster(ref byte[] d, Random r)
    {
        var l = Read(d);
        if (d.Length < 64)
        {
            return "ext: too short";
        }

        long start = l.ExtOffsetBytes;
        string what;
        if (start == 0 || r.Next(6) == 0)
        {
            // Implant an extension in a cluster-aligned slot of the data area (or at the end of the file).
            long slot = l.DataOffsetBytes + (l.ClusterBytes * r.Next(0, 4));
            if (r.Next(2) == 0 || slot + 64 > d.Length)
            {
                slot = d.Length;
                Array.Resize(ref d, (int)Math.Min(d.Length + Math.Min(l.ClusterBytes, 4 << 20), int.MaxValue));
            }

            if (slot + 64 > d.Length)
            {
                return "ext: no room";
            }

            start = slot;
            BinaryPrimitives.WriteUInt64LittleEndian(d.AsSpan(56), (ulong)(slot / 512));
            var cluster = d.AsSpan((int)slot, (int)Math.Min(l.ClusterBytes, d.Length - slot));
            cluster.Clear();
            BinaryPrimitives.WriteUInt64LittleEndian(cluster, ExtMagic);
            int pos = 24;
            int features = r.Next(0, 3);
            for (int f = 0; f < features && pos + 24 + 64 < cluster.Length; f++)
            {
                bool bitmap = r.Next(2) == 0;
                int l1 = r.Next(0, 4);
                int size = bitmap ? 32 + (8 * l1) : r.Next(0, 40);
                BinaryPrimitives.WriteUInt64LittleEndian(cluster[pos..], bitmap ? BitmapMagic : (ulong)r.NextInt64());
                BinaryPrimitives.WriteUInt64LittleEndian(cluster[(pos + 8)..], (ulong)r.Next(4));
                BinaryPrimitives.WriteUInt32LittleEndian(cluster[(pos + 16)..], (uint)size);
                if (bitmap)
                {
                    BinaryPrimitives.WriteUInt64LittleEndian(cluster[(pos + 24)..], Value(r, l, 0));
                    BinaryPrimitives.WriteUInt32LittleEndian(cluster[(pos + 48)..], 1u << r.Next(0, 32));
                    BinaryPrimitives.WriteUInt32LittleEndian(cluster[(pos + 52)..], (uint)l1);
                    for (int i = 0; i < l1; i++)
                    {
                        BinaryPrimitives.WriteUInt64LittleEndian(cluster[(pos + 56 + (8 * i))..], L1Value(r, l));
                    }
                }

                pos += 24 + ((size + 7) & ~7);
            }

            what = $"implanted extension at {slot} with {features} features";
        }
        else
        {
            var cluster = d.AsSpan((int)start, (int)Math.Min(l.ClusterBytes, d.Length - start));
            if (cluster.Length < 64)
            {
                return "ext: cluster cut short";
            }

            // Feature headers, walked as the parser would.
            var featurePositions = new List<int>();
            int pos = 24;
            while (pos + 24 <= cluster.Length && featurePositions.Count < 6)
            {
                featurePositions.Add(pos);
                ulong magic = BinaryPrimitives.ReadUInt64LittleEndian(cluster[pos..]);
                uint size = BinaryPrimitives.ReadUInt32LittleEndian(cluster[(pos + 16)..]);
                if (magic == 0 || size > cluster.Length)
                {
                    break;
                }

                pos += 24 + (int)((size + 7) & ~7u);
            }

            int fp = featurePositions[r.Next(featurePositions.Count)];
            bool isBitmap = BinaryPrimitives.ReadUInt64LittleEndian(cluster[fp..]) == BitmapMagic;
            int choice = r.Next(isBitmap ? 10 : 6);
            switch (choice)
            {
                case 0:
                    BinaryPrimitives.WriteUInt64LittleEndian(cluster[fp..], new ulong[] { 0UL, BitmapMagic, (ulong)r.NextInt64(), 0x55 }[r.Next(4)]);
                    what = $"ext feature@{fp} magic";
                    break;
                case 1:
                    BinaryPrimitives.WriteUInt64LittleEndian(cluster[(fp + 8)..], new ulong[] { 0UL, 1, 2, 3, ulong.MaxValue }[r.Next(5)]);
                    what = $"ext feature@{fp} flags";
                    break;
                case 2:
                {
                    uint v = new uint[] { 0u, 7, 8, 31, 32, 40, (uint)(cluster.Length - fp - 24), (uint)(cluster.Length - fp - 23), uint.MaxValue, int.MaxValue, (uint)r.Next() }[r.Next(11)];
                    BinaryPrimitives.WriteUInt32LittleEndian(cluster[(fp + 16)..], v);
                    what = $"ext feature@{fp} data_size = {v}";
                    break;
                }

                case 3:
                    BinaryPrimitives.WriteUInt64LittleEndian(cluster, r.Next(2) == 0 ? 0 : ExtMagic ^ (1UL << r.Next(64)));
                    what = "ext magic";
                    break;
                case 4:
                    for (int i = 0; i < 4; i++)
                    {
                        cluster[r.Next(Math.Min(cluster.Length, 256))] ^= (byte)(1 << r.Next(8));
                    }

                    what = "ext bit flips";
                    break;
                case 5:
                    cluster[fp..].Fill((byte)r.Next(256));
                    what = $"ext filled from {fp}";
                    break;
                case 6:
                {
                    ulong v = Value(r, l, BinaryPrimitives.ReadUInt64LittleEndian(cluster[(fp + 24)..]));
                    BinaryPrimitives.WriteUInt64LittleEndian(cluster[(fp + 24)..], v);
                    what = $"bitmap size = 0x{v:x}";
                    break;
                }

                case 7:
                {
                    uint v = new uint[] { 0u, 1, 3, 6, 1 << 20, 1u << 31, uint.MaxValue, 1 << 30, 0x7FFF_FFFF }[r.Next(9)];
                    BinaryPrimitives.WriteUInt32LittleEndian(cluster[(fp + 48)..], v);
                    what = $"bitmap granularity = {v}";
                    break;
                }

                case 8:
                {
                    uint dataSize = BinaryPrimitives.ReadUInt32LittleEndian(cluster[(fp + 16)..]);
                    uint fit = dataSize >= 32 ? (dataSize - 32) / 8 : 0;
                    uint v = new uint[] { 0u, 1, fit, fit + 1, uint.MaxValue, int.MaxValue / 8, 1 << 20 }[r.Next(7)];
                    BinaryPrimitives.WriteUInt32LittleEndian(cluster[(fp + 52)..], v);
                    what = $"bitmap l1_size = {v}";
                    break;
                }

                default:
                {
                    uint l1Size = BinaryPrimitives.ReadUInt32LittleEndian(cluster[(fp + 52)..]);
                    int entries = (int)Math.Min(l1Size, (uint)((cluster.Length - fp - 56) / 8));
                    if (entries <= 0)
                    {
                        what = "bitmap l1: none";
                        break;
                    }

                    int e = r.Next(entries);
                    ulong v = L1Value(r, l);
                    BinaryPrimitives.WriteUInt64LittleEndian(cluster[(fp + 56 + (8 * e))..], v);
                    what = $"bitmap l1[{e}] = 0x{v:x}";
                    break;
                }
            }
        }

        bool fix = r.Next(10) < 7 && start + l.ClusterBytes <= d.Length;
        if (fix)
        {
            var cluster = d.AsSpan((int)start, (int)l.ClusterBytes);
            MD5.HashData(cluster[24..], cluster[8..24]);
        }

        return what + (fix ? " (md5 fixed)" : " (md5 stale)");
    }

    private static ulong L1Value(Random r, Layout l) => r.Next(10) switch
    {
        0 => 0,
        1 => 1,
        2 => 2,
        3 => (ulong)(l.Length / 512) + (ulong)r.Next(0, 3),
        4 => (ulong)(l.DataOffsetBytes / 512),
        5 => (ulong)(l.ExtOffsetBytes / 512),
        6 => (ulong)Math.Max(0, (l.Length - l.ClusterBytes) / 512),
        7 => new ulong[] { ulong.MaxValue, long.MaxValue, (ulong)(long.MaxValue / 512), (ulong)(long.MaxValue / 512) - 4096, 0x8000_0000_0000_0000 }[r.Next(5)],
        8 => 1 + (ulong)r.Next(0, 3),
        _ => (ulong)r.NextInt64(),
    };

    /// <summary>Copies a chunk of the file over another place (a BAT over the header, a cluster over the BAT...).</summary>
    private static string Splice(byte[] d, Random r)
    {
        if (d.Length < 2)
        {
            return "splice: too short";
        }

        int length = r.Next(1, Math.Min(d.Length, 4096));
        int from = r.Next(d.Length - length + 1);
        int to = r.Next(Math.Min(d.Length, 8192) - Math.Min(length, Math.Min(d.Length, 8192)) + 1);
        length = Math.Min(length, d.Length - to);
        Buffer.BlockCopy(d, from, d, to, length);
        return $"splice {length} bytes {from}->{to}";
    }

    private static void Write(byte[] d, int pos, int width, ulong v)
    {
        switch (width)
        {
            case 1:
                d[pos] = (byte)v;
                break;
            case 2:
                BinaryPrimitives.WriteUInt16LittleEndian(d.AsSpan(pos), (ushort)v);
                break;
            case 4:
                BinaryPrimitives.WriteUInt32LittleEndian(d.AsSpan(pos), (uint)v);
                break;
            default:
                BinaryPrimitives.WriteUInt64LittleEndian(d.AsSpan(pos), v);
                break;
        }
    }
}
