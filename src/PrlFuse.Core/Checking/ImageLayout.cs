using PrlFuse.Core.Formats;
using PrlFuse.Core.IO;

namespace PrlFuse.Core.Checking;

/// <summary>What is wrong with an image's data_off field.</summary>
public enum DataOffsetFault
{
    None,

    /// <summary>0, which only the old magic may have (there it means the minimum).</summary>
    ZeroForExtMagic,

    /// <summary>Inside the header and BAT.</summary>
    InsideBat,

    /// <summary>Past the end of the file: the file was cut short (or the field is garbage).</summary>
    PastEndOfFile,

    /// <summary>Not on a cluster boundary, which the WithouFreSpacExt magic requires.</summary>
    Misaligned,
}

/// <summary>
/// An image's header and BAT, read and judged by one set of rules for both the checker (which reports and repairs all
/// it finds) and the reader (which refuses what leaves the image meaningless and serves the rest, failing reads of the
/// clusters whose BAT entries are damaged). One place, so a cluster the reader fails is exactly one the checker
/// reports and a repair fixes.
/// </summary>
public sealed class ImageLayout
{
    private ImageLayout(ParallelsHeader header, BlockAllocationTable bat, long fileLength)
    {
        Header = header;
        Bat = bat;
        FileLength = fileLength;
    }

    public ParallelsHeader Header { get; }

    public BlockAllocationTable Bat { get; }

    public long FileLength { get; }

    public DataOffsetFault DataOffsetFault { get; private set; }

    /// <summary>How data_off is wrong, in words that follow "it" ("lies inside the header and BAT (minimum 3)"); null when right.</summary>
    public string? DataOffsetFaultText { get; private set; }

    /// <summary>
    /// Where the data area starts for the BAT rules: data_off, or the minimum when data_off is 0 (old magic) or wrong
    /// (the value a repair writes).
    /// </summary>
    public long DataOffsetBytes { get; private set; }

    /// <summary>Set when the BAT cannot address the whole disk, which no repair can fix.</summary>
    public string? BatTooSmall { get; private set; }

    /// <summary>Every BAT entry that points where no cluster of this image can be: damage local to its cluster.</summary>
    public List<BatProblem> FindClusterProblems() => Bat.FindProblems(DataOffsetBytes, FileLength);

    /// <summary>The same problems one by one, for a caller that keeps only counts and a few (see <see cref="BlockAllocationTable.Scan"/>).</summary>
    public void ScanClusterProblems(Func<BatProblem, bool> onProblem) => Bat.Scan(DataOffsetBytes, FileLength, onProblem);

    /// <summary>
    /// Reads header and BAT. False, with the header field concerned and what is wrong, when they cannot be read at all:
    /// no header, not a Parallels image, or a BAT larger than the file. The file's own length bounds every size the
    /// header claims before anything is allocated for it.
    /// </summary>
    public static bool TryRead(ImageFile file, Action<long, long>? progress, out ImageLayout layout, out string where, out string error)
    {
        layout = null!;
        long length = file.Length;
        Span<byte> headerBytes = stackalloc byte[ParallelsHeader.Size];
        int n = file.Read(headerBytes, 0);
        if (!ParallelsHeader.TryRead(headerBytes[..n], out var header, out error))
        {
            where = "header";
            return false;
        }

        long batBytes = 4L * header.BatEntries;
        if (ParallelsHeader.Size + batBytes > length)
        {
            where = $"header nb_bat_entries (offset {ParallelsHeader.OffsetBatEntries})";
            error = $"BAT of {header.BatEntries} entries is larger than the file ({length} bytes) could hold; the file is truncated or not a Parallels image";
            return false;
        }

        // Read in chunks for the progress bar of a large image's check.
        var raw = GC.AllocateUninitializedArray<byte>(checked((int)batBytes));
        const int Chunk = 1 << 20;
        for (long done = 0; done < batBytes; done += Chunk)
        {
            int len = (int)Math.Min(Chunk, batBytes - done);
            file.ReadZeroFilled(raw.AsSpan((int)done, len), ParallelsHeader.Size + done);
            progress?.Invoke(done / 4, header.BatEntries);
        }

        var bat = BlockAllocationTable.Parse(raw, (int)header.BatEntries, header.BatUnitBytes, header.ClusterBytes);
        layout = new ImageLayout(header, bat, length);
        layout.JudgeHeader();
        where = string.Empty;
        error = string.Empty;
        return true;
    }

    private void JudgeHeader()
    {
        var header = Header;

        // Compared in sectors: both sides fit in 64 bits (at most 2^29 entries of 2^22 sectors), whereas a hostile
        // nb_sectors times 512 can wrap to a small number and slip past a byte comparison.
        if ((ulong)header.BatEntries * header.ClusterSectors < header.SectorCount)
        {
            BatTooSmall = $"BAT of {header.BatEntries} clusters is too small for a disk of {header.SectorCount} sectors";
        }

        // QEMU's rule (0 only for the old magic; never inside the BAT or past the file), plus the cluster alignment
        // the new magic requires.
        long minimum = header.MinimumDataOffsetSectors;
        long dataOff = header.DataOffsetSectors;
        (DataOffsetFault, DataOffsetFaultText) = dataOff switch
        {
            0 when header.Magic == ParallelsMagic.WithouFreSpacExt => (DataOffsetFault.ZeroForExtMagic, "is 0, which a WithouFreSpacExt image may not have"),
            0 => (DataOffsetFault.None, null),
            _ when dataOff < minimum => (DataOffsetFault.InsideBat, $"lies inside the header and BAT (minimum {minimum})"),
            _ when dataOff > FileLength / 512 => (DataOffsetFault.PastEndOfFile, $"lies past the end of the file ({FileLength / 512} sectors)"),
            _ when header.Magic == ParallelsMagic.WithouFreSpacExt && dataOff % header.ClusterSectors != 0 => (DataOffsetFault.Misaligned, $"is not aligned to the cluster size of {header.ClusterSectors} sectors"),
            _ => (DataOffsetFault.None, (string?)null),
        };
        DataOffsetBytes = (dataOff == 0 || DataOffsetFault != DataOffsetFault.None ? minimum : dataOff) * 512;
    }
}
