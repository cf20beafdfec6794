using System.Buffers.Binary;
using PrlFuse.Core;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Qcow2;
using PrlFuse.Tests.Support;
using static PrlFuse.Tests.Core.Formats.Qcow2.Qcow2Oracle;

namespace PrlFuse.Tests.Core.Formats.Qcow2;

/// <summary>
/// A qcow2 image's internal snapshots (qemu-img snapshot -c): each is a read-only view of its own size equal to QEMU's
/// view of it (qemu-img convert -l snapshot.id=ID), over the image's backing chain; names become safe file names; a
/// hostile snapshot table is refused in one line.
/// </summary>
[Trait("Needs", "Qemu")]
public sealed class Qcow2InternalSnapshotTests
{
    /// <summary>QEMU's view of one internal snapshot: qemu-img convert -l; QEMU 7.2 gives it the image's current size.</summary>
    private static byte[] QemuSnapshotView(string folder, string image, string id)
    {
        string raw = Path.Combine(folder, "qemu-snapshot.raw");
        Img(folder, "convert", "-O", "raw", "-l", $"snapshot.id={id}", image, raw);
        try
        {
            return File.ReadAllBytes(raw);
        }
        finally
        {
            File.Delete(raw);
        }
    }

    private static void AssertViewEqualsQemu(string folder, string image, SnapshotView view, string id)
    {
        byte[] qemu = QemuSnapshotView(folder, image, id);
        byte[] ours = new byte[view.Size];
        Assert.Equal(ours.Length, view.Read(ours, 0));

        // Ours has the snapshot's own size; QEMU's conversion has the image's, and reads zeros past the snapshot's end.
        int common = (int)Math.Min(qemu.Length, ours.Length);
        int differs = qemu.AsSpan(0, common).CommonPrefixLength(ours.AsSpan(0, common));
        Assert.True(differs == common, $"snapshot {id}: guest byte {differs} differs from QEMU's");
        Assert.True(qemu.AsSpan(common).IndexOfAnyExcept((byte)0) < 0, $"snapshot {id}: QEMU reads data past the snapshot's size");
    }

