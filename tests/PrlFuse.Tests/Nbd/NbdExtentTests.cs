using System.Buffers.Binary;
using PrlFuse.Core.Engine;
using PrlFuse.Nbd;
using PrlFuse.Nbd.Protocol;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Nbd;

/// <summary>
/// How the server cuts a READ into data and hole chunks, and answers BLOCK_STATUS, over an image whose allocated
/// clusters the test chose (written byte by byte by ParallelsImageBuilder, not by our own code): pieces tile the range,
/// holes are exactly the unallocated clusters, the caps hold, and consecutive extents of one status are one.
/// </summary>
public sealed class NbdExtentTests : IDisposable
{
    private const long Cluster = 1 << 20;
    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    /// <summary>A 16-cluster disk with clusters 1, 2, 5 and 9 to 11 allocated.</summary>
    private VirtualDisk Disk(out ParallelsImageBuilder image)
    {
        image = new ParallelsImageBuilder(16 * 2048) { Content = ParallelsImageBuilder.Pattern(3) };
        image.Allocate([1, 2, 5, 9, 10, 11]);
        string path = _temp.Combine("a.hds");
        image.Build(path);
        return VirtualDisk.Open(path);
    }

    [Fact]
    public void ReadPlanTilesTheRangeWithHolesWhereNothingIsAllocated()
    {
        using var disk = Disk(out var image);
        var plan = new NbdConnection.ReadPiece[64];
        long offset = (Cluster / 2) + 3;
        int length = (int)(11 * Cluster);
        int count = NbdConnection.PlanRead(disk.Top, offset, length, plan);

        Assert.Equal(
            [(false, offset), (true, Cluster), (false, 3 * Cluster), (true, 5 * Cluster), (false, 6 * Cluster), (true, 9 * Cluster)],
            plan[..count].Select(p => (p.Data, p.Start)).ToArray());
        long position = offset;
        foreach (var piece in plan[..count])
        {
            Assert.Equal(position, piece.Start);
            for (long o = piece.Start; o < piece.Start + piece.Length; o += 4096)
            {
                Assert.Equal(image.IsAllocated(o / Cluster), piece.Data);
            }

            position += piece.Length;
        }

        Assert.Equal(offset + length, position);
    }

    [Fact]
    public void ReadPlanEndsWithOneDataPieceWhenItRunsOutOfRoom()
    {
        using var disk = Disk(out _);
        var plan = new NbdConnection.ReadPiece[3];
        int count = NbdConnection.PlanRead(disk.Top, 0, (int)(16 * Cluster), plan);
        Assert.Equal(3, count);
        Assert.Equal(new NbdConnection.ReadPiece(0, (int)Cluster, false), plan[0]);
        Assert.Equal(new NbdConnection.ReadPiece(Cluster, (int)(2 * Cluster), true), plan[1]);

        // The rest is read as data (unallocated parts read as zeros): correct, only less sparse.
        Assert.Equal(new NbdConnection.ReadPiece(3 * Cluster, (int)(13 * Cluster), true), plan[2]);
    }

    [Fact]
    public void BaseAllocationSaysHoleAndZeroWhereNothingIsAllocated()
    {
        using var disk = Disk(out _);
        var descriptors = new byte[8 * 16];
        int count = NbdConnection.DescribeAllocation(disk.Top, 0, 16 * Cluster, 16, descriptors);
        uint hole = NbdMetaContext.StateHole | NbdMetaContext.StateZero;
        Assert.Equal(
            [(1 * Cluster, hole), (2 * Cluster, 0u), (2 * Cluster, hole), (Cluster, 0u), (3 * Cluster, hole), (3 * Cluster, 0u), (4 * Cluster, hole)],
            Read(descriptors, count));

        // REQ_ONE: one extent, however far the request goes; a cap cuts where it is reached.
        Assert.Equal(1, NbdConnection.DescribeAllocation(disk.Top, Cluster + 5, 16 * Cluster, 1, descriptors));
        Assert.Equal([(2 * Cluster - 5, 0u)], Read(descriptors, 1));
        Assert.Equal(2, NbdConnection.DescribeAllocation(disk.Top, 0, 16 * Cluster, 2, descriptors));
        Assert.Equal([(1 * Cluster, hole), (2 * Cluster, 0u)], Read(descriptors, 2));

        // A request ending inside an extent ends the last descriptor there.
        Assert.Equal(2, NbdConnection.DescribeAllocation(disk.Top, 0, Cluster + 512, 16, descriptors));
        Assert.Equal([(1 * Cluster, hole), (512L, 0u)], Read(descriptors, 2));
    }

    [Fact]
    public void AllocationDepthIsOneForTheImageAndZeroForNothing()
    {
        using var disk = Disk(out _);
        var descriptors = new byte[8 * 16];
        int count = NbdConnection.DescribeDepth(disk.Top, 0, 16 * Cluster, 16, descriptors);
        Assert.Equal(
            [(1 * Cluster, 0u), (2 * Cluster, 1u), (2 * Cluster, 0u), (Cluster, 1u), (3 * Cluster, 0u), (3 * Cluster, 1u), (4 * Cluster, 0u)],
            Read(descriptors, count));
    }

    private static (long Length, uint Flags)[] Read(byte[] descriptors, int count) =>
        Enumerable.Range(0, count).Select(i => ((long)BinaryPrimitives.ReadUInt32BigEndian(descriptors.AsSpan(i * 8)), BinaryPrimitives.ReadUInt32BigEndian(descriptors.AsSpan((i * 8) + 4)))).ToArray();
}
