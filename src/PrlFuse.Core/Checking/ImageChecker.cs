using System.Buffers.Binary;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.IO;
using PrlFuse.Core.Images;

namespace PrlFuse.Core.Checking;

/// <summary>How to check or repair an image.</summary>
public sealed record ImageCheckOptions
{
    /// <summary>
    /// Opens the image file (path, writable). Null: read-only and shared for a check, read-write with an exclusive
    /// lock for a repair. Tests substitute one that records or injects faults.
    /// </summary>
    public Func<string, bool, ImageFile>? OpenFile { get; init; }

    /// <summary>Called with (done, total) work units while a large image is checked or repaired.</summary>
    public Action<long, long>? Progress { get; init; }

    /// <summary>
    /// Check with force-share locks from the start (as <c>qemu-img check -U</c>); a plain check falls back to them by
    /// itself when a writer holds an image. Not for a repair.
    /// </summary>
    public bool ForceShare { get; init; }
}

/// <summary>
/// Finds what 'qemu-img check' finds in a Parallels expandable image, in its order: not closed cleanly, a wrong
/// data_off, BAT entries that point outside the file (and, stricter than QEMU, before the data area or between
/// clusters), space leaked at the end of the file, and BAT entries that share a cluster. Independent of the reader:
/// it parses header and BAT itself, so it works on images <see cref="ExpandableImage.Open"/> refuses.
/// <para>
/// A repair writes crash-safely: first the entries that point nowhere are cleared (so no later write can make them
/// point at something), then copies of shared clusters are written and made durable before the entries that point
/// at them, then the file is trimmed, and the header (data_off, in_use) is written last. A crash at any step leaves
/// an image that a new repair finishes.
/// </para>
/// </summary>
public static class ImageChecker
{
    private const int CopyChunkBytes = 4 << 20;

    /// <summary>What a clean close writes to in_use (as QEMU does: 0, a value every reader takes as clean).</summary>
    public const uint RepairedInUse = 0;

    /// <summary>
    /// Checks one image; never writes (the file is opened read-only). It is locked as a QEMU reader locks it; while
    /// another process writes it (holds the write lock), it is read force-shared instead and the report starts with a
    /// <see cref="CheckProblemKind.InUse"/> error.
    /// </summary>
    public static ImageCheckReport Check(string path, ImageCheckOptions? options = null)
    {
        options ??= new ImageCheckOptions();
        using var file = Open(path, writable: false, options);
        string? holder = LockForCheck(file, options.ForceShare);
        return Analyze(file, path, options.Progress, holder).ToReport(repaired: false);
    }

    /// <summary>Who holds the image when it is in use by another writer (then locked force-share), else null.</summary>
    internal static string? LockForCheck(ImageFile file, bool forceShare)
    {
        if (!forceShare)
        {
            try
            {
                ImageLock.Acquire(file, ImageLockMode.ReadOnly);
                return null;
            }
            catch (ImageInUseException e)
            {
                // Not refused outright: what can be read is worth reporting, and that it is in use first of all.
                ImageLock.Acquire(file, ImageLockMode.ForceShare);
                return e.Holder;
            }
        }

        return ImageLock.Acquire(file, ImageLockMode.ForceShare).OtherWriter
            ? ImageLock.DescribeHolder(new LockConflict(QemuPermission.Write, LockConflictKind.Held), heldByWriter: true)
            : null;
    }

    /// <summary>
    /// Repairs what <see cref="Check"/> finds, then checks again. The image is locked as a QEMU writer locks it first:
    /// <see cref="ImageInUseException"/> while any other process has it open without force-share.
    /// </summary>
    public static ImageRepairResult Repair(string path, ImageCheckOptions? options = null)
    {
        options ??= new ImageCheckOptions();
        if (options.ForceShare)
        {
            throw new PrlFuseException(path, "a repair writes: it cannot be combined with --force-share");
        }

        // Nothing to repair means nothing opened for writing: a clean image on a read-only filesystem, or one whose
        // file has no write permission, checks clean without a write open (which would fail or, as root, succeed).
        var before = Check(path, options);
        if (!before.Problems.Any(p => p.Kind == CheckProblemKind.InUse) && !before.Problems.Any(p => p.Repairable))
        {
            // Still refused while anyone else has the image open, as the write lock would be.
            using (var probe = Open(path, writable: false, options))
            {
                if (probe.Handle is { } handle && ImageLock.FindConflict(handle, ImageLockMode.ReadWrite) is { } conflict)
                {
                    throw new ImageInUseException(path, conflict, ImageLock.OtherWriterPresent(handle), ImageLockMode.ReadWrite);
                }
            }

            return new ImageRepairResult(before, before);
        }

        if (PathRules.ReadOnlyReason(path) is { } readOnly)
        {
            throw new PrlFuseException(path, $"cannot repair: {readOnly}; make it writable first");
        }

        ImageCheckReport repair;
        using (var file = Open(path, writable: true, options))
        {
            ImageLock.Acquire(file, ImageLockMode.ReadWrite);
            var analysis = Analyze(file, path, options.Progress, holder: null);
            if (analysis.Fatal || !analysis.Problems.Any(p => p.Repairable))
            {
                repair = analysis.ToReport(repaired: false);
            }
            else
            {
                Apply(file, analysis, options.Progress);
                repair = analysis.ToReport(repaired: true);
            }
        }

        return new ImageRepairResult(repair, Check(path, options with { Progress = null }));
    }

