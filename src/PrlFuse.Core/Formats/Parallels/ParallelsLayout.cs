using PrlFuse.Core.IO;

namespace PrlFuse.Core.Formats.Parallels;

/// <summary>
/// An image's header and BAT, read from its file and judged by the format's rules (<see cref="ParallelsRules"/> for the
/// header, <see cref="BlockAllocationTable.Classify"/> for the entries) for both the checker (which reports and repairs
/// all it finds) and the reader (which refuses what leaves the image meaningless and serves the rest, failing reads of
/// the clusters whose BAT entries are damaged). So a cluster the reader fails is exactly one the checker reports and a
/// repair fixes.
/// </summary>
public sealed class ParallelsLayout
{
    private ParallelsLayout(ParallelsHeader header, BlockAllocationTable bat, long fileLength, ParallelsValidation validation)
    {
        Header = header;
        Bat = bat;
        FileLength = fileLength;
        Validation = validation;
    }

    public ParallelsHeader Header { get; }

    public BlockAllocationTable Bat { get; }

    public long FileLength { get; }

    /// <summary>What the header's rules found, and the data area they settle.</summary>
    public ParallelsValidation Validation { get; }

    /// <summary>Where the data area starts for the BAT rules (see <see cref="ParallelsValidation.DataOffsetBytes"/>).</summary>
    public long DataOffsetBytes => Validation.DataOffsetBytes;

    /// <summary>Every BAT entry that points where no cluster of this image can be: damage local to its cluster.</summary>
    public List<BatProblem> FindClusterProblems() => Bat.FindProblems(DataOffsetBytes, FileLength);

    /// <summary>The same problems one by one, for a caller that keeps only counts and a few (see <see cref="BlockAllocationTable.Scan"/>).</summary>
    public void ScanClusterProblems(Func<BatProblem, bool> onProblem) => Bat.Scan(DataOffsetBytes, FileLength, onProblem);

    /// <summary>
    /// Reads header and BAT. False, with the finding, when they cannot be read at all: no header, not a Parallels
    /// image, or a BAT larger than the file. The file's own length bounds every size the header claims before anything
    /// is allocated for it.
    /// </summary>
    public static bool TryRead(ImageFile file, Action<long, long>? progress, out ParallelsLayout layout, out string where, out string error)
    {
        layout = null!;
        long length = file.Length;
        Span<byte> headerBytes = stackalloc byte[FieldLocations.HeaderSize];
        int n = file.Read(headerBytes, 0);
        if (!ParallelsHeader.TryRead(headerBytes[..n], out var header, out error))
        {
            where = "header";
            return false;
        }

        var validation = ParallelsRules.Validate(header, length);
        if (validation.Find(ParallelsFindingKind.BatLargerThanFile) is { } tooLarge)
        {
            where = tooLarge.Where;
            error = tooLarge.Message;
            return false;
        }

        // Read straight into the entries (little-endian on disk), in chunks for the progress bar of a large image's
        // check: a 2 TiB disk of 1 MiB clusters has 8 MiB of BAT per image, and a second copy of it to parse from
        // doubled what opening a deep chain of such images allocates and faults in.
        long batBytes = FieldLocations.BatEnd(header.BatEntries) - FieldLocations.HeaderSize;
        var entries = GC.AllocateUninitializedArray<uint>(checked((int)header.BatEntries));
        var raw = System.Runtime.InteropServices.MemoryMarshal.AsBytes(entries.AsSpan());
        const int Chunk = 1 << 20;
        for (long done = 0; done < batBytes; done += Chunk)
        {
            int len = (int)Math.Min(Chunk, batBytes - done);
            file.ReadZeroFilled(raw.Slice((int)done, len), FieldLocations.HeaderSize + done);
            progress?.Invoke(done / FieldLocations.BatEntrySize, header.BatEntries);
        }

        if (!BitConverter.IsLittleEndian)
        {
            System.Buffers.Binary.BinaryPrimitives.ReverseEndianness(entries, entries);
        }

        var bat = new BlockAllocationTable(entries, header.BatUnitBytes, header.ClusterBytes);
        layout = new ParallelsLayout(header, bat, length, validation);
        where = string.Empty;
        error = string.Empty;
        return true;
    }
}
