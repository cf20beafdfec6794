using System.Buffers.Binary;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.IO;

namespace PrlFuse.Core.Convert;

/// <summary>
/// Fills a freshly created, empty expandable Parallels image with a view, flattened, in one sequential pass: the data
/// clusters in guest order from the image's data offset, then the BAT that maps them, then one fsync. Clusters that
/// read as zeros are not written (unallocated). The image must be private to the caller (a bundle being built in a
/// hidden folder): it is written without the in-use mark or locks, and is durable only when this returns.
/// </summary>
internal static class ParallelsWriter
{
    public static void Fill(string imagePath, SnapshotView view, Action<long> progress)
    {
        using var handle = File.OpenHandle(imagePath, FileMode.Open, FileAccess.ReadWrite, FileShare.None);
        byte[] head = new byte[FieldLocations.HeaderSize];
        RandomAccess.Read(handle, head, 0);
        if (!ParallelsHeader.TryRead(head, out var header, out string error))
        {
            throw new PrlFuseException(imagePath, error);
        }

        long c = header.ClusterBytes;
        long unit = header.BatUnitBytes;
        byte[] bat = new byte[(long)header.BatEntries * FieldLocations.BatEntrySize];
        long next = (long)header.DataOffsetSectors * 512;
        DiskConverter.ForEachDataRun(view, c, progress, (guest, data) =>
        {
            RandomAccess.Write(handle, data, next);
            for (long done = 0; done < data.Length; done += c)
            {
                long cluster = (guest + done) / c;
                BinaryPrimitives.WriteUInt32LittleEndian(bat.AsSpan((int)(cluster * FieldLocations.BatEntrySize)), checked((uint)((next + done) / unit)));
            }

            next += (data.Length + c - 1) / c * c;
        });

        // A short last cluster still ends the file on a cluster boundary, as the BAT's cluster says.
        if (next > RandomAccess.GetLength(handle))
        {
            RandomAccess.SetLength(handle, next);
        }

        RandomAccess.Write(handle, bat, FieldLocations.HeaderSize);
        DiskConverter.Sync(imagePath, PosixSync.FSync(handle), "fsync");
    }
}
