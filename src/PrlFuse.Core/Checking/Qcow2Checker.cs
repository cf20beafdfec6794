using System.Buffers;
using System.Buffers.Binary;
using PrlFuse.Core.Formats.Qcow2;
using PrlFuse.Core.IO;

namespace PrlFuse.Core.Checking;

/// <summary>
/// Finds what 'qemu-img check' finds in a qcow2 image, the way it finds it: every cluster the metadata uses (header,
/// L1 and L2 tables of the active layer and of each internal snapshot, data and compressed clusters, refcount table
/// and blocks, snapshot table, bitmaps) is counted, and the counts are compared with the stored refcounts: a stored
/// refcount above the count is a leak, below it a corruption. Then the COPIED flags of the active tables against the
/// refcounts, entries that are not cluster aligned, refcount blocks outside the file. Independent of the reader.
/// <para>
/// A repair sets every mismatched refcount to the count (new refcount blocks, or a larger refcount table, come from
/// the end of the file, made durable before anything points at them), makes that durable, then fixes the COPIED
/// flags from the repaired refcounts, and clears the dirty and corrupt bits when nothing else is left.
/// </para>
/// </summary>
public static class Qcow2Checker
{
    /// <summary>Bits 9-55 of an L1 or L2 entry or a bitmap table entry: an offset.</summary>
    private const ulong OffsetMask = FieldLocations.OffsetMask;

    /// <summary>Bits 9-63 of a refcount table entry.</summary>
    private const ulong RefcountTableOffsetMask = 0xFFFF_FFFF_FFFF_FE00;

    /// <summary>Checks one qcow2 image; never writes. Locked as a QEMU reader locks it (force-shared while another process writes it).</summary>
    public static ImageCheckReport Check(string path, ImageCheckOptions? options = null)
    {
        options ??= new ImageCheckOptions();
        using var file = ImageChecker.Open(path, writable: false, options);
        string? holder = ImageChecker.LockForCheck(file, options.ForceShare);
        return Analyze(file, path, holder).ToReport();
    }

    /// <summary>
    /// What makes the open image <paramref name="file"/> unsafe to write, in a few words, or null: the errors
    /// <c>qemu-img check</c> would report (clusters used twice, refcounts below their references, wrong COPIED flags,
    /// references past the end). Leaks are no hazard. Run once, before an image is opened for writing: an in-place
    /// write trusts the COPIED flags and the refcounts, and a hostile or damaged image must not turn that trust into
    /// overwritten tables or data of another guest cluster.
    /// </summary>
    public static string? WriteHazard(ImageFile file)
    {
        var a = Analyze(file, file.Path, holder: null);
        var errors = a.Problems.Where(p => p.Severity is CheckSeverity.Corruption or CheckSeverity.Error).ToList();
        return errors.Count == 0 ? null : $"{errors.Count} error{(errors.Count == 1 ? "" : "s")}, the first: {errors[0].What}";
    }

    /// <summary>Repairs leaks, refcount errors and COPIED flags, then checks again; locked as a QEMU writer locks it.</summary>
    public static ImageRepairResult Repair(string path, ImageCheckOptions? options = null)
    {
        options ??= new ImageCheckOptions();
        if (options.ForceShare)
        {
            throw new PrlFuseException(path, "a repair writes: it cannot be combined with --force-share");
        }

        var before = Check(path, options);
        if (before.Problems.Any(p => p.Kind == CheckProblemKind.InUse) || !before.Problems.Any(p => p.Repairable || p.Kind == CheckProblemKind.NotClosedCleanly))
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
            repair = RepairOpen(file, path);
        }

