using System.Buffers.Binary;
using System.Collections.Immutable;
using System.Text;
using PrlFuse.Core.IO;

namespace PrlFuse.Core.Formats.Qcow2;

/// <summary>
/// One internal snapshot of a qcow2 image: its own L1 table (the guest disk as it was), its own guest size, and the
/// names QEMU gives it (a unique ID, usually a number, and a free-form name).
/// </summary>
public sealed record Qcow2Snapshot(
    int Index,
    string Id,
    string Name,
    long L1TableOffset,
    uint L1Size,
    DateTimeOffset Date,
    ulong VmClockNanoseconds,
    ulong VmStateSize,
    long DiskSize);

/// <summary>Reading the snapshot table: every entry judged as hostile input, against the file's length and QEMU's caps.</summary>
public static class Qcow2SnapshotTable
{
    /// <summary>QEMU's cap on the whole table's bytes (QCOW_MAX_SNAPSHOTS_SIZE), and on one entry's extra data.</summary>
    public const long MaxTableBytes = 64L << 20;
    public const int MaxExtraDataBytes = 1024;

    /// <summary>
    /// Reads one entry at the start of <paramref name="entry"/> (which holds at least its fixed part; when it is too
    /// short for the variable part, <paramref name="length"/> says how many bytes the whole entry needs (without the
    /// padding to 8 bytes that separates it from the next, which the last entry's file may lack) and the result
    /// is false with an empty <paramref name="error"/>). A version 2 entry (no disk size in its extra data) stands for
    /// the image's guest size.
    /// </summary>
    public static bool TryReadEntry(ReadOnlySpan<byte> entry, int index, Qcow2Header header, out Qcow2Snapshot? snapshot, out int length, out string error)
    {
        int clusterBits = header.ClusterBits;
        snapshot = null;
        length = FieldLocations.SnapshotFixedSize;
        error = "";
        if (entry.Length < FieldLocations.SnapshotFixedSize)
        {
            return false;
        }

        int extraSize = (int)Math.Min(BinaryPrimitives.ReadUInt32BigEndian(entry[FieldLocations.SnapshotExtraDataSize..]), int.MaxValue);
        if (extraSize > MaxExtraDataBytes)
        {
            error = $"internal snapshot {index}: {extraSize} bytes of extra data is more than {MaxExtraDataBytes}";
            return false;
        }

        int idSize = BinaryPrimitives.ReadUInt16BigEndian(entry[FieldLocations.SnapshotIdSize..]);
        int nameSize = BinaryPrimitives.ReadUInt16BigEndian(entry[FieldLocations.SnapshotNameSize..]);
        length = FieldLocations.SnapshotFixedSize + extraSize + idSize + nameSize;
        if (entry.Length < length)
        {
            return false;
        }

        ulong l1Offset = BinaryPrimitives.ReadUInt64BigEndian(entry[FieldLocations.SnapshotL1TableOffset..]);
        uint l1Size = BinaryPrimitives.ReadUInt32BigEndian(entry[FieldLocations.SnapshotL1Size..]);
        long clusterBytes = 1L << clusterBits;
        if (l1Offset % (ulong)clusterBytes != 0 || l1Offset > long.MaxValue)
        {
            error = $"internal snapshot {index}: its L1 table offset {l1Offset} is not cluster-aligned";
            return false;
        }

        if ((long)l1Size * FieldLocations.L1EntrySize > Qcow2Header.MaxL1TableBytes)
        {
            error = $"internal snapshot {index}: its L1 table of {l1Size} entries is larger than {Qcow2Header.MaxL1TableBytes} bytes";
            return false;
        }

        var extra = entry.Slice(FieldLocations.SnapshotFixedSize, extraSize);
        ulong vmState = BinaryPrimitives.ReadUInt32BigEndian(entry[FieldLocations.SnapshotVmStateSize..]);
        if (extra.Length >= FieldLocations.SnapshotExtraVmStateSizeLarge + 8)
        {
            vmState = BinaryPrimitives.ReadUInt64BigEndian(extra[FieldLocations.SnapshotExtraVmStateSizeLarge..]);
        }

        long diskSize = header.Size;
        if (extra.Length >= FieldLocations.SnapshotExtraDiskSize + 8)
        {
            ulong size = BinaryPrimitives.ReadUInt64BigEndian(extra[FieldLocations.SnapshotExtraDiskSize..]);
            if (size > long.MaxValue / 2 || size % 512 != 0)
            {
                error = $"internal snapshot {index}: its disk size {size} is not a whole number of sectors the format can map";
                return false;
            }

            diskSize = (long)size;
        }

        // The snapshot's L1 table must cover its disk, or reads past the table would have no entry to look at.
        long needed = Qcow2Header.RequiredL1(diskSize, clusterBits, header.L2EntryBytes);
        if (l1Size < needed && diskSize > 0 && l1Offset != 0)
        {
            error = $"internal snapshot {index}: its L1 table of {l1Size} entries does not cover its disk of {diskSize} bytes ({needed} needed)";
            return false;
        }

        var strings = entry.Slice(FieldLocations.SnapshotFixedSize + extraSize);
        string id = Text(strings[..idSize]);
        string name = Text(strings.Slice(idSize, nameSize));
        uint seconds = BinaryPrimitives.ReadUInt32BigEndian(entry[FieldLocations.SnapshotDateSeconds..]);
        uint nanoseconds = BinaryPrimitives.ReadUInt32BigEndian(entry[FieldLocations.SnapshotDateNanoseconds..]);
        var date = DateTimeOffset.FromUnixTimeSeconds(seconds).AddTicks(Math.Min(nanoseconds, 999_999_999u) / 100);
        ulong vmClock = BinaryPrimitives.ReadUInt64BigEndian(entry[FieldLocations.SnapshotVmClockNanoseconds..]);
        snapshot = new Qcow2Snapshot(index, id, name, (long)l1Offset, l1Size, date, vmClock, vmState, diskSize);
        return true;
    }