    [Theory]
    [InlineData("1.1", "65536", false)]
    [InlineData("0.10", "4096", false)]
    [InlineData("1.1", "65536", true)]
    public void EverySnapshotReadsAsQemuReadsIt(string compat, string clusterSize, bool overParallels)
    {
        using var temp = new TempFolder();
        string[] backing = [];
        if (overParallels)
        {
            Img(temp.Path, "create", "-q", "-f", "parallels", "base.hds", "8M");
            Io(temp.Path, "parallels", "base.hds", "write -P 9 0 8M");
            backing = ["-b", "base.hds", "-F", "parallels"];
        }

        // QEMU cannot resize a version 2 image with snapshots: that one is made at its final size.
        bool v2 = compat == "0.10";
        Img(temp.Path, ["create", "-q", "-f", "qcow2", "-o", $"compat={compat},cluster_size={clusterSize}", .. backing, "a.qcow2", v2 ? "12M" : "8M"]);
        Io(temp.Path, "qcow2", "a.qcow2", "write -P 17 100000 1M", "write -c -P 18 3M 64k");
        Img(temp.Path, "snapshot", "-c", "first", "a.qcow2");
        Io(temp.Path, "qcow2", "a.qcow2", "write -P 34 512k 1M", "write -z 0 64k");
        if (!v2)
        {
            Img(temp.Path, "resize", "-q", "a.qcow2", "12M");
        }

        Io(temp.Path, "qcow2", "a.qcow2", "write -P 35 10M 1M");
        Img(temp.Path, "snapshot", "-c", "with space/slash", "a.qcow2");
        Io(temp.Path, "qcow2", "a.qcow2", "write -P 51 5000 7000");
        Img(temp.Path, "snapshot", "-c", "first", "a.qcow2");
        Io(temp.Path, "qcow2", "a.qcow2", "write -P 68 0 12M");

        using var disk = VirtualDisk.Open(temp.Combine("a.qcow2"));
        Assert.Equal(["1", "2", "3"], disk.InternalSnapshots.Select(v => v.Internal!.Id));
        Assert.Equal(["first", "with space/slash", "first"], disk.InternalSnapshots.Select(v => v.Internal!.Name));

        long[] sizes = v2 ? [12L << 20, 12L << 20, 12L << 20] : [8L << 20, 12L << 20, 12L << 20];
        Assert.Equal(sizes, disk.InternalSnapshots.Select(v => v.Size));

        // "first" twice and a slash: every file is named by the ID.
        Assert.Equal(["1", "2", "3"], disk.InternalSnapshots.Select(v => v.Name));
        Assert.Equal([.. disk.InternalSnapshots.Select(v => v.Name)], disk.SnapshotViews.Select(v => v.Name));
        foreach (var view in disk.InternalSnapshots)
        {
            Assert.False(view.IsWritable);
            AssertViewEqualsQemu(temp.Path, "a.qcow2", view, view.Internal!.Id);
        }

        // The current state is untouched by the snapshots beside it.
        Assert.Equal(QemuView(temp.Path, "a.qcow2"), ReadAll(disk.Top));

        // Lookups by file name, ID, then name (the first of two alike).
        Assert.Same(disk.InternalSnapshots[1], disk.GetView("2"));
        Assert.Same(disk.InternalSnapshots[1], disk.GetView("with space/slash"));
        Assert.Same(disk.InternalSnapshots[0], disk.GetView("first"));
        var missing = Assert.Throws<PrlFuseException>(() => disk.GetView("nope"));
        Assert.Contains("internal snapshot", missing.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void SafeUniqueNamesNameTheirFiles()
    {
        using var temp = new TempFolder();
        Img(temp.Path, "create", "-q", "-f", "qcow2", "a.qcow2", "4M");
        Io(temp.Path, "qcow2", "a.qcow2", "write -P 1 0 64k");
        Img(temp.Path, "snapshot", "-c", "before-upgrade", "a.qcow2");
        Io(temp.Path, "qcow2", "a.qcow2", "write -P 2 0 64k");
        Img(temp.Path, "snapshot", "-c", "current", "a.qcow2");
        Img(temp.Path, "snapshot", "-c", "1", "a.qcow2");

        using var disk = VirtualDisk.Open(temp.Combine("a.qcow2"));

        // "current" would clash with the top's name, and "1" is another snapshot's ID: both fall back to their IDs.
        Assert.Equal(["before-upgrade", "2", "3"], disk.InternalSnapshots.Select(v => v.Name));
        Assert.Equal(1, ReadAll(disk.GetView("before-upgrade"))[0]);
        Assert.Equal(2, ReadAll(disk.GetView("2"))[0]);
    }

    [Fact]
    public void DiskWithoutSnapshotsHasNone()
    {
        using var temp = new TempFolder();
        Img(temp.Path, "create", "-q", "-f", "qcow2", "a.qcow2", "4M");
        using var disk = VirtualDisk.Open(temp.Combine("a.qcow2"));
        Assert.Empty(disk.InternalSnapshots);
        Assert.Empty(disk.SnapshotViews);
        var e = Assert.Throws<PrlFuseException>(() => disk.GetView("1"));
        Assert.Contains("is not a snapshot GUID", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(FieldLocations.SnapshotExtraDataSize, 4, 1_000_000u, "extra data")]
    [InlineData(FieldLocations.SnapshotL1TableOffset, 8, 0x7000_0000_0000_0000u, "outside the file")]
    [InlineData(FieldLocations.SnapshotL1TableOffset, 8, 12345u, "not cluster-aligned")]
    [InlineData(FieldLocations.SnapshotL1Size, 4, 0x1000_0000u, "larger than")]
    [InlineData(FieldLocations.SnapshotL1Size, 4, 0u, "does not cover")]
    [InlineData(FieldLocations.SnapshotIdSize, 2, 0xFFFFu, "outside the file")]
    public void HostileSnapshotEntriesAreRefusedInOneLine(int field, int width, ulong value, string expected)
    {
        using var temp = new TempFolder();
        Img(temp.Path, "create", "-q", "-f", "qcow2", "a.qcow2", "4M");
        Io(temp.Path, "qcow2", "a.qcow2", "write -P 1 0 64k");
        Img(temp.Path, "snapshot", "-c", "s", "a.qcow2");
        string image = temp.Combine("a.qcow2");
        byte[] bytes = File.ReadAllBytes(image);
        long table = (long)BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan(FieldLocations.SnapshotsOffset));
        var at = bytes.AsSpan((int)table + field, width);
        switch (width)
        {
            case 2: BinaryPrimitives.WriteUInt16BigEndian(at, (ushort)value); break;
            case 4: BinaryPrimitives.WriteUInt32BigEndian(at, (uint)value); break;
            default: BinaryPrimitives.WriteUInt64BigEndian(at, value); break;
        }

        File.WriteAllBytes(image, bytes);
        var e = Assert.ThrowsAny<PrlFuseException>(() => VirtualDisk.Open(image).Dispose());
        Assert.DoesNotContain('\n', e.Message);
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
        Assert.Contains("a.qcow2", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void EntryParserAsksForTheWholeEntryAndJudgesItAlone()
    {
        var header = new Qcow2Header { Version = 3, ClusterBits = 16, Size = 1L << 30, RefcountOrder = 4 };
        byte[] entry = new byte[64];
        BinaryPrimitives.WriteUInt64BigEndian(entry.AsSpan(FieldLocations.SnapshotL1TableOffset), 0x50000);
        BinaryPrimitives.WriteUInt32BigEndian(entry.AsSpan(FieldLocations.SnapshotL1Size), 2);
        BinaryPrimitives.WriteUInt16BigEndian(entry.AsSpan(FieldLocations.SnapshotIdSize), 1);
        BinaryPrimitives.WriteUInt16BigEndian(entry.AsSpan(FieldLocations.SnapshotNameSize), 3);
        BinaryPrimitives.WriteUInt32BigEndian(entry.AsSpan(FieldLocations.SnapshotDateSeconds), 1_700_000_000);
        BinaryPrimitives.WriteUInt32BigEndian(entry.AsSpan(FieldLocations.SnapshotExtraDataSize), 16);
        BinaryPrimitives.WriteUInt64BigEndian(entry.AsSpan(FieldLocations.SnapshotFixedSize + FieldLocations.SnapshotExtraDiskSize), 512L << 20);
        "7abc"u8.CopyTo(entry.AsSpan(FieldLocations.SnapshotFixedSize + 16));

        Assert.False(Qcow2SnapshotTable.TryReadEntry(entry.AsSpan(0, 40), 0, header, out _, out int length, out string error));
        Assert.Equal(60, length);
        Assert.Equal("", error);
        Assert.True(Qcow2SnapshotTable.TryReadEntry(entry.AsSpan(0, length), 0, header, out var snapshot, out _, out error), error);
        Assert.Equal("7", snapshot!.Id);
        Assert.Equal("abc", snapshot.Name);
        Assert.Equal(512L << 20, snapshot.DiskSize);
        Assert.Equal(DateTimeOffset.FromUnixTimeSeconds(1_700_000_000), snapshot.Date);
    }

    private static byte[] ReadAll(SnapshotView view)
    {
        byte[] data = new byte[view.Size];
        Assert.Equal(data.Length, view.Read(data, 0));
        return data;
    }
}