    internal static ImageFile Open(string path, bool writable, ImageCheckOptions options)
    {
        if (!File.Exists(path))
        {
            throw new PrlFuseException(path, "no such file");
        }

        return options.OpenFile is { } open ? open(path, writable) : CheckerFile.Open(path, writable);
    }

    /// <summary>Everything found, and what a repair would change.</summary>
    private sealed class Analysis(string path)
    {
        public string Path { get; } = path;

        public List<CheckProblem> Problems { get; } = [];

        public bool Fatal { get; set; }

        public ParallelsHeader Header { get; set; }

        public uint[] Entries { get; set; } = [];

        public long FileLength { get; set; }

        public long DataOffsetBytes { get; set; }

        public uint? NewDataOffsetSectors { get; set; }

        public List<int> Clear { get; } = [];

        public List<int> Duplicates { get; } = [];

        /// <summary>End of the last cluster anything valid uses (BAT, format extension, bitmap), at least data_off.</summary>
        public long UsedEnd { get; set; }

        public long Allocated { get; set; }

        public void Add(CheckProblemKind kind, CheckSeverity severity, string where, string what, long index = -1, long leaked = 0) =>
            Problems.Add(new CheckProblem(Path, kind, severity, where, what) { BatIndex = index, LeakedClusters = leaked });

        public ImageCheckReport ToReport(bool repaired) =>
            new(Path, repaired ? Problems.Select(p => p.Repairable ? p with { Repaired = true } : p).ToList() : Problems)
            {
                TotalClusters = Entries.Length,
                AllocatedClusters = Allocated,
                ImageEndOffset = UsedEnd,
            };
    }