    /// <summary>Reads every entry of <paramref name="header"/>'s snapshot table; throws <see cref="ImageFormatException"/>.</summary>
    public static ImmutableArray<Qcow2Snapshot> Read(ImageFile file, Qcow2Header header)
    {
        if (header.SnapshotCount == 0)
        {
            return [];
        }

        long fileLength = file.Length;
        var snapshots = ImmutableArray.CreateBuilder<Qcow2Snapshot>((int)header.SnapshotCount);
        var ids = new HashSet<string>(StringComparer.Ordinal);
        byte[] buffer = new byte[FieldLocations.SnapshotFixedSize + MaxExtraDataBytes + (2 * ushort.MaxValue) + 8];
        long offset = header.SnapshotsOffset;
        for (int i = 0; i < header.SnapshotCount; i++)
        {
            if (offset - header.SnapshotsOffset >= MaxTableBytes)
            {
                throw new ImageFormatException(file.Path, $"snapshot table is larger than {MaxTableBytes} bytes; refused");
            }

            if (offset > fileLength - FieldLocations.SnapshotFixedSize)
            {
                throw new ImageFormatException(file.Path, $"snapshot table entry {i} at offset {offset} lies outside the file ({fileLength} bytes)");
            }

            file.ReadZeroFilled(buffer.AsSpan(0, FieldLocations.SnapshotFixedSize), offset);
            if (!TryReadEntry(buffer.AsSpan(0, FieldLocations.SnapshotFixedSize), i, header, out var snapshot, out int length, out string error))
            {
                if (error.Length > 0)
                {
                    throw new ImageFormatException(file.Path, error);
                }

                if (offset > fileLength - length)
                {
                    throw new ImageFormatException(file.Path, $"snapshot table entry {i} at offset {offset} ({length} bytes) lies outside the file ({fileLength} bytes)");
                }

                file.ReadZeroFilled(buffer.AsSpan(0, length), offset);
                if (!TryReadEntry(buffer.AsSpan(0, length), i, header, out snapshot, out _, out error))
                {
                    throw new ImageFormatException(file.Path, error.Length > 0 ? error : $"snapshot table entry {i} cannot be read");
                }
            }

            if (snapshot!.L1Size > 0 && snapshot.L1TableOffset > fileLength - ((long)snapshot.L1Size * FieldLocations.L1EntrySize))
            {
                throw new ImageFormatException(file.Path, $"internal snapshot {snapshot.Id}: its L1 table at offset {snapshot.L1TableOffset} lies outside the file ({fileLength} bytes)");
            }

            if (!ids.Add(snapshot.Id))
            {
                throw new ImageFormatException(file.Path, $"internal snapshot ID \"{snapshot.Id}\" appears twice in the snapshot table");
            }

            snapshots.Add(snapshot);
            offset += (length + 7) & ~7;
        }

        return snapshots.MoveToImmutable();
    }

    /// <summary>QEMU stores the strings without terminator or encoding; invalid UTF-8 becomes U+FFFD.</summary>
    private static string Text(ReadOnlySpan<byte> bytes) => Encoding.UTF8.GetString(bytes);
}
