using System.Buffers.Binary;
using System.Collections;
using PrlFuse.Core.Checking;
using PrlFuse.Core.IO;

namespace PrlFuse.Core.Formats.Qed;

/// <summary>
/// Finds what 'qemu-img check -f qed' finds, with its exit codes: L1 and L2 entries that point where no table or
/// cluster can be (misaligned, inside the header, past the end of the file), clusters referenced more than once
/// (corruptions), and clusters nothing references (leaks). A repair clears the invalid entries (as QEMU's), gives
/// leaked space back (data clusters and L2 tables at the end of the file move down into leaked slots, each copy made
/// durable before the entry that points at it, then the file is trimmed) and clears need-check.
/// </summary>
public static class QedChecker
{
    /// <summary>Clusters a repair tracks one by one to move them; a larger file is repaired without moving clusters.</summary>
    private const long MaxTrackedClusters = 1L << 24;

    /// <summary>Clusters the check walks at most (its bitmap is one bit each).</summary>
    private const long MaxClusters = 1L << 34;

    public static ImageCheckReport Check(string path, ImageCheckOptions? options = null)
    {
        options ??= new ImageCheckOptions();
        using var file = ImageChecker.Open(path, writable: false, options);
        string? holder = ImageChecker.LockForCheck(file, options.ForceShare);
        return Analyze(file, path, fix: false, holder).ToReport(repaired: false);
    }

    public static ImageRepairResult Repair(string path, ImageCheckOptions? options = null)
    {
        options ??= new ImageCheckOptions();
        if (options.ForceShare)
        {
            throw new PrlFuseException(path, "a repair writes: it cannot be combined with --force-share");
        }

        var before = Check(path, options);
        if (!before.Problems.Any(p => p.Repairable || p.Kind == CheckProblemKind.NotClosedCleanly))
        {
            return new ImageRepairResult(before, before);
        }

        if (PathRules.ReadOnlyReason(path) is { } readOnly)
        {
            throw new PrlFuseException(path, $"cannot repair: {readOnly}; make it writable first");
        }

        ImageCheckReport repair;
        using (var file = ImageChecker.Open(path, writable: true, options))
        {
            ImageLock.Acquire(file, ImageLockMode.ReadWrite);
            var found = Analyze(file, path, fix: true, holder: null);
            if (!found.Fatal)
            {
                ReclaimLeaks(file, found);
                ClearNeedCheck(file, found.Header);
            }

            repair = found.ToReport(repaired: !found.Fatal);
        }

        return new ImageRepairResult(repair, Check(path, options with { Progress = null }));
    }

    /// <summary>
    /// The check QEMU runs when it opens for writing an image left with need-check set: invalid entries are cleared
    /// (made durable), then need-check. Returns how many entries were cleared.
    /// </summary>
    internal static int FixOnOpen(ImageFile file, QedHeader header)
    {
        var found = Analyze(file, file.Path, fix: true, holder: null);
        ClearNeedCheck(file, header);
        return found.Problems.Count(p => p.Kind is CheckProblemKind.ClusterOutsideImage or CheckProblemKind.ClusterMisaligned);
    }

    private static void ClearNeedCheck(ImageFile file, QedHeader header)
    {
        if (header.NeedsCheck)
        {
            Span<byte> bytes = stackalloc byte[FieldLocations.HeaderBytes];
            (header with { Features = header.Features & ~FieldLocations.FeatureNeedCheck }).WriteTo(bytes);
            file.Write(bytes, 0);
            file.Flush(dataOnly: true);
        }
    }

    /// <summary>What the walk found, and for a repair who owns each cluster.</summary>
    private sealed class Findings(string path)
    {
        public string Path { get; } = path;

        public List<CheckProblem> Problems { get; } = [];

        public bool Fatal { get; set; }

        public QedHeader Header { get; set; } = null!;

        public long Clusters { get; set; }

        public long Allocated { get; set; }

        public long UsedEnd { get; set; }

        public BitArray? Used { get; set; }

        /// <summary>For a repair: per cluster, the file offset of the entry that points at it (0: none, or the header).</summary>
        public long[]? Referrer { get; set; }

        /// <summary>For a repair: per cluster, the first cluster of the block (table or data cluster) it belongs to.</summary>
        public long[]? BlockOf { get; set; }

        /// <summary>For a repair: per cluster, true when it starts an L2 table (else a data cluster, if referenced).</summary>
        public BitArray? TableStart { get; set; }

        public void Add(CheckProblemKind kind, CheckSeverity severity, string where, string what, long leaked = 0) =>
            Problems.Add(new CheckProblem(Path, kind, severity, where, what) { LeakedClusters = leaked });

        public ImageCheckReport ToReport(bool repaired) =>
            new(Path, repaired ? Problems.Select(p => p.Repairable || p.Kind == CheckProblemKind.NotClosedCleanly ? p with { Repaired = true } : p).ToList() : Problems)
            {
                TotalClusters = Clusters,
                AllocatedClusters = Allocated,
                ImageEndOffset = UsedEnd,
            };
    }

