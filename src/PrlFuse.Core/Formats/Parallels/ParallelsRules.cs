namespace PrlFuse.Core.Formats.Parallels;

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

/// <summary>Which rule a header breaks.</summary>
public enum ParallelsFindingKind
{
    /// <summary>The BAT reaches past the end of the file: nothing of the image can be trusted.</summary>
    BatLargerThanFile,

    /// <summary>The BAT cannot address the whole disk; no repair can fix that.</summary>
    BatTooSmall,

    /// <summary>data_off is wrong (<see cref="ParallelsValidation.DataOffsetFault"/> says how).</summary>
    DataOffset,

    /// <summary>ext_off points outside the data area, or at a cluster larger than is read: the extension is ignored.</summary>
    Extension,
}

/// <summary>
/// One broken rule: the field (name and file offset, from <see cref="FieldLocations"/>) and what is wrong, in words.
/// <see cref="RefusesOpen"/>: the reader cannot serve the image at all (it refuses on the first such finding); the
/// others leave it readable, with a warning.
/// </summary>
public sealed record ParallelsFinding(ParallelsFindingKind Kind, string Field, int FieldOffset, string Message, bool RefusesOpen)
{
    /// <summary>"header data_off (offset 48)".</summary>
    public string Where => $"header {Field} (offset {FieldOffset})";
}

/// <summary>Every finding of <see cref="ParallelsRules.Validate"/>, and the values the rules settle for the reader and the checker.</summary>
public sealed record ParallelsValidation(
    IReadOnlyList<ParallelsFinding> Findings,
    DataOffsetFault DataOffsetFault,
    long DataOffsetBytes,
    long MinimumDataOffsetSectors,
    long ExtensionOffsetBytes,
    bool ExtensionReadable)
{
    /// <summary>
    /// End of the extension's cluster when it lies in the data area (0 otherwise): space in use even when the
    /// extension is too large to read, so it is never taken for leaked space.
    /// </summary>
    public long ExtensionEndBytes(long clusterBytes) => ExtensionOffsetBytes == 0 ? 0 : ExtensionOffsetBytes + clusterBytes;

    /// <summary>The first finding that leaves the image unreadable, or null.</summary>
    public ParallelsFinding? FirstRefusal => Findings.FirstOrDefault(f => f.RefusesOpen);

    public ParallelsFinding? Find(ParallelsFindingKind kind) => Findings.FirstOrDefault(f => f.Kind == kind);
}

/// <summary>
/// The rules a Parallels header must keep against the file it is in: one function, so the reader (which refuses on the
/// first finding that leaves the image meaningless) and the checker (which reports all of them) never disagree. The BAT
/// entries' own rules are <see cref="BlockAllocationTable.Classify"/>, against the data area settled here.
/// </summary>
public static class ParallelsRules
{
    /// <summary>
    /// Largest format-extension cluster read: the extension is read whole into memory, and a hostile tracks field can
    /// claim up to 2 GiB clusters. No real image has clusters near this size.
    /// </summary>
    public const long MaxExtensionClusterBytes = 64L << 20;

    /// <summary>Judges <paramref name="header"/> against a file of <paramref name="fileLength"/> bytes. Pure; hostile values assumed.</summary>
    public static ParallelsValidation Validate(in ParallelsHeader header, long fileLength)
    {
        var findings = new List<ParallelsFinding>();
        if (FieldLocations.BatEnd(header.BatEntries) > fileLength)
        {
            findings.Add(new(ParallelsFindingKind.BatLargerThanFile, "nb_bat_entries", FieldLocations.BatEntries, $"BAT of {header.BatEntries} entries is larger than the file ({fileLength} bytes) could hold; the file is truncated or not a Parallels image", RefusesOpen: true));
        }

        // Compared in sectors: both sides fit in 64 bits (at most 2^29 entries of 2^22 sectors), whereas a hostile
        // nb_sectors times 512 can wrap to a small number and slip past a byte comparison.
        if ((ulong)header.BatEntries * header.ClusterSectors < header.SectorCount)
        {
            findings.Add(new(ParallelsFindingKind.BatTooSmall, "nb_sectors", FieldLocations.SectorCount, $"BAT of {header.BatEntries} clusters is too small for a disk of {header.SectorCount} sectors", RefusesOpen: true));
        }

        // QEMU's rule (0 only for the old magic; never inside the BAT or past the file), plus the cluster alignment
        // the new magic requires. A data_off past the end is what a truncated file has: the reader serves what is left.
        long minimum = header.MinimumDataOffsetSectors;
        long dataOff = header.DataOffsetSectors;
        var (fault, text) = dataOff switch
        {
            0 when header.Magic == ParallelsMagic.WithouFreSpacExt => (DataOffsetFault.ZeroForExtMagic, "is 0, which a WithouFreSpacExt image may not have"),
            0 => (DataOffsetFault.None, null),
            _ when dataOff < minimum => (DataOffsetFault.InsideBat, $"lies inside the header and BAT (minimum {minimum})"),
            _ when dataOff > fileLength / 512 => (DataOffsetFault.PastEndOfFile, $"lies past the end of the file ({fileLength / 512} sectors)"),
            _ when header.Magic == ParallelsMagic.WithouFreSpacExt && dataOff % header.ClusterSectors != 0 => (DataOffsetFault.Misaligned, $"is not aligned to the cluster size of {header.ClusterSectors} sectors"),
            _ => (DataOffsetFault.None, (string?)null),
        };
        if (fault != DataOffsetFault.None)
        {
            findings.Add(new(ParallelsFindingKind.DataOffset, "data_off", FieldLocations.DataOffset, $"data_off field has incorrect value {dataOff}: it {text}", RefusesOpen: fault != DataOffsetFault.PastEndOfFile));
        }

        // Where the data area starts for the BAT rules: data_off, or the minimum when data_off is 0 (old magic) or
        // wrong (the value a repair writes).
        long dataOffsetBytes = (dataOff == 0 || fault != DataOffsetFault.None ? minimum : dataOff) * 512;

        long extensionOffsetBytes = 0;
        bool extensionReadable = false;
        ulong ext = header.ExtensionOffsetSectors;
        if (ext != 0)
        {
            long cluster = header.ClusterBytes;
            if (ext > (ulong)(fileLength / 512) || (long)ext * 512 < dataOffsetBytes || ((long)ext * 512) + cluster > fileLength)
            {
                findings.Add(new(ParallelsFindingKind.Extension, "ext_off", FieldLocations.ExtensionOffset, $"format extension offset {ext} is outside the data area; the extension is ignored", RefusesOpen: false));
            }
            else if (cluster > MaxExtensionClusterBytes)
            {
                findings.Add(new(ParallelsFindingKind.Extension, "ext_off", FieldLocations.ExtensionOffset, $"format extension cluster of {cluster} bytes is larger than PrlFuse reads ({MaxExtensionClusterBytes >> 20} MiB); the extension is ignored", RefusesOpen: false));
                extensionOffsetBytes = (long)ext * 512;
            }
            else
            {
                extensionOffsetBytes = (long)ext * 512;
                extensionReadable = true;
            }
        }

        return new ParallelsValidation(findings, fault, dataOffsetBytes, minimum, extensionOffsetBytes, extensionReadable);
    }
}
