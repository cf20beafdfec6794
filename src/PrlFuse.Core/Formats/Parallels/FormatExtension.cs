using System.Buffers.Binary;
using System.Security.Cryptography;

namespace PrlFuse.Core.Formats.Parallels;

/// <summary>One feature section of the format extension cluster.</summary>
public readonly record struct ExtensionFeature(ulong Magic, ulong Flags, uint DataOffset, uint DataSize)
{
    public const ulong FlagNecessary = 1;
    public const ulong FlagTransit = 2;

    public bool IsDirtyBitmap => Magic == FormatExtension.DirtyBitmapMagic;

    public string Name => IsDirtyBitmap ? "dirty-bitmap" : $"unknown-0x{Magic:x16}";
}

/// <summary>The dirty bitmap feature's fixed fields and L1 table.</summary>
public sealed record DirtyBitmapFeature(ulong SizeSectors, Guid Id, uint GranularitySectors, ulong[] L1Table)
{
    public const int FixedSize = 32;

    /// <summary>
    /// Which image clusters the bitmap marks dirty: a cluster is dirty when any of its granules is.
    /// <paramref name="readCluster"/> reads one cluster of the image at a byte offset.
    /// </summary>
    public bool[] DirtyClusters(long clusterBytes, long clusterCount, Action<long, Span<byte>> readCluster)
    {
        var dirty = new bool[clusterCount];
        long granuleBytes = GranularitySectors * 512L;
        long bitsPerL1 = clusterBytes * 8;
        // Never walk more bits than the image has clusters to mark, whatever size a hostile header claims.
        long totalBits = Math.Min(
            ((long)Math.Min(SizeSectors, long.MaxValue / 1024) + GranularitySectors - 1) / GranularitySectors,
            ((clusterCount * clusterBytes) + granuleBytes - 1) / granuleBytes);
        byte[] buffer = new byte[clusterBytes];
        for (long l1 = 0; l1 < L1Table.Length; l1++)
        {
            ulong entry = L1Table[l1];
            if (entry == 0)
            {
                continue;
            }

            if (entry != 1)
            {
                if (entry > (ulong)(long.MaxValue / 512 - clusterBytes))
                {
                    // Points past any possible file: no bits set, like the zeros a read past the end gives.
                    continue;
                }

                readCluster((long)entry * 512, buffer);
            }

            long firstBit = l1 * bitsPerL1;
            if (firstBit >= totalBits)
            {
                break;
            }

            long lastBit = Math.Min(totalBits, firstBit + bitsPerL1);
            for (long bit = firstBit; bit < lastBit; bit++)
            {
                long inCluster = bit - firstBit;
                if (entry != 1 && (inCluster & 7) == 0 && buffer[inCluster >> 3] == 0)
                {
                    bit += 7;
                    continue;
                }

                bool set = entry == 1 || (buffer[inCluster >> 3] & (1 << (int)(inCluster & 7))) != 0;
                if (set)
                {
                    // A granule may be larger than a cluster or straddle two (63-sector clusters): mark every
                    // cluster it touches.
                    long firstCluster = bit * granuleBytes / clusterBytes;
                    long lastCluster = Math.Min((((bit + 1) * granuleBytes) - 1) / clusterBytes, clusterCount - 1);
                    for (long cluster = firstCluster; cluster <= lastCluster; cluster++)
                    {
                        dirty[cluster] = true;
                    }
                }
            }
        }

        return dirty;
    }
}

/// <summary>
/// The format extension cluster addressed by ext_off: magic, MD5 of bytes [24, end), then feature sections.
/// Parsed as a pure function; problems are reported, never fatal for reading.
/// </summary>
public sealed record FormatExtension(bool ChecksumValid, IReadOnlyList<ExtensionFeature> Features, DirtyBitmapFeature? DirtyBitmap)
{
    public const ulong Magic = 0xAB234CEF23DCEA87;
    public const ulong DirtyBitmapMagic = 0x20385FAE252CB34A;
    public const int HeaderSize = 24;
    public const int FeatureHeaderSize = 24;

    public static bool TryRead(ReadOnlySpan<byte> cluster, out FormatExtension? extension, out string error)
    {
        extension = null;
        if (cluster.Length < HeaderSize + FeatureHeaderSize)
        {
            error = "format extension cluster is too small";
            return false;
        }

        if (BinaryPrimitives.ReadUInt64LittleEndian(cluster) != Magic)
        {
            error = "format extension has a wrong magic";
            return false;
        }

        Span<byte> md5 = stackalloc byte[16];
        MD5.HashData(cluster[HeaderSize..], md5);
        bool checksumValid = md5.SequenceEqual(cluster[8..24]);

        var features = new List<ExtensionFeature>();
        DirtyBitmapFeature? bitmap = null;
        int pos = HeaderSize;
        while (true)
        {
            if (pos + FeatureHeaderSize > cluster.Length)
            {
                error = "format extension has no end-of-features marker";
                return false;
            }

            ulong magic = BinaryPrimitives.ReadUInt64LittleEndian(cluster[pos..]);
            ulong flags = BinaryPrimitives.ReadUInt64LittleEndian(cluster[(pos + 8)..]);
            uint size = BinaryPrimitives.ReadUInt32LittleEndian(cluster[(pos + 16)..]);
            if (magic == 0)
            {
                break;
            }

            int dataOffset = pos + FeatureHeaderSize;
            if (size > cluster.Length - dataOffset)
            {
                error = $"format extension feature 0x{magic:x16} claims {size} bytes, past the end of the cluster";
                return false;
            }

            var feature = new ExtensionFeature(magic, flags, (uint)dataOffset, size);
            features.Add(feature);
            if (feature.IsDirtyBitmap)
            {
                if (!TryReadDirtyBitmap(cluster.Slice(dataOffset, (int)size), out bitmap, out error))
                {
                    return false;
                }
            }

            pos = dataOffset + (int)((size + 7) & ~7u);
        }

        extension = new FormatExtension(checksumValid, features, bitmap);
        error = checksumValid ? string.Empty : "format extension MD5 checksum does not match";
        return true;
    }

    private static bool TryReadDirtyBitmap(ReadOnlySpan<byte> data, out DirtyBitmapFeature? bitmap, out string error)
    {
        bitmap = null;
        if (data.Length < DirtyBitmapFeature.FixedSize)
        {
            error = "dirty bitmap feature is too small";
            return false;
        }

        ulong size = BinaryPrimitives.ReadUInt64LittleEndian(data);
        var id = new Guid(data.Slice(8, 16), bigEndian: true);
        uint granularity = BinaryPrimitives.ReadUInt32LittleEndian(data[24..]);
        uint l1Size = BinaryPrimitives.ReadUInt32LittleEndian(data[28..]);
        if (granularity == 0 || (granularity & (granularity - 1)) != 0)
        {
            error = $"dirty bitmap granularity {granularity} is not a power of 2";
            return false;
        }

        if (l1Size > (data.Length - DirtyBitmapFeature.FixedSize) / 8)
        {
            error = $"dirty bitmap L1 table of {l1Size} entries does not fit its feature";
            return false;
        }

        var l1 = new ulong[l1Size];
        for (int i = 0; i < l1.Length; i++)
        {
            l1[i] = BinaryPrimitives.ReadUInt64LittleEndian(data[(DirtyBitmapFeature.FixedSize + (i * 8))..]);
        }

        bitmap = new DirtyBitmapFeature(size, id, granularity, l1);
        error = string.Empty;
        return true;
    }
}
