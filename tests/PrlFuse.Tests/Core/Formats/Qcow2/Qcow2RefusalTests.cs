using System.Buffers.Binary;
using PrlFuse.Core;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Images;
using PrlFuse.Tests.Support;
using static PrlFuse.Tests.Core.Formats.Qcow2.Qcow2Oracle;

namespace PrlFuse.Tests.Core.Formats.Qcow2;

/// <summary>
/// What a qcow2 image or its chain may not do, refused in one line naming the file: json: and protocol backing names,
/// device nodes and FIFOs, loops, encryption, unknown incompatible features; a read-write open serves it read-only;
/// hostile bytes in the header and tables never crash a reader.
/// </summary>
[Trait("Needs", "Qemu")]
public sealed class Qcow2RefusalTests
{
    private static string OpenError(string image, bool readOnly = true)
    {
        var e = Assert.ThrowsAny<PrlFuseException>(() => VirtualDisk.Open(image, new DiskOpenOptions { ReadOnly = readOnly }).Dispose());
        Assert.DoesNotContain('\n', e.Message);
        return e.Message;
    }

    private static void SetBackingName(string image, string name)
    {
        // Rewrites the stored name in place (where qemu-img put it), so any text can be tried.
        byte[] head = File.ReadAllBytes(image).AsSpan(0, 65536).ToArray();
        long at = (long)BinaryPrimitives.ReadUInt64BigEndian(head.AsSpan(8));
        byte[] bytes = System.Text.Encoding.UTF8.GetBytes(name);
        using var stream = new FileStream(image, FileMode.Open, FileAccess.Write);
        stream.Position = at;
        stream.Write(bytes);
        stream.Position = 16;
        byte[] size = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(size, (uint)bytes.Length);
        stream.Write(size);
    }

    private static string TopOver(TempFolder temp, string format = "raw")
    {
        File.WriteAllBytes(temp.Combine("base.raw"), new byte[1 << 20]);
        Img(temp.Path, "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", format, "top.qcow2", "1M");
        return temp.Combine("top.qcow2");
    }

    [Theory]
    [InlineData("json:{\"driver\":\"raw\",\"file\":{\"driver\":\"file\",\"filename\":\"base.raw\"}}", "json: description")]
    [InlineData("nbd://localhost:10809/x", "network or protocol name")]
    [InlineData("http://example.invalid/base.raw", "network or protocol name")]
    [InlineData("nbd:localhost:10809", "network or protocol name")]
    [InlineData("missing.raw", "does not exist")]
    public void BackingNamesThatAreNotFilesAreRefused(string name, string expected)
    {
        using var temp = new TempFolder();
        string top = TopOver(temp);
        SetBackingName(top, name);
        string error = OpenError(top);
        Assert.Contains(expected, error, StringComparison.Ordinal);
        Assert.Contains("top.qcow2", error, StringComparison.Ordinal);
    }

    [Fact]
    public void AFifoAsBackingFileIsRefused()
    {
        using var temp = new TempFolder();
        string top = TopOver(temp);
        File.Delete(temp.Combine("base.raw"));
        ProcessRunner.Run("mkfifo", temp.Combine("base.raw"));
        Assert.Contains("not a regular file", OpenError(top), StringComparison.Ordinal);
    }