    /// <summary>Walks the L1 table and every L2 table; with <paramref name="fix"/>, invalid entries are cleared on disk (durably).</summary>
    private static Findings Analyze(ImageFile file, string path, bool fix, string? holder)
    {
        var f = new Findings(path);
        if (holder is not null)
        {
            f.Add(CheckProblemKind.InUse, CheckSeverity.Error, "image", $"image is in use: {holder}; it was read force-shared, so what follows may be a moment of a changing image (close it for a reliable check)");
        }

        QedHeader header;
        try
        {
            header = QedImage.ReadHeader(file);
        }
        catch (ImageFormatException e)
        {
            f.Add(CheckProblemKind.BadImage, CheckSeverity.Error, "header", e.Problem);
            f.Fatal = true;
            return f;
        }

        f.Header = header;
        long fileLength = file.Length;
        long cluster = header.ClusterBytes;
        long clusters = (fileLength + cluster - 1) / cluster;
        if (clusters > MaxClusters)
        {
            f.Add(CheckProblemKind.BadImage, CheckSeverity.Error, "image", $"file of {fileLength} bytes holds more clusters than prlfuse checks");
            f.Fatal = true;
            return f;
        }

        f.Clusters = clusters;
        if (header.NeedsCheck)
        {
            f.Add(CheckProblemKind.NotClosedCleanly, CheckSeverity.Warning, $"header features (offset {FieldLocations.Features})", "the need-check bit is set (its last writer did not finish); repair clears it");
        }

        var used = new BitArray((int)Math.Min(clusters, int.MaxValue));
        bool track = fix && clusters <= MaxTrackedClusters;
        if (track)
        {
            f.Referrer = new long[clusters];
            f.BlockOf = new long[clusters];
            f.TableStart = new BitArray((int)clusters);
        }

        f.Used = used;
        long tableClusters = header.TableClusters;
        MarkUsed(f, 0, header.HeaderClusters, 0, "header");
        MarkUsed(f, header.L1TableOffset / cluster, tableClusters, 0, "L1 table");

        byte[] l1 = new byte[header.TableBytes];
        file.ReadZeroFilled(l1, header.L1TableOffset);
        byte[] l2 = new byte[header.TableBytes];
        bool l1Changed = false;
        bool anyL2Changed = false;
        for (int i = 0; i < header.TableEntries; i++)
        {
            ulong entry = BinaryPrimitives.ReadUInt64LittleEndian(l1.AsSpan(i * FieldLocations.EntrySize));
            if (entry == 0)
            {
                continue;
            }

            long entryAt = header.L1TableOffset + ((long)i * FieldLocations.EntrySize);
            if (entry > long.MaxValue || !QedImage.IsTableOffsetValid(header, (long)entry, fileLength))
            {
                f.Add(Invalid(header, entry), CheckSeverity.Corruption, $"L1 entry {i}", $"points at {entry}, where no L2 table can be");
                if (fix)
                {
                    BinaryPrimitives.WriteUInt64LittleEndian(l1.AsSpan(i * FieldLocations.EntrySize), 0);
                    l1Changed = true;
                }

                continue;
            }

            long l2Offset = (long)entry;
            if (!MarkUsed(f, l2Offset / cluster, tableClusters, entryAt, $"L2 table of L1 entry {i}"))
            {
                continue;
            }

            if (track)
            {
                f.TableStart![(int)(l2Offset / cluster)] = true;
            }

            file.ReadZeroFilled(l2, l2Offset);
            bool l2Changed = false;
            for (int j = 0; j < header.TableEntries; j++)
            {
                ulong data = BinaryPrimitives.ReadUInt64LittleEndian(l2.AsSpan(j * FieldLocations.EntrySize));
                if (data is FieldLocations.Unallocated or FieldLocations.ZeroCluster)
                {
                    continue;
                }

                if (data > long.MaxValue || !QedImage.IsClusterOffsetValid(header, (long)data, fileLength))
                {
                    f.Add(Invalid(header, data), CheckSeverity.Corruption, $"L2 entry {j} of L1 entry {i}", $"points at {data}, where no data cluster can be");
                    if (fix)
                    {
                        BinaryPrimitives.WriteUInt64LittleEndian(l2.AsSpan(j * FieldLocations.EntrySize), 0);
                        l2Changed = true;
                    }

                    continue;
                }

                if (MarkUsed(f, (long)data / cluster, 1, l2Offset + ((long)j * FieldLocations.EntrySize), $"L2 entry {j} of L1 entry {i}"))
                {
                    f.Allocated++;
                }
            }

            if (l2Changed)
            {
                file.Write(l2, l2Offset);
                anyL2Changed = true;
            }
        }

        if (anyL2Changed)
        {
            file.Flush(dataOnly: true);
        }

        if (l1Changed)
        {
            file.Write(l1, header.L1TableOffset);
            file.Flush(dataOnly: true);
        }

        long leaked = 0;
        long last = 0;
        for (long c = 0; c < clusters; c++)
        {
            if (used[(int)c])
            {
                last = c + 1;
            }
            else if (c >= header.HeaderClusters)
            {
                leaked++;
            }
        }

        f.UsedEnd = last * cluster;
        if (leaked > 0)
        {
            f.Add(CheckProblemKind.LeakedSpace, CheckSeverity.Leak, "image", $"{leaked} clusters are not referenced by any table (leaked: wasted space, no harm to data)", leaked);
        }

        return f;
    }

