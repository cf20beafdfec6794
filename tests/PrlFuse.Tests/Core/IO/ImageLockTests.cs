using PrlFuse.Core;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.Images;
using PrlFuse.Core.IO;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.IO;

/// <summary>
/// Image locks against real QEMU (7.2) in both directions: what our opens hold keeps qemu-img/qemu-io out exactly as
/// another QEMU would, and what qemu-io holds keeps our opens out; the lock bytes themselves are compared with
/// /proc/locks of a qemu-io holding the image in each mode.
/// </summary>
[Trait("Needs", "Qemu")]
public sealed class ImageLockTests : IDisposable
{
    private const string SharedWrite = "Failed to get shared \"write\" lock";
    private const string Write = "Failed to get \"write\" lock";

    private readonly TempFolder _temp = new("prlfuse-lock");

    public void Dispose() => _temp.Dispose();

    private static readonly DiskOpenOptions ReadWrite = new() { ReadOnly = false };
    private static readonly DiskOpenOptions ReadOnly = new();
    private static readonly DiskOpenOptions ForceShare = new() { ForceShare = true };

    private (QemuChain Chain, string Base, string Top) Chain(int seed)
    {
        var chain = QemuChain.Build(_temp.Path, 2, [8 * 2048], seed);
        return (chain, Path.Combine(chain.Bundle, chain.Levels[0].Files[0]), Path.Combine(chain.Bundle, chain.Levels[1].Files[0]));
    }

    private static void AssertRefused(ProcessRunner.Result r, string text)
    {
        Assert.True(r.ExitCode != 0, $"expected a refusal, got exit 0: {r.Stdout}");
        Assert.Contains(text, r.Stderr, StringComparison.Ordinal);
    }

    private static void AssertOk(ProcessRunner.Result r) => Assert.True(r.ExitCode == 0, $"exit {r.ExitCode}: {r.Stderr}{r.Stdout}");

    [Fact]
    public void Lock_bytes_are_the_ones_qemu_takes_in_each_mode()
    {
        string image = _temp.Combine("a.hds");
        Qemu.Create(image, "8M");
        foreach (var (mode, readOnly, forceShare) in new[] { (ImageLockMode.ReadWrite, false, false), (ImageLockMode.ReadOnly, true, false), (ImageLockMode.ForceShare, true, true) })
        {
            List<int> qemu;
            using (QemuHolder.Start(image, readOnly, forceShare))
            {
                qemu = ProcLocks.Bytes(image);
            }

            Assert.Empty(ProcLocks.Bytes(image));
            using (var file = PositionalImageFile.Open(image, writable: mode == ImageLockMode.ReadWrite))
            {
                var state = ImageLock.Acquire(file, mode);
                Assert.True(state.Locked);
                Assert.Equal(qemu, ProcLocks.Bytes(image));
            }

            Assert.Equal(qemu, ImageLock.Bytes(mode).ToList());
            Assert.Empty(ProcLocks.Bytes(image)); // closing released them
        }

        // A backing file is locked like a read-only user (bdrv_default_perms_for_cow): so are the images below our top.
        string top = _temp.Combine("top.hds");
        Qemu.Create(top, "8M");
        using (QemuHolder.Start(Qemu.ChainOptions([top, image]), imageOpts: true, watch: image, watchBytes: 3))
        {
            Assert.Equal(ImageLock.Bytes(ImageLockMode.ReadOnly).ToList(), ProcLocks.Bytes(image));
        }
    }

    [Fact]
    public void A_refused_lock_takes_nothing_and_the_same_handle_can_then_share()
    {
        string image = _temp.Combine("r.hds");
        Qemu.Create(image, "8M");
        using var holder = QemuHolder.Start(image);
        var qemu = ProcLocks.Bytes(image);
        using var file = PositionalImageFile.Open(image, writable: false);
        var e = Assert.Throws<ImageInUseException>(() => ImageLock.Acquire(file, ImageLockMode.ReadOnly));
        Assert.Equal(image, e.ImagePath);
        Assert.Equal(qemu, ProcLocks.Bytes(image)); // what it took before the check found the writer is released

        var state = ImageLock.Acquire(file, ImageLockMode.ForceShare);
        Assert.True(state is { Locked: true, OtherWriter: true });
        Assert.Same(state, file.LockState);
        Assert.Equal(qemu.Append(100).Order(), ProcLocks.Bytes(image));
    }