    [Fact]
    public void ALoopInTheChainIsRefused()
    {
        using var temp = new TempFolder();
        Img(temp.Path, "create", "-q", "-f", "qcow2", "b.qcow2", "1M");
        Img(temp.Path, "create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "a.qcow2", "1M");
        Img(temp.Path, "rebase", "-u", "-b", "a.qcow2", "-F", "qcow2", "b.qcow2");
        Assert.Contains("loops back to", OpenError(temp.Combine("a.qcow2")), StringComparison.Ordinal);
    }

    [Fact]
    public void AChainDeeperThanTheCapIsRefused()
    {
        using var temp = new TempFolder();
        Img(temp.Path, "create", "-q", "-f", "qcow2", "i0.qcow2", "1M");
        for (int i = 1; i <= VirtualDisk.MaxBackingDepth; i++)
        {
            Img(temp.Path, "create", "-q", "-f", "qcow2", "-b", $"i{i - 1}.qcow2", "-F", "qcow2", $"i{i}.qcow2", "1M");
        }

        Assert.Contains($"deeper than {VirtualDisk.MaxBackingDepth}", OpenError(temp.Combine($"i{VirtualDisk.MaxBackingDepth}.qcow2")), StringComparison.Ordinal);
        using var disk = VirtualDisk.Open(temp.Combine($"i{VirtualDisk.MaxBackingDepth - 1}.qcow2"));
        Assert.Equal(VirtualDisk.MaxBackingDepth, disk.Top.Storages[0].Layers.Count);
    }

    [Fact]
    public void EncryptedImageIsRefused()
    {
        using var temp = new TempFolder();
        Img(temp.Path, "create", "-q", "--object", "secret,id=sec0,data=123456", "-f", "qcow2", "-o", "encrypt.format=luks,encrypt.key-secret=sec0", "e.qcow2", "1M");
        Assert.Contains("is encrypted (LUKS)", OpenError(temp.Combine("e.qcow2")), StringComparison.Ordinal);
    }

    [Fact]
    public void UnknownIncompatibleFeatureIsRefused()
    {
        using var temp = new TempFolder();
        Img(temp.Path, "create", "-q", "-f", "qcow2", "a.qcow2", "1M");
        using (var stream = new FileStream(temp.Combine("a.qcow2"), FileMode.Open, FileAccess.Write))
        {
            stream.Position = 72;
            stream.Write(new byte[] { 0, 0, 0, 0, 0, 0, 0, 0x20 });
        }

        Assert.Contains("unknown incompatible feature (bit 5)", OpenError(temp.Combine("a.qcow2")), StringComparison.Ordinal);
    }

    [Fact]
    public void AReadWriteOpenIsWritable()
    {
        using var temp = new TempFolder();
        string top = TopOver(temp);
        using var disk = VirtualDisk.Open(top, new DiskOpenOptions { ReadOnly = false });
        Assert.True(disk.Top.IsWritable);
        Assert.Null(disk.ReadOnlyPlaceReason);
    }

    [Fact]
    public void DirtyAndCorruptBitsAreWarnings()
    {
        using var temp = new TempFolder();
        Img(temp.Path, "create", "-q", "-f", "qcow2", "a.qcow2", "1M");
        using (var stream = new FileStream(temp.Combine("a.qcow2"), FileMode.Open, FileAccess.Write))
        {
            stream.Position = 72;
            stream.Write(new byte[] { 0, 0, 0, 0, 0, 0, 0, 3 });
        }

        using var disk = VirtualDisk.Open(temp.Combine("a.qcow2"));
        Assert.Contains(disk.DiskWarnings, w => w.Code == WarningCodes.Qcow2Corrupt);
        Assert.Contains(disk.DiskWarnings, w => w.Code == WarningCodes.NotClosedCleanly && w.Message.Contains("dirty bit", StringComparison.Ordinal));
    }

    [Fact]
    public void HostileBytesInHeaderAndTablesNeverCrash()
    {
        using var temp = new TempFolder();
        Img(temp.Path, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "a.qcow2", "4M");
        Io(temp.Path, "qcow2", "a.qcow2", "write -P 1 0 100k", "write -c -P 2 1M 4k", "write -z 2M 8k");
        byte[] original = File.ReadAllBytes(temp.Combine("a.qcow2"));
        string image = temp.Combine("h.qcow2");
        var random = new Random(77);
        byte[] buffer = new byte[1 << 20];
        for (int i = 0; i < 300; i++)
        {
            byte[] bytes = (byte[])original.Clone();
            for (int m = random.Next(1, 6); m > 0; m--)
            {
                // Header and the first clusters, where the L1, refcount and L2 tables are.
                int at = random.Next(i % 2 == 0 ? 200 : Math.Min(bytes.Length, 6 * 4096));
                bytes[at] = (byte)random.Next(256);
            }

            File.WriteAllBytes(image, bytes);
            try
            {
                using var disk = VirtualDisk.Open(image);
                for (long offset = 0; offset < Math.Min(disk.Size, 64L << 20); offset += buffer.Length)
                {
                    try
                    {
                        disk.Top.Read(buffer, offset);
                    }
                    catch (DamagedClusterException)
                    {
                    }
                }

                OurDataRanges(disk.Top);
            }
            catch (PrlFuseException)
            {
            }
        }
    }
}