    private static CheckProblemKind Invalid(QedHeader header, ulong entry) =>
        entry % header.ClusterBytes != 0 ? CheckProblemKind.ClusterMisaligned : CheckProblemKind.ClusterOutsideImage;

    /// <summary>Marks <paramref name="count"/> clusters from <paramref name="first"/> used; false (and a corruption) when one already was.</summary>
    private static bool MarkUsed(Findings f, long first, long count, long referrer, string what)
    {
        var used = f.Used!;
        for (long c = first; c < first + count && c < used.Length; c++)
        {
            if (used[(int)c])
            {
                f.Add(CheckProblemKind.DuplicateOffset, CheckSeverity.Corruption, what, $"cluster at {c * f.Header.ClusterBytes} is referenced more than once");
                return false;
            }
        }

        for (long c = first; c < first + count && c < used.Length; c++)
        {
            used[(int)c] = true;
        }

        if (f.Referrer is { } referrers && first < referrers.Length)
        {
            referrers[first] = referrer;
            for (long c = first; c < first + count && c < referrers.Length; c++)
            {
                f.BlockOf![c] = first;
            }
        }

        return true;
    }

    /// <summary>
    /// Moves data clusters and L2 tables from the end of the file into leaked slots below them, highest first, then
    /// trims the file past the last cluster in use. Each copy is durable before the entry that points at it changes,
    /// so a crash leaves either the old or the new place referenced (and at worst a leak).
    /// </summary>
    private static void ReclaimLeaks(ImageFile file, Findings f)
    {
        var header = f.Header;
        long cluster = header.ClusterBytes;
        var used = f.Used!;
        long clusters = f.Clusters;
        if (f.Referrer is { } referrer && f.TableStart is { } tableStart && f.BlockOf is { } blockOf && !f.Problems.Any(p => p.Kind == CheckProblemKind.DuplicateOffset))
        {
            byte[] buffer = new byte[header.TableBytes];
            Span<byte> entry = stackalloc byte[FieldLocations.EntrySize];
            long free = header.HeaderClusters;
            long high = clusters - 1;
            while (true)
            {
                while (free < clusters && used[(int)free])
                {
                    free++;
                }

                while (high >= 0 && !used[(int)high])
                {
                    high--;
                }

                if (high < 0)
                {
                    break;
                }

                // The block that ends at `high`: a data cluster, or a table (moved whole).
                long start = blockOf[high];
                long length = tableStart[(int)start] ? header.TableClusters : 1;
                if (referrer[start] == 0 || start + length - 1 != high || free >= start)
                {
                    break;
                }

                long target = FindFreeRun(used, free, start, length);
                if (target < 0)
                {
                    break;
                }

                var bytes = buffer.AsSpan(0, (int)(length * cluster));
                file.ReadZeroFilled(bytes, start * cluster);
                file.Write(bytes, target * cluster);
                file.Flush(dataOnly: true);
                BinaryPrimitives.WriteUInt64LittleEndian(entry, (ulong)(target * cluster));
                file.Write(entry, referrer[start]);
                file.Flush(dataOnly: true);
                if (length > 1)
                {
                    // The table's own entries moved with it: data clusters it maps now have their referrer there.
                    for (long c = 0; c < clusters; c++)
                    {
                        long at = referrer[c];
                        if (at >= start * cluster && at < (start + length) * cluster)
                        {
                            referrer[c] = at - ((start - target) * cluster);
                        }
                    }

                    tableStart[(int)start] = false;
                    tableStart[(int)target] = true;
                }

                for (long c = 0; c < length; c++)
                {
                    used[(int)(start + c)] = false;
                    used[(int)(target + c)] = true;
                    blockOf[target + c] = target;
                }

                referrer[target] = referrer[start];
                referrer[start] = 0;
            }
        }

        long end = 0;
        for (long c = clusters - 1; c >= 0; c--)
        {
            if (used[(int)c])
            {
                end = (c + 1) * cluster;
                break;
            }
        }

        if (end < file.Length)
        {
            file.SetLength(end);
            file.Flush(dataOnly: false);
        }
    }

    /// <summary>The first run of <paramref name="length"/> free clusters from <paramref name="from"/> that ends before <paramref name="before"/>, or -1.</summary>
    private static long FindFreeRun(BitArray used, long from, long before, long length)
    {
        long run = 0;
        for (long c = from; c < before; c++)
        {
            run = used[(int)c] ? 0 : run + 1;
            if (run == length)
            {
                return c - length + 1;
            }
        }

        return -1;
    }
}
