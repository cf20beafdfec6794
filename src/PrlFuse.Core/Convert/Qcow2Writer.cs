using System.Buffers.Binary;
using System.Numerics;
using Microsoft.Win32.SafeHandles;
using PrlFuse.Core.Engine;

namespace PrlFuse.Core.Convert;

/// <summary>
/// Writes a view as a fresh qcow2 version 3 image (16-bit refcounts) in one sequential pass, flattened or as one layer
/// of a backing chain. The layout is fixed before any data is read, from the allocation tables: header (with the
/// backing file's name and format, when there is one), refcount table, refcount blocks, L1 table, the L2 tables the
/// ranges need, then the data clusters in guest order. The metadata is sized for every cluster of the ranges; clusters
/// that read as zeros are not written (unallocated, or a zero cluster over a backing file whose bytes differ), so the
/// data area only holds real data and every cluster up to the end of the file is in use.
/// </summary>
internal static class Qcow2Writer
{
    public const long DefaultClusterBytes = 64 << 10;

    public const long MinClusterBytes = 512;

    public const long MaxClusterBytes = 2 << 20;

    private const ulong Copied = 1UL << 63;

    private const int RefcountOrder = 4;

    private const int HeaderLength = 104;

    /// <summary>Why <paramref name="clusterBytes"/> cannot be a qcow2 cluster size, or null when it can.</summary>
    public static string? ClusterSizeProblem(long clusterBytes) =>
        clusterBytes < MinClusterBytes || clusterBytes > MaxClusterBytes || !BitOperations.IsPow2(clusterBytes)
            ? $"qcow2 cluster size {clusterBytes} bytes is not a power of two from 512 bytes to 2 MiB"
            : null;

    /// <summary>The backing file header extension: the backing file's format name.</summary>
    private const uint BackingFormatExtension = 0xE2792ACA;

    /// <summary>An L2 entry of a cluster that reads as zeros, whatever the backing file holds there (version 3).</summary>
    private const ulong ZeroCluster = 1;

    public static void Write(SnapshotView view, SafeFileHandle file, long clusterBytes, Action<long> progress) =>
        WriteLayer(view, null, DiskConverter.DataClusters(view, clusterBytes), file, clusterBytes, null, progress);