    [Fact]
    public void Our_writer_keeps_qemu_out_as_a_qemu_writer_would()
    {
        var (chain, basePath, top) = Chain(801);
        using (var disk = VirtualDisk.Open(chain.Bundle, ReadWrite))
        {
            Assert.True(disk.Top.IsWritable);
            AssertRefused(Qemu.Info("-f", "parallels", top), SharedWrite);
            AssertOk(Qemu.Info("-U", "-f", "parallels", top));
            AssertRefused(Qemu.Io("-f", "parallels", "-r", "-c", "read 0 512", top), SharedWrite);
            AssertOk(Qemu.Io("-f", "parallels", "-r", "-U", "-c", "read 0 512", top));
            AssertRefused(Qemu.Io("-f", "parallels", "-c", "read 0 512", top), Write);
            AssertRefused(Qemu.Img("check", "-r", "all", "-f", "parallels", top), "lock");

            // The base is held like a QEMU backing file: readers share it, writers are refused.
            AssertRefused(Qemu.Io("-f", "parallels", "-c", "read 0 512", basePath), Write);
            AssertOk(Qemu.Io("-f", "parallels", "-r", "-c", "read 0 512", basePath));
        }

        // Closed: everything is released.
        AssertOk(Qemu.Io("-f", "parallels", "-c", "read 0 512", top));
        AssertOk(Qemu.Io("-f", "parallels", "-c", "read 0 512", basePath));
    }

    [Fact]
    public void Our_reader_keeps_qemu_writers_out_and_shares_with_qemu_readers()
    {
        var (chain, _, top) = Chain(802);
        using var disk = VirtualDisk.Open(chain.Bundle, ReadOnly);
        AssertRefused(Qemu.Io("-f", "parallels", "-c", "read 0 512", top), Write);
        AssertOk(Qemu.Io("-f", "parallels", "-r", "-c", "read 0 512", top));
        AssertOk(Qemu.Info("-f", "parallels", top));
    }

    [Fact]
    public void A_qemu_writer_refuses_our_opens_except_force_share()
    {
        var (chain, _, top) = Chain(803);
        byte[] expected = chain.OracleView(1, _temp.Path);
        using (QemuHolder.Start(top))
        {
            var rw = Assert.Throws<ImageInUseException>(() => VirtualDisk.Open(chain.Bundle, ReadWrite));
            Assert.Equal(top, rw.ImagePath);
            Assert.True(rw.HeldByWriter);
            Assert.Equal(QemuPermission.Write, rw.Conflict.Permission);
            Assert.Equal(Write, rw.QemuMessage); // the first rule broken, in QEMU's order: the writer does not share write
            Assert.Equal($"{top}: image is in use: another process holds the \"write\" lock (a QEMU or prlfuse writer); close it first, or open read-only with --force-share to inspect it", rw.Message);

            var ro = Assert.Throws<ImageInUseException>(() => VirtualDisk.Open(chain.Bundle, ReadOnly));
            Assert.Equal(top, ro.ImagePath);
            Assert.True(ro.HeldByWriter);
            Assert.Equal(new LockConflict(QemuPermission.Write, LockConflictKind.Held), ro.Conflict);
            Assert.Equal(SharedWrite, ro.QemuMessage);
            Assert.Contains("--force-share", ro.Message, StringComparison.Ordinal);

            using var shared = VirtualDisk.Open(chain.Bundle, ForceShare);
            var topLayer = shared.Storages[0].Images[chain.Levels[1].Guid];
            Assert.True(topLayer.InUseByOtherWriter);
            Assert.False(shared.Storages[0].Images[chain.Levels[0].Guid].InUseByOtherWriter);
            Assert.Contains(shared.Warnings, w => w == $"{Path.GetFileName(top)}: {ImageLayer.InUseWarning}");
            var got = new byte[expected.Length];
            shared.Top.Read(got, 0);
            int diff = expected.AsSpan().CommonPrefixLength(got);
            Assert.True(diff == expected.Length, $"force-share read differs from qemu's view at {diff}: {expected[Math.Min(diff, expected.Length - 1)]} vs {got[Math.Min(diff, got.Length - 1)]}");

            // Force-share is read-only.
            var both = Assert.ThrowsAny<PrlFuseException>(() => VirtualDisk.Open(chain.Bundle, new DiskOpenOptions { ReadOnly = false, ForceShare = true }));
            Assert.IsNotType<ImageInUseException>(both);
            Assert.Contains("--force-share", both.Message, StringComparison.Ordinal);
        }

        // The holder is gone (killed, so QEMU's "Ynot" stays behind): the open is no longer refused, and the top is unclean.
        using var after = VirtualDisk.Open(chain.Bundle, ReadWrite);
        Assert.True(((ExpandableImage)after.Storages[0].Images[chain.Levels[1].Guid]).WasUnclean);
    }

