using System.Runtime.CompilerServices;
using PrlFuse.Core.Images;

namespace PrlFuse.Core.Formats.Parallels;

/// <summary>
/// Damaged BAT entries: what the checker reports as damage local to clusters (<see cref="ParallelsLayout"/>). The image
/// still opens, so it can be inspected and everything sound served; reads of those clusters fail as a disk's
/// unreadable sectors do, and the image is never written (a repair decides what the clusters hold).
/// </summary>
public sealed partial class ExpandableImage
{
    /// <summary>Damaged BAT entries listed one by one in the warnings; the rest are counted.</summary>
    public const int DamageWarningsListed = 8;

    // One bit per BAT entry, set for damaged ones; null when there are none (the read path then tests one null).
    private ulong[]? _damaged;
    private long _damageFileLength;

    /// <summary>How many BAT entries are damaged (reads of their clusters fail).</summary>
    public long DamagedClusterCount { get; private set; }

    /// <summary>data_off lies past the end of the file (a truncated file): the data area the header names is not there.</summary>
    public bool DataOffsetPastEnd { get; private set; }

    /// <summary>
    /// The damage in words ("2 damaged BAT entries"), or null when there is none. Damage makes a write unsafe: a write
    /// could allocate over space a damaged entry points at, or (data_off past the end) into space the header says is
    /// not data. The image is served read-only until a repair.
    /// </summary>
    public override string? DamageText => (DamagedClusterCount, DataOffsetPastEnd) switch
    {
        (0, false) => null,
        (0, true) => "a data_off past the end of the file",
        (long n, _) => $"{n} damaged BAT entr{(n == 1 ? "y" : "ies")}",
    };

    /// <summary>True when reads of guest cluster <paramref name="cluster"/> fail because its BAT entry is damaged.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool IsClusterDamaged(long cluster) =>
        _damaged is { } d && (ulong)cluster < (ulong)Bat.Count && (d[cluster >> 6] & (1UL << (int)(cluster & 63))) != 0;

    private void FindDamage(ParallelsLayout layout)
    {
        var listed = new List<BatProblem>();
        long count = 0;
        ulong[]? bits = null;
        int entries = Bat.Count;
        layout.ScanClusterProblems(p =>
        {
            bits ??= new ulong[(entries + 63) / 64];
            bits[p.Index >> 6] |= 1UL << (int)(p.Index & 63);
            if (listed.Count < DamageWarningsListed)
            {
                listed.Add(p);
            }

            count++;
            return true;
        });

        if (count == 0)
        {
            return;
        }

        _damaged = bits;
        _damageFileLength = layout.FileLength;
        DamagedClusterCount = count;
        AddWarning(WarningCodes.DamagedClusters, $"{count} damaged BAT entr{(count == 1 ? "y" : "ies")}: reads of {(count == 1 ? "its cluster" : "their clusters")} fail with an I/O error, everything else is served; the image is not written until 'prlfuse check --repair'");
        foreach (var p in listed)
        {
            AddWarning(WarningCodes.DamagedClusters, $"{p.Describe(ClusterBytes)} (guest cluster {p.Index}, bytes {p.Index * ClusterBytes}-{((p.Index + 1) * ClusterBytes) - 1})");
        }

        if (count > listed.Count)
        {
            AddWarning(WarningCodes.DamagedClusters, $"and {count - listed.Count} more damaged BAT entries ('prlfuse check' lists them all)");
        }
    }

    /// <summary>The lowest BAT index that points at <paramref name="entry"/>: the one a repair lets keep the cluster.</summary>
    private long FirstUserOf(uint entry)
    {
        for (int i = 0; i < Bat.Count; i++)
        {
            if (Bat.GetEntry(i) == entry)
            {
                return i;
            }
        }

        return -1;
    }

    /// <summary>The error for a read of guest <paramref name="offset"/>, which <see cref="TryMap"/> found damaged.</summary>
    public override DamagedClusterException DamagedRead(long offset)
    {
        long cluster = offset / ClusterBytes;
        uint entry = Bat.GetEntry(cluster);
        long host = entry * Bat.UnitBytes;

        // Not kept per cluster (a hostile BAT may damage millions): one entry's own faults are found again; what
        // remains is a shared cluster, whose first user is looked up (an error path: a scan of the BAT is cheap here).
        var problem = Bat.Classify(entry, DataOffsetBytes, _damageFileLength) is { } kind
            ? new BatProblem(kind, cluster, host)
            : new BatProblem(BatProblemKind.Duplicate, cluster, host, FirstUserOf(entry));
        return new DamagedClusterException(Path, cluster, problem.Describe(ClusterBytes));
    }
}
