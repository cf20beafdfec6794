using PrlFuse.Core.Descriptor;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.EndToEnd;

/// <summary>
/// Every management command that changes a disk, killed with SIGKILL at random moments on a real bundle with data in
/// several snapshots (<see cref="KillNine"/>): the next command, or 'check --repair', finishes or rolls back what the
/// killed one left, and every view is QEMU's and the old or the new one.
/// </summary>
[Trait("Needs", "Qemu")]
[Trait("Needs", "Installed")]
public sealed class KillNineTests
{
    public enum Operation
    {
        Delete,
        Merge,
        Switch,
        SwitchKeepingCurrent,
        Create,
        Resize,
        Compact,
    }

    /// <summary>Data in every image: the root's 160 MiB, two dozen small writes over it, and the current state's own.</summary>
    private static readonly string[][] s_snapshotData =
    [
        ["write -P 1 0 160M"],
        [.. Enumerable.Range(0, 24).Select(i => $"write -P {10 + i} {(i * 9) + 3}M 2M")],
        ["write -P 3 40M 60M", "write -P 4 200M 5M"],
    ];

    /// <summary>
    /// For compact: zeros at the root's start (dropped, so its 96 MiB of data move down), zeros over unallocated space in
    /// the middle (dropped) and over data (kept: they hide it).
    /// </summary>
    private static readonly string[][] s_compactData =
    [
        ["write -P 0 0 64M", "write -P 1 64M 96M"],
        [.. Enumerable.Range(0, 12).Select(i => $"write -P {10 + i} {(i * 9) + 3}M 2M"), "write -P 0 220M 20M", "write -P 0 100M 4M"],
        ["write -P 0 40M 8M", "write -P 4 200M 5M"],
    ];

    /// <summary>For resize: 4 KiB clusters, so that growing to 512 MiB needs a BAT that takes the place of many data clusters.</summary>
    private static readonly string[][] s_resizeData =
    [
        ["write -P 1 0 6M", "write -P 2 40M 1M"],
        ["write -P 5 1M 2M", "write -P 6 63M 1M"],
        ["write -P 7 0 1M", "write -P 8 20M 3M"],
    ];

    [Theory]
    [InlineData(Operation.Delete, 211)]
    [InlineData(Operation.Merge, 212)]
    [InlineData(Operation.Switch, 213)]
    [InlineData(Operation.SwitchKeepingCurrent, 214)]
    [InlineData(Operation.Create, 215)]
    [InlineData(Operation.Resize, 216)]
    [InlineData(Operation.Compact, 217)]
    public void KillNineAtRandomMomentsLeavesTheOldOrTheNewDiskAfterTheNextCommand(Operation operation, int seed)
    {
        using var temp = new TempFolder();
        var (bundle, guids) = operation switch
        {
            Operation.Resize => KillNine.Chain(temp.Folder("original"), 64, 4, s_resizeData),
            Operation.Compact => KillNine.Chain(temp.Folder("original"), 256, 1024, s_compactData),
            _ => KillNine.Chain(temp.Folder("original"), 256, 1024, s_snapshotData),
        };
        string middle = guids[1].ToString("B");
        static string[] Repair(string work) => ["check", "--repair", work];
        var command = operation switch
        {
            // A deletion the repair did not finish is run again: it finds the snapshot there or gone.
            Operation.Delete => new KilledCommand(w => ["snapshot", "delete", w, middle], w => RepairThenDelete(w, guids[1]), MustFinish: true),
            Operation.Merge => new KilledCommand(w => ["merge", w], w => [Repair(w), ["merge", w]], MustFinish: true),
            Operation.Switch => new KilledCommand(w => ["snapshot", "switch", w, middle], w => [Repair(w)], MustFinish: false),
            Operation.SwitchKeepingCurrent => new KilledCommand(w => ["snapshot", "switch", "--keep-current", w, middle], w => [Repair(w)], MustFinish: false),
            Operation.Create => new KilledCommand(w => ["snapshot", "create", w, "--name", "killed"], w => [Repair(w)], MustFinish: false),
            Operation.Resize => new KilledCommand(w => ["resize", w, "--size", "512M"], w => [["resize", w, "--size", "512M"]], MustFinish: true),
            _ => new KilledCommand(w => ["compact", w], w => [["compact", w]], MustFinish: true),
        };

        int killed = KillNine.Run(bundle, command, seed, rounds: 6, temp.Path);
        Assert.True(killed > 0, "no round killed the command before it finished: the test shows nothing");
    }

    /// <summary>'check --repair', then the deletion again when the repair did not finish it (it finds nothing left to finish).</summary>
    private static IEnumerable<string[]> RepairThenDelete(string bundle, Guid guid)
    {
        yield return ["check", "--repair", bundle];
        string xml = Path.Combine(bundle, "DiskDescriptor.xml");
        if (SnapshotTree.Build(DescriptorParser.ParseFile(xml), xml).Contains(guid))
        {
            yield return ["snapshot", "delete", bundle, guid.ToString("B")];
        }
    }
}