    /// <summary>Reads and judges the image; <paramref name="holder"/> is who writes it meanwhile (it was locked force-share), or null.</summary>
    private static Analysis Analyze(ImageFile file, string path, Action<long, long>? progress, string? holder)
    {
        var a = new Analysis(path);
        if (holder is not null)
        {
            a.Add(CheckProblemKind.InUse, CheckSeverity.Error, "image", $"image is in use: {holder}; it was read force-shared, so what follows may be a moment of a changing image (close it for a reliable check)");
        }

        long length = file.Length;
        a.FileLength = length;
        if (!ParallelsLayout.TryRead(file, progress, out var layout, out string where, out string error))
        {
            a.Add(CheckProblemKind.BadImage, CheckSeverity.Error, where, error);
            a.Fatal = true;
            return a;
        }

        var header = layout.Header;
        var rules = layout.Validation;
        a.Header = header;
        if (rules.Find(ParallelsFindingKind.BatTooSmall) is { } small)
        {
            a.Add(CheckProblemKind.BadImage, CheckSeverity.Error, small.Where, small.Message + " (not repairable)");
        }

        // 1. Not closed cleanly (a live writer's "Ynot" is no sign of a crash).
        if (header.IsUnclean && holder is null)
        {
            a.Add(CheckProblemKind.NotClosedCleanly, CheckSeverity.Corruption, $"header in_use (offset {FieldLocations.InUse})", "image was not closed correctly (in_use is \"Ynot\"); repair marks it clean");
        }

        // 2. data_off (the reader refuses the same values).
        if (rules.Find(ParallelsFindingKind.DataOffset) is { } dataOff)
        {
            a.Add(CheckProblemKind.DataOffset, CheckSeverity.Corruption, dataOff.Where, $"{dataOff.Message}; repair sets it to {rules.MinimumDataOffsetSectors}");
            a.NewDataOffsetSectors = checked((uint)rules.MinimumDataOffsetSectors);
        }

        a.DataOffsetBytes = layout.DataOffsetBytes;

        // 3. The BAT entries, by the rules the reader fails reads by.
        var bat = layout.Bat;
        var entries = new uint[bat.Count];
        for (int i = 0; i < entries.Length; i++)
        {
            entries[i] = bat.GetEntry(i);
        }

        a.Entries = entries;
        var problems = layout.FindClusterProblems();
        var invalid = new HashSet<long>();
        foreach (var p in problems.Where(p => p.Kind != BatProblemKind.Duplicate))
        {
            invalid.Add(p.Index);
            a.Clear.Add((int)p.Index);
            string at = BatWhere(p.Index);
            switch (p.Kind)
            {
                case BatProblemKind.BeforeDataArea:
                    a.Add(CheckProblemKind.ClusterBeforeDataArea, CheckSeverity.Corruption, at, $"cluster {p.Index} points at offset {p.HostOffset}, before the data area at {a.DataOffsetBytes}; repair clears the entry", p.Index);
                    break;
                case BatProblemKind.Misaligned:
                    a.Add(CheckProblemKind.ClusterMisaligned, CheckSeverity.Corruption, at, $"cluster {p.Index} points at offset {p.HostOffset}, not on a {header.ClusterBytes}-byte cluster boundary of the data area at {a.DataOffsetBytes}; repair clears the entry", p.Index);
                    break;
                default:
                    a.Add(CheckProblemKind.ClusterOutsideImage, CheckSeverity.Corruption, at, $"cluster {p.Index} is outside image: it points at offset {p.HostOffset}, and the file ends at {length}; repair clears the entry", p.Index);
                    break;
            }
        }

        long usedEnd = a.DataOffsetBytes;
        long allocated = 0;
        for (int i = 0; i < entries.Length; i++)
        {
            if (entries[i] != 0 && !invalid.Contains(i))
            {
                allocated++;
                usedEnd = Math.Max(usedEnd, (entries[i] * header.BatUnitBytes) + header.ClusterBytes);
            }
        }

        a.Allocated = allocated;
        usedEnd = Math.Max(usedEnd, CheckExtension(file, a, rules, length));
        a.UsedEnd = usedEnd;

        // 4. Leaked space at the end.
        if (length > usedEnd)
        {
            long leaked = length - usedEnd;
            long clusters = (leaked + header.ClusterBytes - 1) / header.ClusterBytes;
            a.Add(CheckProblemKind.LeakedSpace, CheckSeverity.Leak, $"file offset {usedEnd}-{length}", $"space leaked at the end of the image: {leaked} bytes ({clusters} clusters); repair trims the file", leaked: clusters);
        }

        // 5. Duplicates: the first entry keeps the cluster, every later one gets a copy.
        foreach (var p in problems.Where(p => p.Kind == BatProblemKind.Duplicate).OrderBy(p => p.Index))
        {
            a.Duplicates.Add((int)p.Index);
            a.Add(CheckProblemKind.DuplicateOffset, CheckSeverity.Corruption, BatWhere(p.Index), $"duplicate offset in BAT entry {p.Index}: offset {p.HostOffset} is used by entry {p.OtherIndex} too; repair gives it a copy of the cluster", p.Index);
        }

        progress?.Invoke(header.BatEntries, header.BatEntries);
        return a;
    }

    private static string BatWhere(long index) => $"BAT entry {index} (file offset {FieldLocations.BatEntry(index)})";

    /// <summary>Reports a format extension that cannot be used; returns the end of the clusters a valid one uses.</summary>
    private static long CheckExtension(ImageFile file, Analysis a, ParallelsValidation rules, long length)
    {
        long cluster = a.Header.ClusterBytes;
        string where = $"header ext_off (offset {FieldLocations.ExtensionOffset})";
        if (rules.Find(ParallelsFindingKind.Extension) is { } finding)
        {
            a.Add(CheckProblemKind.Extension, CheckSeverity.Warning, finding.Where, finding.Message);
        }

        long end = rules.ExtensionEndBytes(cluster);
        if (!rules.ExtensionReadable)
        {
            return end;
        }

        long offset = rules.ExtensionOffsetBytes;
        byte[] buffer = new byte[cluster];
        file.ReadZeroFilled(buffer, offset);
        if (!FormatExtension.TryRead(buffer, out var ext, out string error))
        {
            a.Add(CheckProblemKind.Extension, CheckSeverity.Warning, where, $"{error}; the extension is ignored");
            return end;
        }

        if (!ext!.ChecksumValid)
        {
            a.Add(CheckProblemKind.Extension, CheckSeverity.Warning, where, $"{error}; the extension is ignored");
        }

        foreach (var f in ext.Features.Where(f => !f.IsDirtyBitmap && (f.Flags & ExtensionFeature.FlagNecessary) != 0))
        {
            a.Add(CheckProblemKind.Extension, CheckSeverity.Warning, where, $"feature {f.Name} is marked NECESSARY and unknown to PrlFuse: the image is served read-only");
        }

        if (ext.DirtyBitmap is { } bitmap)
        {
            foreach (ulong e in bitmap.L1Table)
            {
                if (e > 1 && e <= (ulong)(length / 512) && ((long)e * 512) + cluster <= length)
                {
                    end = Math.Max(end, ((long)e * 512) + cluster);
                }
            }
        }

        return end;
    }

