using System.Collections.Immutable;

namespace PrlFuse.Core.Descriptor;

/// <summary>
/// The validated structure of a descriptor: which snapshot is the root, which the top, each snapshot's chain of
/// GUIDs down to the root, and the storages' layout. Everything that makes a descriptor unusable is refused here
/// with a message that names the file; what is merely odd becomes a warning.
/// </summary>
public sealed class SnapshotTree
{
    private readonly Dictionary<Guid, ShotDescriptor> _shots;
    private readonly Dictionary<Guid, List<Guid>> _children;

    private SnapshotTree(DiskDescriptor descriptor, Dictionary<Guid, ShotDescriptor> shots, Dictionary<Guid, List<Guid>> children, Guid root, Guid top, ImmutableArray<DiskWarning> warnings)
    {
        Descriptor = descriptor;
        _shots = shots;
        _children = children;
        Root = root;
        Top = top;
        DiskWarnings = warnings;
        Warnings = warnings.Select(w => w.Message).ToImmutableArray();
    }

    public DiskDescriptor Descriptor { get; }

    public Guid Root { get; }

    public Guid Top { get; }

    /// <summary>The warnings' messages.</summary>
    public ImmutableArray<string> Warnings { get; }

    /// <summary>The warnings with their codes.</summary>
    public ImmutableArray<DiskWarning> DiskWarnings { get; }

    public IEnumerable<Guid> Snapshots => _shots.Keys;

    public bool Contains(Guid guid) => _shots.ContainsKey(guid);

    public Guid ParentOf(Guid guid) => _shots[guid].ParentGuid;

    public IReadOnlyList<Guid> ChildrenOf(Guid guid) => _children.TryGetValue(guid, out var list) ? list : [];

    /// <summary>The snapshot and its ancestors, top first, root last.</summary>
    public ImmutableArray<Guid> ChainOf(Guid guid)
    {
        var chain = ImmutableArray.CreateBuilder<Guid>();
        for (Guid g = guid; g != Guid.Empty; g = _shots[g].ParentGuid)
        {
            chain.Add(g);
        }

        return chain.ToImmutable();
    }

    public static SnapshotTree Build(DiskDescriptor d, string fileName)
    {
        var warnings = ImmutableArray.CreateBuilder<DiskWarning>();
        var p = d.Parameters;
        if (p.Cylinders * p.Heads * p.Sectors != p.DiskSizeSectors)
        {
            warnings.Add(new(WarningCodes.GeometryMismatch, $"Disk_size {p.DiskSizeSectors} is not Cylinders*Heads*Sectors ({p.Cylinders}*{p.Heads}*{p.Sectors}); the disk size is taken from Disk_size"));
        }

        CheckTiling(d, fileName);

        var shots = new Dictionary<Guid, ShotDescriptor>();
        foreach (var shot in d.Snapshots.Shots)
        {
            if (shot.Guid == Guid.Empty)
            {
                throw new DescriptorException(fileName, "a <Shot> has the all-zero GUID, which only a root's ParentGUID may have");
            }

            if (!shots.TryAdd(shot.Guid, shot))
            {
                throw new DescriptorException(fileName, $"snapshot {F(shot.Guid)} is listed twice in <Snapshots>");
            }
        }

        var children = new Dictionary<Guid, List<Guid>>();
        var roots = new List<Guid>();
        foreach (var shot in shots.Values)
        {
            if (shot.ParentGuid == Guid.Empty)
            {
                roots.Add(shot.Guid);
                continue;
            }

            if (!shots.ContainsKey(shot.ParentGuid))
            {
                throw new DescriptorException(fileName, $"snapshot {F(shot.Guid)} has ParentGUID {F(shot.ParentGuid)}, which is no snapshot of this disk");
            }

            if (!children.TryGetValue(shot.ParentGuid, out var list))
            {
                children[shot.ParentGuid] = list = [];
            }

            list.Add(shot.Guid);
        }

        if (roots.Count == 0)
        {
            throw new DescriptorException(fileName, $"no snapshot is a root (ParentGUID {F(Guid.Empty)}); the snapshot tree has a cycle");
        }

        if (roots.Count > 1)
        {
            throw new DescriptorException(fileName, $"several root snapshots ({string.Join(", ", roots.Select(F))}); a disk has exactly one");
        }

        // Every snapshot must reach the root; one that does not sits on a cycle.
        var reached = new HashSet<Guid>();
        var stack = new Stack<Guid>();
        stack.Push(roots[0]);
        while (stack.Count > 0)
        {
            var g = stack.Pop();
            reached.Add(g);
            if (children.TryGetValue(g, out var list))
            {
                foreach (var c in list)
                {
                    stack.Push(c);
                }
            }
        }

        if (reached.Count != shots.Count)
        {
            var lost = shots.Keys.Where(g => !reached.Contains(g)).Select(F);
            throw new DescriptorException(fileName, $"snapshots {string.Join(", ", lost)} form a cycle and never reach the root");
        }

        // Each snapshot needs its image in every storage.
        for (int s = 0; s < d.Storages.Length; s++)
        {
            var storage = d.Storages[s];
            var seen = new HashSet<Guid>();
            foreach (var image in storage.Images)
            {
                if (!seen.Add(image.Guid))
                {
                    throw new DescriptorException(fileName, $"image {F(image.Guid)} is listed twice in storage {s}");
                }

                if (!shots.ContainsKey(image.Guid))
                {
                    warnings.Add(new(WarningCodes.OrphanImage, $"storage {s}: image {F(image.Guid)} ({image.File}) belongs to no snapshot and is ignored"));
                }
            }

            foreach (var g in shots.Keys)
            {
                if (!seen.Contains(g))
                {
                    throw new DescriptorException(fileName, $"snapshot {F(g)} has no <Image> in storage {s} (sectors {storage.StartSector}-{storage.EndSector})");
                }
            }

            foreach (var g in shots.Keys)
            {
                if (g != roots[0] && storage.FindImage(g)!.Type == ImageType.Plain)
                {
                    throw new DescriptorException(fileName, $"snapshot {F(g)} is a Plain image in storage {s}; only a root may be Plain, overlays must be Compressed");
                }
            }
        }

        Guid top = ChooseTop(d, shots, children, fileName);
        if (ChildrenOfTop(children, top))
        {
            warnings.Add(new(WarningCodes.TopHasChildren, $"the top snapshot {F(top)} has child snapshots; it is served read-only so they keep their content"));
        }

        return new SnapshotTree(d, shots, children, roots[0], top, warnings.ToImmutable());
    }