        return new ImageRepairResult(repair, Check(path, options with { Progress = null }));
    }

    /// <summary>The repair itself, on the image opened for writing and locked; returns what it found and fixed.</summary>
    private static ImageCheckReport RepairOpen(ImageFile file, string path)
    {
        var found = new List<CheckProblem>();
        var first = Analyze(file, path, holder: null);
        if (first.Fatal)
        {
            return first.ToReport();
        }

        bool refcountsRepairable = !first.RefcountTableDamaged;
        if (refcountsRepairable && first.RefcountFixes.Count > 0)
        {
            var refcounts = new Qcow2Refcounts(file, first.Header, first.ReferencedEnd);
            foreach (var (host, count) in first.RefcountFixes)
            {
                refcounts.Set(host, count);
            }

            file.Flush(dataOnly: true);
        }

        found.AddRange(first.Problems.Where(p => p.Kind != CheckProblemKind.CopiedFlag)
            .Select(p => refcountsRepairable && p.Kind is CheckProblemKind.RefcountMismatch or CheckProblemKind.LeakedSpace ? p with { Repaired = true } : p));

        // The COPIED flags follow the refcounts as they are now.
        var second = Analyze(file, path, holder: null);
        Span<byte> entry = stackalloc byte[8];
        foreach (var (at, value) in second.EntryFixes)
        {
            BinaryPrimitives.WriteUInt64BigEndian(entry, value);
            file.Write(entry, at);
        }

        file.Flush(dataOnly: true);
        found.AddRange(second.Problems.Where(p => p.Kind == CheckProblemKind.CopiedFlag).Select(p => p with { Repaired = true }));

        var third = Analyze(file, path, holder: null);
        if (third.Problems.All(p => p.Severity is not CheckSeverity.Corruption and not CheckSeverity.Error))
        {
            ulong incompatible = third.Header.IncompatibleFeatures & ~(Qcow2Header.IncompatibleDirty | Qcow2Header.IncompatibleCorrupt);
            if (incompatible != third.Header.IncompatibleFeatures && third.Header.Version >= 3)
            {
                BinaryPrimitives.WriteUInt64BigEndian(entry, incompatible);
                file.Write(entry, FieldLocations.IncompatibleFeatures);
                file.Flush(dataOnly: false);
                for (int i = 0; i < found.Count; i++)
                {
                    if (found[i].Kind == CheckProblemKind.NotClosedCleanly)
                    {
                        found[i] = found[i] with { Repaired = true };
                    }
                }
            }
        }

        return new ImageCheckReport(path, found) { TotalClusters = first.GuestClusters, AllocatedClusters = first.Allocated, ImageEndOffset = first.ReferencedEnd };
    }

    /// <summary>Everything found, and what a repair changes.</summary>
    private sealed class Analysis(string path)
    {
        private readonly Dictionary<long, uint> _beyond = [];

        public string Path { get; } = path;

        public List<CheckProblem> Problems { get; } = [];

        public bool Fatal { get; set; }

        public Qcow2Header Header { get; set; } = null!;

        public long FileLength { get; set; }

        public int ClusterBits { get; set; }

        /// <summary>How many times the metadata uses each cluster of the file.</summary>
        public uint[] Counts { get; set; } = [];

        public long GuestClusters { get; set; }

        public long Allocated { get; set; }

        /// <summary>End of the last cluster the metadata uses.</summary>
        public long ReferencedEnd { get; set; }

        /// <summary>A refcount table entry points where no refcount block can be: the refcounts are not repaired.</summary>
        public bool RefcountTableDamaged { get; set; }

        public List<(long Host, ulong Count)> RefcountFixes { get; } = [];

        /// <summary>Entries (their offset in the file, the value they should have) whose COPIED flag is wrong.</summary>
        public List<(long At, ulong Value)> EntryFixes { get; } = [];

        /// <summary>Active L1 and L2 entries that point at a cluster: where they are, their value, the cluster.</summary>
        public List<(long At, ulong Entry, long Host)> ActiveEntries { get; } = [];

        public void Add(CheckProblemKind kind, CheckSeverity severity, string where, string what, long leaked = 0) =>
            Problems.Add(new CheckProblem(Path, kind, severity, where, what) { LeakedClusters = leaked });

        public void Count(long offset, long length)
        {
            if (length <= 0)
            {
                return;
            }

            if (offset < 0 || offset + length - FileLength >= (1L << ClusterBits))
            {
                // As QEMU: a reference a cluster or more past the end is an error, and not counted.
                Add(CheckProblemKind.ClusterOutsideImage, CheckSeverity.Corruption, $"offset {offset}", $"{length} bytes used at offset {offset} lie a cluster or more past the end of the file ({FileLength} bytes)");
                return;
            }

            for (long c = offset >> ClusterBits; c <= (offset + length - 1) >> ClusterBits; c++)
            {
                if (c < Counts.LongLength)
                {
                    Counts[c]++;
                }
                else
                {
                    _beyond[c] = _beyond.GetValueOrDefault(c) + 1;
                }

                ReferencedEnd = Math.Max(ReferencedEnd, (c + 1) << ClusterBits);
            }
        }

        public uint CountOf(long cluster) => cluster < Counts.LongLength ? Counts[cluster] : _beyond.GetValueOrDefault(cluster);

        /// <summary>Clusters past the file's end that the metadata uses.</summary>
        public IEnumerable<long> Beyond => _beyond.Keys.Order();

        public ImageCheckReport ToReport() =>
            new(Path, Problems) { TotalClusters = GuestClusters, AllocatedClusters = Allocated, ImageEndOffset = ReferencedEnd };
    }

    private static Analysis Analyze(ImageFile file, string path, string? holder)
    {
        var a = new Analysis(path);
        if (holder is not null)
        {
            a.Add(CheckProblemKind.InUse, CheckSeverity.Error, "image", $"image is in use: {holder}; it was read force-shared, so what follows may be a moment of a changing image (close it for a reliable check)");
        }

        long length = file.Length;
        a.FileLength = length;
        byte[] head = new byte[(int)Math.Min(length, 1L << Qcow2Header.MaxClusterBits)];
        file.ReadZeroFilled(head, 0);
        if (!Qcow2Header.TryRead(head, out var header, out string error))
        {
            a.Add(CheckProblemKind.BadImage, CheckSeverity.Error, "header", error);
            a.Fatal = true;
            return a;
        }

        long refcountBytes = header.RefcountTableClusters * header.ClusterBytes;
        if (header.RefcountTableOffset == 0 || header.RefcountTableOffset > length - refcountBytes)
        {
            // As QEMU, which cannot open it: every count below starts from this table.
            a.Add(CheckProblemKind.BadImage, CheckSeverity.Error, "header", $"refcount table at offset {header.RefcountTableOffset} ({header.RefcountTableClusters} clusters) lies outside the file ({length} bytes)");
            a.Fatal = true;
            return a;
        }

        a.Header = header;
        a.ClusterBits = header.ClusterBits;
        long cb = header.ClusterBytes;
        a.Counts = new uint[(length + cb - 1) >> header.ClusterBits];
        a.GuestClusters = (header.Size + cb - 1) >> header.ClusterBits;
        if (header.IsDirty)
        {
            a.Add(CheckProblemKind.NotClosedCleanly, CheckSeverity.Warning, "header", "the dirty bit is set (lazy refcounts not written back): refcounts below may be wrong; a repair fixes them and clears it");
        }

        if (header.IsCorrupt)
        {
            a.Add(CheckProblemKind.NotClosedCleanly, CheckSeverity.Warning, "header", "the corrupt bit is set: QEMU and prlfuse open the image read-only until a repair clears it");
        }

        a.Count(0, cb);
        CheckL1(file, a, header.L1TableOffset, header.L1Size, active: true, "active L1 table");
        CountSnapshots(file, a);
        a.Count(header.RefcountTableOffset, header.RefcountTableClusters * cb);
        CountBitmaps(file, a);
        CheckRefcountBlocks(file, a);
        if (a.Fatal)
        {
            return a;
        }

        CompareRefcounts(file, a);
        CheckCopiedFlags(file, a);
        return a;
    }

    private static void CheckL1(ImageFile file, Analysis a, long l1Offset, long l1Size, bool active, string what)
    {
        var h = a.Header;
        long cb = h.ClusterBytes;
        if (l1Size == 0)
        {
            return;
        }

        if (l1Offset < 0 || (l1Offset & (cb - 1)) != 0 || l1Offset + (l1Size * 8) > a.FileLength || l1Size * 8 > Qcow2Header.MaxL1TableBytes)
        {
            a.Add(CheckProblemKind.ClusterOutsideImage, CheckSeverity.Corruption, what, $"{l1Size} entries at offset {l1Offset} lie outside the file or are misaligned");
            return;
        }

        a.Count(l1Offset, l1Size * 8);
        byte[] raw = new byte[l1Size * 8];
        file.ReadZeroFilled(raw, l1Offset);
        for (long i = 0; i < l1Size; i++)
        {
            ulong entry = BinaryPrimitives.ReadUInt64BigEndian(raw.AsSpan((int)(i * 8)));
            long l2 = (long)(entry & OffsetMask);
            if (l2 == 0)
            {
                continue;
            }

            if ((l2 & (cb - 1)) != 0)
            {
                a.Add(CheckProblemKind.ClusterMisaligned, CheckSeverity.Corruption, $"{what} entry {i}", $"L2 table offset {l2} is not cluster aligned");
                continue;
            }

            a.Count(l2, cb);
            if (active)
            {
                a.ActiveEntries.Add((l1Offset + (i * 8), entry, l2));
            }

            CheckL2(file, a, l2, i, active);
        }
    }

    private static void CheckL2(ImageFile file, Analysis a, long l2Offset, long l1Index, bool active)
    {
        var h = a.Header;
        long cb = h.ClusterBytes;
        int words = h.HasExtendedL2 ? 2 : 1;
        long entries = h.L2Entries;
        // One table at a time from the pool: a check reads every table, and 2 MiB clusters make 2 MiB tables.
        byte[] raw = ArrayPool<byte>.Shared.Rent((int)cb);
        try
        {
            file.ReadZeroFilled(raw.AsSpan(0, (int)cb), l2Offset);
            int x = 62 - (h.ClusterBits - 8);
            for (int j = 0; j < entries; j++)
            {
                ulong entry = BinaryPrimitives.ReadUInt64BigEndian(raw.AsSpan(j * words * 8));
                ulong bitmap = words == 2 ? BinaryPrimitives.ReadUInt64BigEndian(raw.AsSpan((j * 16) + 8)) : 0;
                long guestCluster = (l1Index * entries) + j;
                if ((entry & FieldLocations.CompressedFlag) != 0)
                {
                    if (bitmap != 0)
                    {
                        a.Add(CheckProblemKind.ClusterMisaligned, CheckSeverity.Corruption, Where(l2Offset, j), "compressed cluster with a non-zero subcluster bitmap");
                    }

                    if ((entry & FieldLocations.CopiedFlag) != 0)
                    {
                        a.Add(CheckProblemKind.CopiedFlag, CheckSeverity.Corruption, Where(l2Offset, j), "COPIED flag set on a compressed cluster");
                    }

                    long offset = (long)(entry & ((1UL << x) - 1));
                    long sectors = (long)((entry >> x) & ((1UL << (62 - x)) - 1)) + 1;
                    a.Count(offset & ~511L, sectors * 512);
                    if (active && guestCluster < a.GuestClusters)
                    {
                        a.Allocated++;
                    }

                    continue;
                }

                long host = (long)(entry & OffsetMask);

                // With an external data file the host offset is the guest offset, so guest cluster 0 is offset 0 with COPIED.
                bool hasCluster = host != 0 || (h.HasDataFile && (entry & FieldLocations.CopiedFlag) != 0);
                if (words == 2)
                {
                    uint allocated = (uint)bitmap;
                    uint zero = (uint)(bitmap >> 32);
                    if ((allocated & zero) != 0 || (allocated != 0 && !hasCluster))
                    {
                        a.Add(CheckProblemKind.ClusterMisaligned, CheckSeverity.Corruption, Where(l2Offset, j), $"invalid subcluster bitmap 0x{bitmap:x16}");
                    }
                }

                if (!hasCluster)
                {
                    continue;
                }

                if ((host & (cb - 1)) != 0)
                {
                    a.Add(CheckProblemKind.ClusterMisaligned, CheckSeverity.Corruption, Where(l2Offset, j), $"cluster offset {host} is not cluster aligned");
                    continue;
                }

                if (active && guestCluster < a.GuestClusters)
                {
                    a.Allocated++;
                }

                if (h.HasDataFile)
                {
                    continue;
                }

                a.Count(host, cb);
                if (active)
                {
                    a.ActiveEntries.Add((l2Offset + (j * words * 8), entry, host));
                }
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(raw);
        }
    }

    /// <summary>Where an L2 entry is, in words; made only for a problem (a table has up to 262,144 entries).</summary>
    private static string Where(long l2Offset, int entry) => $"L2 table at {l2Offset}, entry {entry}";

    private static void CountSnapshots(ImageFile file, Analysis a)
    {
        var h = a.Header;
        if (h.SnapshotCount == 0)
        {
            return;
        }

        const int fixedBytes = 40;
        long at = h.SnapshotsOffset;
        byte[] fixedPart = new byte[fixedBytes];
        for (uint s = 0; s < h.SnapshotCount; s++)
        {
            if (at + fixedBytes > a.FileLength)
            {
                a.Add(CheckProblemKind.ClusterOutsideImage, CheckSeverity.Corruption, "snapshot table", $"snapshot {s} lies outside the file");
                break;
            }

            file.ReadZeroFilled(fixedPart, at);
            long l1Offset = (long)BinaryPrimitives.ReadUInt64BigEndian(fixedPart);
            uint l1Size = BinaryPrimitives.ReadUInt32BigEndian(fixedPart.AsSpan(8));
            int idBytes = BinaryPrimitives.ReadUInt16BigEndian(fixedPart.AsSpan(12));
            int nameBytes = BinaryPrimitives.ReadUInt16BigEndian(fixedPart.AsSpan(14));
            long extraBytes = BinaryPrimitives.ReadUInt32BigEndian(fixedPart.AsSpan(36));
            CheckL1(file, a, l1Offset, l1Size, active: false, $"L1 table of snapshot {s}");
            at += (fixedBytes + extraBytes + idBytes + nameBytes + 7) & ~7L;
        }

        a.Count(h.SnapshotsOffset, at - h.SnapshotsOffset);
    }

    /// <summary>The bitmap directory, bitmap tables and bitmap clusters, when the bitmaps autoclear bit vouches for them.</summary>
    private static void CountBitmaps(ImageFile file, Analysis a)
    {
        var h = a.Header;
        if (h.Bitmaps is not { } bitmaps || (h.AutoclearFeatures & Qcow2Header.AutoclearBitmaps) == 0 || bitmaps.DirectorySize > (ulong)a.FileLength)
        {
            return;
        }

        long dir = (long)bitmaps.DirectoryOffset;
        long size = (long)bitmaps.DirectorySize;
        a.Count(dir, size);
        if (dir < 0 || dir > a.FileLength)
        {
            // Counted above as a reference outside the file: there is no directory to read.
            return;
        }

        byte[] directory = new byte[size];
        file.ReadZeroFilled(directory, dir);
        long at = 0;
        for (uint b = 0; b < bitmaps.Count && at + 24 <= directory.Length; b++)
        {
            var entry = directory.AsSpan((int)at);
            long table = (long)BinaryPrimitives.ReadUInt64BigEndian(entry);
            uint tableSize = BinaryPrimitives.ReadUInt32BigEndian(entry[8..]);
            int nameBytes = BinaryPrimitives.ReadUInt16BigEndian(entry[18..]);
            long extraBytes = BinaryPrimitives.ReadUInt32BigEndian(entry[20..]);
            if (table >= 0 && table + (tableSize * 8L) <= a.FileLength)
            {
                a.Count(table, tableSize * 8L);
                byte[] entries = new byte[tableSize * 8L];
                file.ReadZeroFilled(entries, table);
                for (int e = 0; e < tableSize; e++)
                {
                    long cluster = (long)(BinaryPrimitives.ReadUInt64BigEndian(entries.AsSpan(e * 8)) & OffsetMask);
                    if (cluster != 0)
                    {
                        a.Count(cluster, h.ClusterBytes);
                    }
                }
            }

            at += (24 + extraBytes + nameBytes + 7) & ~7L;
        }
    }

    private static void CheckRefcountBlocks(ImageFile file, Analysis a)
    {
        var h = a.Header;
        long cb = h.ClusterBytes;
        long entries = h.RefcountTableClusters * cb / 8;
        byte[] raw = new byte[entries * 8];
        file.ReadZeroFilled(raw, h.RefcountTableOffset);
        var blocks = new List<(long Index, long Offset)>();
        for (long i = 0; i < entries; i++)
        {
            long offset = (long)(BinaryPrimitives.ReadUInt64BigEndian(raw.AsSpan((int)(i * 8))) & RefcountTableOffsetMask);
            if (offset == 0)
            {
                continue;
            }

            if ((offset & (cb - 1)) != 0)
            {
                a.Add(CheckProblemKind.ClusterMisaligned, CheckSeverity.Corruption, $"refcount table entry {i}", $"refcount block offset {offset} is not cluster aligned");
                a.RefcountTableDamaged = true;
                continue;
            }

            if (offset < 0 || offset > a.FileLength - cb)
            {
                a.Add(CheckProblemKind.ClusterOutsideImage, CheckSeverity.Corruption, $"refcount table entry {i}", $"refcount block at {offset} is outside the file ({a.FileLength} bytes)");
                a.RefcountTableDamaged = true;
                continue;
            }

            a.Count(offset, cb);
            blocks.Add((i, offset));
        }

        foreach (var (index, offset) in blocks)
        {
            uint count = a.CountOf(offset >> h.ClusterBits);
            if (count != 1)
            {
                a.Add(CheckProblemKind.DuplicateOffset, CheckSeverity.Corruption, $"refcount table entry {index}", $"refcount block at {offset} is used {count} times");
                a.RefcountTableDamaged = true;
            }
        }
    }

    /// <summary>Stored refcounts against the counts: above is a leak, below a corruption (as QEMU's compare_refcounts).</summary>
    private static void CompareRefcounts(ImageFile file, Analysis a)
    {
        var refcounts = new Qcow2Refcounts(file, a.Header);
        int bits = a.ClusterBits;
        long leakStart = -1;
        long leakCount = 0;
        void EndLeak()
        {
            if (leakCount > 0)
            {
                a.Add(CheckProblemKind.LeakedSpace, CheckSeverity.Leak, $"clusters {leakStart}-{leakStart + leakCount - 1}", $"{leakCount} cluster{(leakCount == 1 ? "" : "s")} counted in the refcounts and used by nothing", leakCount);
            }

            leakCount = 0;
        }

        foreach (long cluster in EnumerateClusters(a))
        {
            ulong stored = refcounts.Get(cluster << bits);
            ulong counted = a.CountOf(cluster);
            if (stored == counted)
            {
                EndLeak();
                continue;
            }

            a.RefcountFixes.Add((cluster << bits, counted));
            if (stored > counted && counted == 0 && leakCount > 0 && leakStart + leakCount == cluster)
            {
                leakCount++;
                continue;
            }

            EndLeak();
            if (stored > counted)
            {
                if (counted == 0)
                {
                    leakStart = cluster;
                    leakCount = 1;
                }
                else
                {
                    a.Add(CheckProblemKind.LeakedSpace, CheckSeverity.Leak, $"cluster {cluster}", $"refcount={stored} reference={counted}", 1);
                }
            }
            else
            {
                a.Add(CheckProblemKind.RefcountMismatch, CheckSeverity.Corruption, $"cluster {cluster}", $"refcount={stored} reference={counted} (offset {cluster << bits}{(cluster << bits >= a.FileLength ? ", past the end of the file" : "")})");
            }
        }

        EndLeak();
    }

    private static IEnumerable<long> EnumerateClusters(Analysis a)
    {
        for (long c = 0; c < a.Counts.LongLength; c++)
        {
            yield return c;
        }

        foreach (long c in a.Beyond)
        {
            yield return c;
        }
    }

    /// <summary>The COPIED flag of every active L1 and L2 entry says whether its cluster's stored refcount is exactly one.</summary>
    private static void CheckCopiedFlags(ImageFile file, Analysis a)
    {
        var refcounts = new Qcow2Refcounts(file, a.Header);
        foreach (var (at, entry, host) in a.ActiveEntries)
        {
            bool copied = (entry & FieldLocations.CopiedFlag) != 0;
            ulong refcount = refcounts.Get(host);
            if ((refcount == 1) != copied)
            {
                a.Add(CheckProblemKind.CopiedFlag, CheckSeverity.Corruption, $"entry at {at}", $"COPIED flag {(copied ? "set" : "clear")} but the refcount of cluster {host} is {refcount}");
                a.EntryFixes.Add((at, copied ? entry & ~FieldLocations.CopiedFlag : entry | FieldLocations.CopiedFlag));
            }
        }
    }
}
