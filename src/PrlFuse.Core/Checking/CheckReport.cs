namespace PrlFuse.Core.Checking;

/// <summary>How bad a problem is; decides the exit code as 'qemu-img check' does.</summary>
public enum CheckSeverity
{
    /// <summary>Metadata that is wrong: reads or further writes may return or destroy wrong data (exit 2).</summary>
    Corruption,

    /// <summary>Space in the file nothing points at: waste, no harm to data (exit 3).</summary>
    Leak,

    /// <summary>The check itself could not be done, or something no repair can fix (exit 1).</summary>
    Error,

    /// <summary>Worth knowing, never changes the exit code.</summary>
    Warning,
}

/// <summary>What kind of problem, in the order 'qemu-img check' reports them.</summary>
public enum CheckProblemKind
{
    NotClosedCleanly,
    DataOffset,
    ClusterBeforeDataArea,
    ClusterMisaligned,
    ClusterOutsideImage,
    LeakedSpace,
    DuplicateOffset,
    Extension,
    BadImage,
    BadDescriptor,

    /// <summary>A qcow2 cluster used more often than its stored refcount says (QEMU's "ERROR cluster N refcount=R reference=U").</summary>
    RefcountMismatch,

    /// <summary>A qcow2 L1 or L2 entry whose COPIED flag disagrees with its cluster's refcount.</summary>
    CopiedFlag,
    MissingImage,

    /// <summary>
    /// Another process holds the image's write lock (or another lock in the way): a check reads it force-shared and says
    /// so (its findings may be a moment of a changing image; "not closed cleanly" is not reported), a repair is refused.
    /// </summary>
    InUse,
}

/// <summary>
/// One problem: in which file, where in it (a header field, a BAT entry, a byte range) and what. <see cref="BatIndex"/>
/// is the BAT entry concerned, or -1.
/// </summary>
public sealed record CheckProblem(string File, CheckProblemKind Kind, CheckSeverity Severity, string Where, string What)
{
    public long BatIndex { get; init; } = -1;

    /// <summary>Leaked clusters (for <see cref="CheckProblemKind.LeakedSpace"/>).</summary>
    public long LeakedClusters { get; init; }

    /// <summary>Set on the problems a repair fixed.</summary>
    public bool Repaired { get; init; }

    public bool Repairable => Severity is CheckSeverity.Corruption or CheckSeverity.Leak;

    /// <summary>One line: file, what kind (ERROR, LEAK, ...), where, what.</summary>
    public string ToLine()
    {
        string tag = Repaired ? "Repaired" : Severity switch
        {
            CheckSeverity.Corruption => "ERROR",
            CheckSeverity.Leak => "LEAK",
            CheckSeverity.Error => "CHECK-ERROR",
            _ => "warning",
        };
        return $"{System.IO.Path.GetFileName(File)}: {tag} {Where}: {What}";
    }

    public override string ToString() => ToLine();
}

/// <summary>The result of checking (or repairing) one image file.</summary>
public sealed class ImageCheckReport
{
    public ImageCheckReport(string path, IReadOnlyList<CheckProblem> problems)
    {
        Path = path;
        Problems = problems;
    }

    public string Path { get; }

    public IReadOnlyList<CheckProblem> Problems { get; }

    /// <summary>Clusters the BAT addresses and how many of them are allocated (0 when the header could not be read).</summary>
    public long TotalClusters { get; init; }

    public long AllocatedClusters { get; init; }

    /// <summary>Where the last used cluster ends: the length the file should have.</summary>
    public long ImageEndOffset { get; init; }

    public int Corruptions => Problems.Count(p => p.Severity == CheckSeverity.Corruption && !p.Repaired);

    public long LeakedClusters => Problems.Where(p => p.Severity == CheckSeverity.Leak && !p.Repaired).Sum(p => Math.Max(1, p.LeakedClusters));

    public int Errors => Problems.Count(p => p.Severity == CheckSeverity.Error);

    public int RepairedCount => Problems.Count(p => p.Repaired);

    /// <summary>As 'qemu-img check': 0 clean, 1 check error, 2 corruptions, 3 leaks only.</summary>
    public int ExitCode => CheckExit.Of(Errors, Corruptions, LeakedClusters);
}

/// <summary>A repair: what was found and fixed, then a fresh check of the result.</summary>
public sealed record ImageRepairResult(ImageCheckReport Repair, ImageCheckReport After)
{
    public int ExitCode => After.ExitCode;
}

/// <summary>The result of checking every image of a disk.</summary>
public sealed class DiskCheckReport
{
    public DiskCheckReport(string source, IReadOnlyList<CheckProblem> diskProblems, IReadOnlyList<ImageCheckReport> images, IReadOnlyList<ImageCheckReport>? after)
    {
        Source = source;
        DiskProblems = diskProblems;
        Images = images;
        After = after;
    }

    /// <summary>The descriptor, or the image for a bare image.</summary>
    public string Source { get; }

    /// <summary>Problems of the disk as a whole: the descriptor, missing or unusable image files.</summary>
    public IReadOnlyList<CheckProblem> DiskProblems { get; }

    /// <summary>One report per expandable image; for a repair, what was found and fixed.</summary>
    public IReadOnlyList<ImageCheckReport> Images { get; }

    /// <summary>For a repair: the fresh check of every image afterwards; null for a plain check.</summary>
    public IReadOnlyList<ImageCheckReport>? After { get; }

    public bool WasRepair => After is not null;

    private IReadOnlyList<ImageCheckReport> Final => After ?? Images;

    public int Errors => DiskProblems.Count(p => p.Severity == CheckSeverity.Error) + Final.Sum(i => i.Errors);

    public int Corruptions => Final.Sum(i => i.Corruptions);

    public long LeakedClusters => Final.Sum(i => i.LeakedClusters);

    public int RepairedCount => Images.Sum(i => i.RepairedCount);

    public int ExitCode => CheckExit.Of(Errors, Corruptions, LeakedClusters);
}

public static class CheckExit
{
    public const int Clean = 0;
    public const int CheckError = 1;
    public const int Corrupt = 2;
    public const int LeaksOnly = 3;

    public static int Of(int errors, int corruptions, long leaks) =>
        errors > 0 ? CheckError : corruptions > 0 ? Corrupt : leaks > 0 ? LeaksOnly : Clean;
}