    /// <summary>
    /// Writes the clusters of <paramref name="ranges"/> where <paramref name="view"/> differs from
    /// <paramref name="parent"/> (all of them that hold data when there is no parent), over the backing file
    /// <paramref name="backingName"/> (a qcow2 image holding the parent's view; null: none).
    /// </summary>
    public static void WriteLayer(SnapshotView view, SnapshotView? parent, List<(long Start, long End)> ranges, SafeFileHandle file, long clusterBytes, string? backingName, Action<long> progress)
    {
        if (ClusterSizeProblem(clusterBytes) is { } problem)
        {
            throw new PrlFuseException(null, problem);
        }

        long c = clusterBytes;
        long l2Entries = c / 8;
        long l1Entries = Math.Max(1, CeilDiv(view.Size, c * l2Entries));
        long l1Clusters = CeilDiv(l1Entries * 8, c);
        long dataUpper = ranges.Sum(r => CeilDiv(r.End - r.Start, c));

        // One L2 table for each L1 entry that any allocated range reaches, in guest order.
        var l2Slots = new SortedDictionary<long, int>();
        foreach (var (start, end) in ranges)
        {
            for (long l1 = start / (c * l2Entries); l1 <= (end - 1) / (c * l2Entries); l1++)
            {
                l2Slots.TryAdd(l1, 0);
            }
        }

        int slot = 0;
        foreach (long l1 in l2Slots.Keys.ToList())
        {
            l2Slots[l1] = slot++;
        }

        // The refcount blocks must cover every cluster, themselves and the table included: grow until it settles.
        long refcountsPerBlock = c * 8 / (1 << RefcountOrder);
        long blocks = 1;
        long tableClusters = 1;
        while (true)
        {
            long total = 1 + tableClusters + blocks + l1Clusters + l2Slots.Count + dataUpper;
            long needBlocks = CeilDiv(total, refcountsPerBlock);
            long needTable = CeilDiv(needBlocks * 8, c);
            if (needBlocks <= blocks && needTable <= tableClusters)
            {
                break;
            }

            blocks = Math.Max(blocks, needBlocks);
            tableClusters = Math.Max(tableClusters, needTable);
        }

        long tableOffset = c;
        long blocksOffset = tableOffset + (tableClusters * c);
        long l1Offset = blocksOffset + (blocks * c);
        long l2Offset = l1Offset + (l1Clusters * c);
        long dataOffset = l2Offset + (l2Slots.Count * c);

        var l2Tables = new byte[l2Slots.Count][];
        for (int i = 0; i < l2Tables.Length; i++)
        {
            l2Tables[i] = new byte[c];
        }

        long next = dataOffset;
        void MarkZeros(long guest, long length)
        {
            for (long done = 0; done < length; done += c)
            {
                long cluster = (guest + done) / c;
                var table = l2Tables[l2Slots[cluster / l2Entries]];
                BinaryPrimitives.WriteUInt64BigEndian(table.AsSpan((int)(cluster % l2Entries * 8)), ZeroCluster);
            }
        }

        DiskConverter.ForEachChangedRun(view, parent, ranges, c, progress, zeros: MarkZeros, write: (guest, data) =>
        {
            RandomAccess.Write(file, data, next);
            for (long done = 0; done < data.Length; done += c)
            {
                long cluster = (guest + done) / c;
                var table = l2Tables[l2Slots[cluster / l2Entries]];
                BinaryPrimitives.WriteUInt64BigEndian(table.AsSpan((int)(cluster % l2Entries * 8)), (ulong)(next + done) | Copied);
            }

            next += CeilDiv(data.Length, c) * c;
        });

        foreach (int index in l2Slots.Values)
        {
            RandomAccess.Write(file, l2Tables[index], l2Offset + (index * c));
        }

        byte[] l1Table = new byte[l1Clusters * c];
        foreach (var (l1, index) in l2Slots)
        {
            BinaryPrimitives.WriteUInt64BigEndian(l1Table.AsSpan((int)(l1 * 8)), (ulong)(l2Offset + (index * c)) | Copied);
        }

        RandomAccess.Write(file, l1Table, l1Offset);

        // Every cluster from the header to the end of the data is in use exactly once.
        long used = next / c;
        byte[] refcounts = new byte[blocks * c];
        for (long i = 0; i < used; i++)
        {
            BinaryPrimitives.WriteUInt16BigEndian(refcounts.AsSpan((int)(i * 2)), 1);
        }

        RandomAccess.Write(file, refcounts, blocksOffset);
        byte[] table = new byte[tableClusters * c];
        for (long i = 0; i < blocks; i++)
        {
            BinaryPrimitives.WriteUInt64BigEndian(table.AsSpan((int)(i * 8)), (ulong)(blocksOffset + (i * c)));
        }

        RandomAccess.Write(file, table, tableOffset);

        byte[] header = new byte[c];
        var h = header.AsSpan();
        BinaryPrimitives.WriteUInt32BigEndian(h, 0x514649fb);
        BinaryPrimitives.WriteUInt32BigEndian(h[4..], 3);
        BinaryPrimitives.WriteUInt32BigEndian(h[20..], (uint)BitOperations.Log2((ulong)c));
        BinaryPrimitives.WriteUInt64BigEndian(h[24..], (ulong)view.Size);
        BinaryPrimitives.WriteUInt32BigEndian(h[36..], (uint)l1Entries);
        BinaryPrimitives.WriteUInt64BigEndian(h[40..], (ulong)l1Offset);
        BinaryPrimitives.WriteUInt64BigEndian(h[48..], (ulong)tableOffset);
        BinaryPrimitives.WriteUInt32BigEndian(h[56..], (uint)tableClusters);
        BinaryPrimitives.WriteUInt32BigEndian(h[96..], RefcountOrder);
        BinaryPrimitives.WriteUInt32BigEndian(h[100..], HeaderLength);

        // The header extensions follow the header; their area ends with an end marker (type 0, length 0), and the
        // backing file's name comes after it.
        if (backingName is not null)
        {
            const string format = "qcow2";
            int at = HeaderLength;
            BinaryPrimitives.WriteUInt32BigEndian(h[at..], BackingFormatExtension);
            BinaryPrimitives.WriteUInt32BigEndian(h[(at + 4)..], (uint)format.Length);
            System.Text.Encoding.ASCII.GetBytes(format, h[(at + 8)..]);
            at += 8 + ((format.Length + 7) / 8 * 8) + 8;
            int nameBytes = System.Text.Encoding.UTF8.GetBytes(backingName, h[at..]);
            if (nameBytes > 1023)
            {
                throw new PrlFuseException(backingName, "backing file name is longer than 1023 bytes");
            }

            BinaryPrimitives.WriteUInt64BigEndian(h[8..], (ulong)at);
            BinaryPrimitives.WriteUInt32BigEndian(h[16..], (uint)nameBytes);
        }

        RandomAccess.Write(file, header, 0);
        RandomAccess.SetLength(file, next);
    }

    private static long CeilDiv(long a, long b) => (a + b - 1) / b;
}
