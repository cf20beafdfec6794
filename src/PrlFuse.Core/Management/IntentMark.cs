using System.Collections.Immutable;
using System.Xml.Linq;
using PrlFuse.Core.Descriptor;

namespace PrlFuse.Core.Management;

/// <summary>
/// The intent mark of a snapshot operation, stored in the descriptor before any image is written: a
/// <c>&lt;Temporary/&gt;</c> element in the <c>&lt;Shot&gt;</c> of each snapshot that is being deleted, as ploop marks
/// the snapshot it merges. A snapshot so marked is on its way out: its own view may already be partly merged, every
/// other view is whole, and the next operation on the disk (or 'prlfuse check --repair') deletes it to the end.
/// </summary>
public static class IntentMark
{
    /// <summary>The element's name, ploop's.</summary>
    public const string ElementName = "Temporary";

    public static bool IsMarked(ShotDescriptor shot) => shot.Extras.Any(IsMark);

    /// <summary>The snapshots an interrupted operation left marked.</summary>
    public static IReadOnlyList<Guid> Marked(DiskDescriptor descriptor) => [.. descriptor.Snapshots.Shots.Where(IsMarked).Select(s => s.Guid)];

    /// <summary>The descriptor with <paramref name="guids"/> marked (the marks already there kept).</summary>
    public static DiskDescriptor Mark(DiskDescriptor descriptor, IReadOnlyCollection<Guid> guids)
    {
        var shots = descriptor.Snapshots.Shots.Select(s => guids.Contains(s.Guid) && !IsMarked(s)
            ? s with { Extras = s.Extras.Add(new ExtraElement(new XElement(ElementName).ToString(SaveOptions.DisableFormatting), "ParentGUID")) }
            : s);
        return descriptor with { Snapshots = descriptor.Snapshots with { Shots = [.. shots] } };
    }

    private static bool IsMark(ExtraElement extra)
    {
        // The kept XML of an element starts with its name; a quick test first, the parse only for candidates.
        if (!extra.Xml.Contains(ElementName, StringComparison.Ordinal))
        {
            return false;
        }

        return XElement.Parse(extra.Xml).Name.LocalName == ElementName;
    }

    internal static ImmutableArray<ExtraElement> Without(ImmutableArray<ExtraElement> extras) => [.. extras.Where(e => !IsMark(e))];
}
