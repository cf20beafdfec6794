using System.Buffers.Binary;
using System.Numerics;
using Microsoft.Win32.SafeHandles;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Qed;

namespace PrlFuse.Core.Convert;

/// <summary>
/// Writes a view, flattened, as a fresh QED image (no backing file) in one sequential pass. The layout is fixed before
/// any data is read, from the view's allocation tables: the header cluster, the L1 table, the L2 tables the data needs,
/// then the data clusters in guest order. Clusters that read as zeros are not written (they stay unallocated); the
/// tables are written after the data they point at, and the header last, with the need-check bit clear: the image is
/// consistent once the caller's fsync returns.
/// </summary>
internal static class QedWriter
{
    public const long DefaultClusterBytes = 64 << 10;

    /// <summary>Clusters of one L1 or L2 table (as qemu-img creates them).</summary>
    private const int TableClusters = 4;

    /// <summary>Why <paramref name="clusterBytes"/> cannot be a QED cluster size, or null when it can.</summary>
    public static string? ClusterSizeProblem(long clusterBytes) =>
        clusterBytes < (1L << QedHeader.MinClusterBits) || clusterBytes > (1L << QedHeader.MaxClusterBits) || !BitOperations.IsPow2(clusterBytes)
            ? $"QED cluster size {clusterBytes} bytes is not a power of two from 4 KiB to 64 MiB"
            : null;

    public static void Write(SnapshotView view, SafeFileHandle file, long clusterBytes, Action<long> progress)
    {
        if (ClusterSizeProblem(clusterBytes) is { } problem)
        {
            throw new PrlFuseException(null, problem);
        }

        long c = clusterBytes;
        long tableBytes = TableClusters * c;
        long entries = tableBytes / FieldLocations.EntrySize;
        long span = entries * c;
        if (view.Size > entries * span)
        {
            throw new PrlFuseException(null, $"a QED image of {c}-byte clusters holds at most {entries * span} bytes; give a larger --cluster");
        }

        if (view.Size % 512 != 0)
        {
            throw new PrlFuseException(null, $"a QED image's size is a whole number of 512-byte sectors; this disk has {view.Size} bytes");
        }

        var ranges = DiskConverter.DataClusters(view, c);
        var l2Slots = new SortedDictionary<long, long>();
        foreach (var (start, end) in ranges)
        {
            for (long l1 = start / span; l1 <= (end - 1) / span; l1++)
            {
                l2Slots.TryAdd(l1, 0);
            }
        }

        long l1Offset = c;
        long l2Offset = l1Offset + tableBytes;
        long slot = 0;
        foreach (long l1 in l2Slots.Keys.ToList())
        {
            l2Slots[l1] = l2Offset + (slot++ * tableBytes);
        }

        long dataOffset = l2Offset + (l2Slots.Count * tableBytes);
        var l2Tables = l2Slots.Keys.ToDictionary(l1 => l1, _ => new byte[tableBytes]);
        long next = dataOffset;
        DiskConverter.ForEachDataRun(view, c, progress, (guest, data) =>
        {
            RandomAccess.Write(file, data, next);
            for (long done = 0; done < data.Length; done += c)
            {
                long cluster = (guest + done) / c;
                var table = l2Tables[cluster / entries];
                BinaryPrimitives.WriteUInt64LittleEndian(table.AsSpan((int)(cluster % entries * FieldLocations.EntrySize)), (ulong)(next + done));
            }

            next += (data.Length + c - 1) / c * c;
        });

        // A data run may end short at the end of the disk: the file still ends on a cluster boundary.
        RandomAccess.SetLength(file, next);
        byte[] l1Table = new byte[tableBytes];
        foreach (var (l1, offset) in l2Slots)
        {
            RandomAccess.Write(file, l2Tables[l1], offset);
            BinaryPrimitives.WriteUInt64LittleEndian(l1Table.AsSpan((int)(l1 * FieldLocations.EntrySize)), (ulong)offset);
        }

        RandomAccess.Write(file, l1Table, l1Offset);
        var header = new QedHeader
        {
            ClusterBytes = (uint)c,
            TableClusters = TableClusters,
            HeaderClusters = 1,
            Features = 0,
            CompatFeatures = 0,
            AutoclearFeatures = 0,
            L1TableOffset = l1Offset,
            ImageSize = view.Size,
        };
        byte[] head = new byte[c];
        header.WriteTo(head);
        RandomAccess.Write(file, head, 0);
    }
}