    private static void Apply(ImageFile file, Analysis a, Action<long, long>? progress)
    {
        var header = a.Header;
        var entries = a.Entries;
        long cluster = header.ClusterBytes;
        long unit = header.BatUnitBytes;
        var dirtyPages = new HashSet<long>();

        // 1. Entries that point nowhere are cleared first, so a copy written below cannot bring one back to life.
        foreach (int i in a.Clear)
        {
            entries[i] = 0;
            dirtyPages.Add(FieldLocations.BatPageOf(i));
        }

        WriteBatPages(file, entries, dirtyPages);

        // 2. Copies of shared clusters, in new clusters past everything used; durable before any entry points at them.
        long slot = a.DataOffsetBytes + ((a.UsedEnd - a.DataOffsetBytes + cluster - 1) / cluster * cluster);
        var moves = new List<(int Index, uint Entry)>();
        if (a.Duplicates.Count > 0)
        {
            byte[] buffer = new byte[Math.Min(cluster, CopyChunkBytes)];
            long done = 0;
            foreach (int i in a.Duplicates)
            {
                long from = entries[i] * unit;
                if (slot / unit > uint.MaxValue)
                {
                    throw new PrlFuseException(a.Path, $"no room for a copy of cluster {i}: the BAT cannot address offset {slot}");
                }

                for (long pos = 0; pos < cluster; pos += buffer.Length)
                {
                    var span = buffer.AsSpan(0, (int)Math.Min(buffer.Length, cluster - pos));
                    file.ReadZeroFilled(span, from + pos);
                    file.Write(span, slot + pos);
                }

                moves.Add((i, checked((uint)(slot / unit))));
                slot += cluster;
                progress?.Invoke(++done, a.Duplicates.Count);
            }

            file.Flush(dataOnly: true);
            dirtyPages.Clear();
            foreach (var (index, entry) in moves)
            {
                entries[index] = entry;
                dirtyPages.Add(FieldLocations.BatPageOf(index));
            }

            WriteBatPages(file, entries, dirtyPages);
        }

        // 3. Trim what nothing uses.
        long end = Math.Max(a.UsedEnd, slot);
        if (file.Length > end)
        {
            file.SetLength(end);
            file.Flush(dataOnly: false);
        }

        // 4. The header last: data_off and in_use.
        if (a.NewDataOffsetSectors is not null || header.IsUnclean)
        {
            // Only the two fields change; the other header bytes stay exactly as they were.
            Span<byte> bytes = stackalloc byte[FieldLocations.HeaderSize];
            file.ReadZeroFilled(bytes, 0);
            BinaryPrimitives.WriteUInt32LittleEndian(bytes[FieldLocations.InUse..], header.IsUnclean ? RepairedInUse : header.InUse);
            BinaryPrimitives.WriteUInt32LittleEndian(bytes[FieldLocations.DataOffset..], a.NewDataOffsetSectors ?? header.DataOffsetSectors);
            file.Write(bytes, 0);
            file.Flush(dataOnly: false);
        }
    }

    /// <summary>Writes the BAT pages that changed, then makes them durable.</summary>
    private static void WriteBatPages(ImageFile file, uint[] entries, HashSet<long> pages)
    {
        if (pages.Count == 0)
        {
            return;
        }

        byte[] buffer = new byte[FieldLocations.BatPageBytes];
        foreach (long page in pages.Order())
        {
            var (first, count, start) = FieldLocations.BatPage(page, entries.Length);
            for (int k = 0; k < count; k++)
            {
                BinaryPrimitives.WriteUInt32LittleEndian(buffer.AsSpan(k * FieldLocations.BatEntrySize), entries[first + k]);
            }

            file.Write(buffer.AsSpan(0, count * FieldLocations.BatEntrySize), start);
        }

        file.Flush(dataOnly: true);
    }
}