    private static bool ChildrenOfTop(Dictionary<Guid, List<Guid>> children, Guid top) => children.ContainsKey(top);

    private static Guid ChooseTop(DiskDescriptor d, Dictionary<Guid, ShotDescriptor> shots, Dictionary<Guid, List<Guid>> children, string fileName)
    {
        Guid top;
        if (d.Snapshots.TopGuid is { } explicitTop)
        {
            if (!shots.ContainsKey(explicitTop))
            {
                throw new DescriptorException(fileName, $"TopGUID {F(explicitTop)} is no snapshot of this disk");
            }

            top = explicitTop;
        }
        else if (shots.ContainsKey(DiskDescriptor.PredefinedTopGuid))
        {
            top = DiskDescriptor.PredefinedTopGuid;
        }
        else
        {
            var leaves = shots.Keys.Where(g => !children.ContainsKey(g)).ToList();
            if (leaves.Count != 1)
            {
                throw new DescriptorException(fileName, $"no TopGUID and no snapshot {F(DiskDescriptor.PredefinedTopGuid)}, and the top is ambiguous: candidates are {string.Join(", ", leaves.Select(F))}; add <TopGUID> to <Snapshots>");
            }

            top = leaves[0];
        }

        if (top == DiskDescriptor.BackupGuid)
        {
            throw new DescriptorException(fileName, $"the top snapshot has the backup GUID {F(DiskDescriptor.BackupGuid)}, which the format forbids for the top");
        }

        return top;
    }

    private static void CheckTiling(DiskDescriptor d, string fileName)
    {
        var ordered = d.Storages.Select((s, i) => (s, i)).OrderBy(x => x.s.StartSector).ToList();
        long expected = 0;
        foreach (var (s, i) in ordered)
        {
            if (s.StartSector > expected)
            {
                throw new DescriptorException(fileName, $"storages leave sectors [{expected}, {s.StartSector}) of the disk uncovered (storage {i} starts at {s.StartSector})");
            }

            if (s.StartSector < expected)
            {
                throw new DescriptorException(fileName, $"storage {i} (sectors {s.StartSector}-{s.EndSector}) overlaps the storage before it, which ends at {expected}");
            }

            expected = s.EndSector;
        }

        if (expected != d.Parameters.DiskSizeSectors)
        {
            throw new DescriptorException(fileName, $"storages cover sectors [0, {expected}) but Disk_size is {d.Parameters.DiskSizeSectors}");
        }
    }

    private static string F(Guid g) => DiskDescriptor.FormatGuid(g);
}