    [Fact]
    public void A_qemu_reader_shares_with_our_readers_and_keeps_our_writer_out()
    {
        var (chain, _, top) = Chain(804);
        using (QemuHolder.Start(top, readOnly: true))
        {
            using (var ro = VirtualDisk.Open(chain.Bundle, ReadOnly))
            {
                Assert.False(ro.Top.IsWritable);
                Assert.DoesNotContain(ro.Warnings, w => w.Contains("in use", StringComparison.Ordinal));
            }

            var rw = Assert.Throws<ImageInUseException>(() => VirtualDisk.Open(chain.Bundle, ReadWrite));
            Assert.Equal(top, rw.ImagePath);
            Assert.False(rw.HeldByWriter);
            Assert.Equal(new LockConflict(QemuPermission.Write, LockConflictKind.NotShared), rw.Conflict);
            Assert.Equal(Write, rw.QemuMessage);
            Assert.Contains("does not share the \"write\" lock (a QEMU or prlfuse reader)", rw.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Two_of_ours_follow_the_same_rules()
    {
        var (chain, _, top) = Chain(805);
        using (var writer = VirtualDisk.Open(chain.Bundle, ReadWrite))
        {
            var second = Assert.Throws<ImageInUseException>(() => VirtualDisk.Open(chain.Bundle, ReadWrite));
            Assert.Equal(top, second.ImagePath);
            Assert.True(second.HeldByWriter);
            var reader = Assert.Throws<ImageInUseException>(() => VirtualDisk.Open(chain.Bundle, ReadOnly));
            Assert.True(reader.HeldByWriter);
            using var shared = VirtualDisk.Open(chain.Bundle, ForceShare);
            Assert.True(shared.Storages[0].Images[chain.Levels[1].Guid].InUseByOtherWriter);
        }

        using (var a = VirtualDisk.Open(chain.Bundle, ReadOnly))
        using (var b = VirtualDisk.Open(chain.Bundle, ReadOnly))
        {
            var rw = Assert.Throws<ImageInUseException>(() => VirtualDisk.Open(chain.Bundle, ReadWrite));
            Assert.False(rw.HeldByWriter);
            Assert.Equal(LockConflictKind.NotShared, rw.Conflict.Kind);
        }

        // A refused open leaves nothing behind: the writer gets in now.
        using var last = VirtualDisk.Open(chain.Bundle, ReadWrite);
        Assert.True(last.Top.IsWritable);
    }

    [Fact]
    public void Ynot_of_a_live_qemu_writer_is_in_use_and_of_a_dead_one_unclean()
    {
        string image = _temp.Combine("y.hds");
        Qemu.Create(image, "8M");
        Qemu.Write(image, "write -P 7 0 64k");
        using (var holder = QemuHolder.Start(image))
        {
            Assert.Equal(ParallelsImageBuilder.InUseOpen, TestImage.ReadU32(image, 44)); // QEMU marks it open

            var e = Assert.Throws<ImageInUseException>(() => VirtualDisk.Open(image, ReadWrite));
            Assert.True(e.HeldByWriter);
            Assert.DoesNotContain("closed cleanly", e.Message, StringComparison.Ordinal);
            Assert.Throws<ImageInUseException>(() => VirtualDisk.Open(image, ReadOnly));

            using var shared = VirtualDisk.Open(image, ForceShare);
            var layer = (ExpandableImage)shared.Storages[0].Images.Values.Single();
            Assert.False(layer.WasUnclean);
            Assert.True(layer.InUseByOtherWriter);
            Assert.True(shared.Warnings.SequenceEqual([$"y.hds: {ImageLayer.InUseWarning}"]), string.Join(" | ", shared.Warnings));
            var got = new byte[512];
            shared.Top.Read(got, 0);
            Assert.All(got, b => Assert.Equal(7, b));

            ProcessRunner.Run("kill", "-KILL", holder.Pid.ToString(System.Globalization.CultureInfo.InvariantCulture));
        }

        // The writer died with the image open: no holder now, so "Ynot" means what it always meant.
        using var unclean = VirtualDisk.Open(image, ReadWrite);
        var top = (ExpandableImage)unclean.Storages[0].Images.Values.Single();
        Assert.True(top.WasUnclean);
        Assert.False(top.InUseByOtherWriter);
        Assert.False(unclean.Top.IsWritable);
        Assert.Contains(unclean.Warnings, w => w.Contains("not closed cleanly", StringComparison.Ordinal));
    }
}
