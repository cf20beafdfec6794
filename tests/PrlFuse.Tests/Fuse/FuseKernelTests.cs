using PrlFuse.Core.IO;
using System.Runtime.InteropServices;
using PrlFuse.Fuse.Native;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Fuse;

/// <summary>
/// Real mounts through /dev/fuse (needs root, fuse3): the test talks to the kernel with ordinary
/// .NET file APIs and checks what reached the in-memory filesystem.
/// </summary>
[Collection(FuseKernelCollection.Name)]
[Trait("Needs", "Kernel")]
public sealed class FuseKernelTests
{
    [Fact]
    public void ListsDirectoryAndReadsAtRandomOffsets()
    {
        using var m = MountedFileSystem.Start();

        string[] names = Directory.GetFiles(m.Directory).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToArray()!;
        Assert.Equal(new[] { "boom.bin", "direct.bin", "pair.bin", "ro.bin", "rw.bin" }, names);
        Assert.True(m.Fs.InitCalled);
        Assert.Equal(MemoryFileSystem.ReadOnlySize, new FileInfo(m.PathOf("ro.bin")).Length);
        Assert.Equal(m.Fs.ReadOnlyData, File.ReadAllBytes(m.PathOf("ro.bin")));

        var random = new Random(42);
        using (var handle = File.OpenHandle(m.PathOf("ro.bin")))
        {
            var buffer = new byte[512 * 1024];
            for (int i = 0; i < 200; i++)
            {
                long offset = random.NextInt64(MemoryFileSystem.ReadOnlySize + 1000L);
                int size = random.Next(1, buffer.Length);
                int n = RandomAccess.Read(handle, buffer.AsSpan(0, size), offset);
                int expected = (int)Math.Clamp(MemoryFileSystem.ReadOnlySize - offset, 0, size);
                Assert.Equal(expected, n);
                Assert.True(buffer.AsSpan(0, n).SequenceEqual(m.Fs.ReadOnlyData.AsSpan((int)Math.Min(offset, MemoryFileSystem.ReadOnlySize), n)),
                    $"data mismatch at offset {offset} size {size}");
            }
        }

        // The kernel sends RELEASE after close() returns, in the background: a worker thread may still be on its way
        // to it when another takes the DESTROY of an unmount. Every open must get its release, so wait for that first.
        Assert.True(SpinWait.SpinUntil(() => m.Fs.OpenHandles.IsEmpty, TimeSpan.FromSeconds(10)), $"not released: {string.Join(", ", m.Fs.OpenHandles.Values)}");
        Assert.Equal(0, m.UnmountWhenIdle());
        Assert.Equal(0, m.WaitForRun());
        Assert.True(m.Fs.DestroyCalled);
        Assert.Equal(0, m.Fs.HandleMismatches);
        Assert.Empty(m.Fs.OpenHandles);
        Assert.Empty(m.Fs.Exceptions);
    }

    /// <summary>
    /// Each transport named explicitly is the one that serves (no silent fallback), and answers listing, reads, writes,
    /// fsync, statfs and lseek alike. With io_uring the kernel holds every request until the rings are registered, so
    /// a transport that negotiated io_uring and then failed to serve it would time out here.
    /// </summary>
    [Theory]
    [InlineData(FuseTransport.LibFuse)]
    [InlineData(FuseTransport.Device)]
    [InlineData(FuseTransport.Uring)]
    public void EveryTransportServesTheSameRequests(FuseTransport transport)
    {
        using var m = MountedFileSystem.Start(new FuseMountOptions { FsName = "prlfuse-transport", Transport = transport });

        Assert.Equal(new[] { "boom.bin", "direct.bin", "pair.bin", "ro.bin", "rw.bin" },
            Directory.GetFiles(m.Directory).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToArray());
        Assert.Equal(m.Fs.ReadOnlyData, File.ReadAllBytes(m.PathOf("ro.bin")));
        Assert.Equal(transport, m.Host.Transport);

        byte[] pattern = new byte[700_000];
        new Random(11).NextBytes(pattern);
        using (var stream = new FileStream(m.PathOf("rw.bin"), FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite))
        {
            stream.Position = 1000;
            stream.Write(pattern);
            stream.Flush(flushToDisk: true);
        }

        Assert.True(m.Fs.RwSnapshot().AsSpan(1000).SequenceEqual(pattern));
        Assert.True(File.ReadAllBytes(m.PathOf("rw.bin")).AsSpan(1000).SequenceEqual(pattern));
        Assert.Single(m.Fs.Fsyncs);
        Assert.Equal(0, Posix.StatVfs(m.Directory, out StatVfs st));
        Assert.Equal(1000UL, st.Blocks);
        using (var direct = File.OpenHandle(m.PathOf("direct.bin")))
        {
            Assert.Equal(MemoryFileSystem.DirectDataStart, SparseFile.Seek(direct, 0, SparseFile.SeekData));
        }

        Assert.Equal(MemoryFileSystem.ManyEntries, Directory.GetFiles(m.PathOf("many")).Length);
        Assert.True(SpinWait.SpinUntil(() => m.Fs.OpenHandles.IsEmpty, TimeSpan.FromSeconds(10)));
        Assert.Equal(0, m.UnmountWhenIdle());
        Assert.Equal(0, m.WaitForRun());
        Assert.True(m.Fs.DestroyCalled);
        Assert.Equal(0, m.Fs.HandleMismatches);
        Assert.Empty(m.Fs.Exceptions);
    }

    [Fact]
    public void ALargeDirectoryListsEveryEntryOnceAndItsFilesAreFound()
    {
        using var m = MountedFileSystem.Start();

        // About 300 KB of entries: the kernel asks for them a page at a time, each reply a slice of the listing.
        string[] listed = Directory.GetFiles(m.PathOf("many")).Select(Path.GetFileName).ToArray()!;
        string[] expected = Enumerable.Range(0, MemoryFileSystem.ManyEntries).Select(MemoryFileSystem.ManyEntryName).ToArray();
        Assert.Equal(expected.Length, listed.Length);
        Assert.Equal(expected, listed.Order(StringComparer.Ordinal));

        // Names in a subdirectory resolve (lookup joins the parent's path and the name) and unknown ones do not.
        Assert.True(File.Exists(m.PathOf(Path.Combine("many", MemoryFileSystem.ManyEntryName(1234)))));
        Assert.False(File.Exists(m.PathOf(Path.Combine("many", "entry-99999-x"))));
        Assert.True(Directory.Exists(m.PathOf("many")));
        Assert.Empty(m.Fs.Exceptions);
    }

    [Fact]
    public void InitSettingsReachTheKernelAndStatFsRoundTrips()
    {
        using var m = MountedFileSystem.Start();

        Assert.Equal(0, Posix.StatVfs(m.Directory, out StatVfs st));
        Assert.Equal(4096UL, st.BlockSize);
        Assert.Equal(1000UL, st.Blocks);
        Assert.Equal(250UL, st.BlocksFree);
        Assert.Equal(200UL, st.BlocksAvailable);
        Assert.Equal(255UL, st.NameMax);
        Assert.True(m.Fs.InitCalled);
        Assert.True(m.Fs.ProtocolMinor > 0);

        // /proc/self/mountinfo: our options made it to the kernel (fsname with an escaped comma, subtype).
        string line = File.ReadLines("/proc/self/mountinfo").Single(l => l.Split(' ')[4] == m.Directory);
        Assert.Contains(" - fuse.prlfuse prlfuse-test,with-comma ", line, StringComparison.Ordinal);

        // The connection's max_background (set in Init through fuse_conn_info) as the kernel sees it, via fusectl.
        string minor = line.Split(' ')[2].Split(':')[1];
        string ctl = Directory.CreateTempSubdirectory("prlfuse-fusectl-").FullName;
        try
        {
            Assert.Equal(0, TestLibc.Mount("fusectl", ctl, "fusectl", 0, null));
            try
            {
                string value = File.ReadAllText(Path.Combine(ctl, minor, "max_background")).Trim();
                Assert.Equal(MemoryFileSystem.MaxBackgroundSet.ToString(System.Globalization.CultureInfo.InvariantCulture), value);
            }
            finally
            {
                TestLibc.Umount2(ctl, 0);
            }
        }
        finally
        {
            Directory.Delete(ctl);
        }
    }

    [Fact]
    public void WritesReadBackAndFsyncCarriesDatasync()
    {
        using var m = MountedFileSystem.Start();
        string rw = m.PathOf("rw.bin");
        byte[] pattern = new byte[300_000];
        new Random(7).NextBytes(pattern);
        const long Offset = 200_000; // crosses the old end of file (256 KiB): the file grows

        using (var stream = new FileStream(rw, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite))
        {
            stream.Position = Offset;
            stream.Write(pattern);
            stream.Flush(flushToDisk: true); // fsync(2)
            Assert.Equal(0, TestLibc.FDataSync(stream.SafeFileHandle));
        }

        var fsyncs = m.Fs.Fsyncs.ToArray();
        Assert.Equal(2, fsyncs.Length);
        Assert.Equal(("/rw.bin", false), (fsyncs[0].Path, fsyncs[0].DataSync));
        Assert.Equal(("/rw.bin", true), (fsyncs[1].Path, fsyncs[1].DataSync));
        Assert.Equal(fsyncs[0].Handle, fsyncs[1].Handle); // the handle set in Open came back

        byte[] inFs = m.Fs.RwSnapshot();
        Assert.Equal(Offset + pattern.Length, inFs.Length);
        Assert.True(inFs.AsSpan((int)Offset).SequenceEqual(pattern));
        byte[] readBack = File.ReadAllBytes(rw);
        Assert.Equal(inFs, readBack);

        // ftruncate carries the file info; utimensat reaches SetTimes.
        using (var stream = new FileStream(rw, FileMode.Open, FileAccess.ReadWrite))
        {
            stream.SetLength(10_000);
        }
        Assert.Contains((10_000L, true), m.Fs.Truncates);
        Assert.Equal(10_000, new FileInfo(rw).Length);
        var when = new DateTime(2001, 2, 3, 4, 5, 6, DateTimeKind.Utc);
        File.SetLastWriteTimeUtc(rw, when);
        Assert.Equal(new DateTimeOffset(when).ToUnixTimeSeconds(), m.Fs.ModifyTimeSeconds);

        Assert.Equal(0, m.Fs.HandleMismatches);
        Assert.Empty(m.Fs.Exceptions);
    }

    [Fact]
    public void RefusalsAndDefaultsComeBackAsErrors()
    {
        using var m = MountedFileSystem.Start();
        string ro = m.PathOf("ro.bin");

        // Open returned -EACCES.
        Assert.Throws<UnauthorizedAccessException>(() => new FileStream(ro, FileMode.Open, FileAccess.Write).Dispose());
        // Chmod's default answer is -EPERM.
        Assert.Throws<UnauthorizedAccessException>(() => File.SetUnixFileMode(ro, UnixFileMode.UserRead));
        // Fallocate's default answer is -EOPNOTSUPP.
        using (var rw = new FileStream(m.PathOf("rw.bin"), FileMode.Open, FileAccess.ReadWrite))
        {
            Assert.Equal(-1, TestLibc.FAllocate(rw.SafeFileHandle, 0, 0, 4096));
            Assert.Equal(Errno.EOPNOTSUPP, Marshal.GetLastPInvokeError());
        }
        // An exception in the filesystem becomes EIO and is reported; the process and the mount live on.
        Assert.Throws<IOException>(() => File.ReadAllBytes(m.PathOf("boom.bin")));
        Assert.Contains(m.Fs.Exceptions, e => e is InvalidOperationException);
        Assert.Equal(m.Fs.ReadOnlyData.AsSpan(0, 100).ToArray(), File.ReadAllBytes(ro).AsSpan(0, 100).ToArray());
        // Unknown names.
        Assert.False(File.Exists(m.PathOf("missing")));
    }

    [Fact]
    public void LseekAnswersReachTheCallerAndEnosysMakesTheKernelTreatFilesAsData()
    {
        using var m = MountedFileSystem.Start();
        using var direct = File.OpenHandle(m.PathOf("direct.bin"));
        Assert.Equal(MemoryFileSystem.DirectDataStart, SparseFile.Seek(direct, 0, SparseFile.SeekData));
        Assert.Equal(MemoryFileSystem.DirectDataEnd, SparseFile.Seek(direct, MemoryFileSystem.DirectDataStart + 1, SparseFile.SeekHole));
        Assert.Equal(-Errno.ENXIO, SparseFile.Seek(direct, MemoryFileSystem.DirectDataEnd, SparseFile.SeekData));

        // An exception in the filesystem becomes EIO.
        using var boom = File.OpenHandle(m.PathOf("boom.bin"));
        Assert.Equal(-Errno.EIO, SparseFile.Seek(boom, 0, SparseFile.SeekData));
        Assert.Contains(m.Fs.Exceptions, e => e is InvalidOperationException);

        // ENOSYS: from then on the kernel answers itself, for every file, as for a file without holes.
        using var ro = File.OpenHandle(m.PathOf("ro.bin"));
        Assert.Equal(100, SparseFile.Seek(ro, 100, SparseFile.SeekData));
        Assert.Equal(MemoryFileSystem.ReadOnlySize, SparseFile.Seek(ro, 100, SparseFile.SeekHole));
        Assert.Equal(0, SparseFile.Seek(direct, 0, SparseFile.SeekData));
    }

    [Fact]
    public void DirectIoSetInOpenBypassesThePageCache()
    {
        using var m = MountedFileSystem.Start();
        var buffer = new byte[1000];
        using (var handle = File.OpenHandle(m.PathOf("direct.bin")))
        {
            Assert.Equal(1000, RandomAccess.Read(handle, buffer, 5));
            Assert.Equal(1000, RandomAccess.Read(handle, buffer, 5));
        }
        Assert.True(buffer.AsSpan().SequenceEqual(m.Fs.ReadOnlyData.AsSpan(5, 1000)));
        // With the page cache the kernel would ask for whole pages once; with direct_io each read comes through as is.
        Assert.Equal(new[] { (5L, 1000), (5L, 1000) }, m.Fs.DirectReads.ToArray());
    }

    [Fact]
    public async Task RequestsAreServedConcurrently()
    {
        using var m = MountedFileSystem.Start();
        // Each Read of pair.bin blocks until a second one is inside the filesystem too:
        // a single-threaded loop would make both time out.
        Task<int>[] readers = Enumerable.Range(0, 2).Select(i => Task.Run(() =>
        {
            using var handle = File.OpenHandle(m.PathOf("pair.bin"));
            return RandomAccess.Read(handle, new byte[100], i * 4096L);
        })).ToArray();
        int[] counts = await Task.WhenAll(readers).WaitAsync(MountedFileSystem.Patience * 2);
        Assert.Equal(new[] { 100, 100 }, counts);
        Assert.Equal(0u, m.Fs.LastOpenCaller.Uid); // fuse_get_context: the tests run as root
        Assert.True(m.Fs.LastOpenCaller.Pid > 0);
    }

    [Fact]
    public void OpenFileMakesUnmountBusyAndServingGoesOn()
    {
        using var m = MountedFileSystem.Start();
        using (var stream = new FileStream(m.PathOf("ro.bin"), FileMode.Open, FileAccess.Read))
        {
            Assert.Equal(Errno.EBUSY, m.Host.TryUnmount());
            var buffer = new byte[4096];
            stream.ReadExactly(buffer);
            Assert.True(buffer.AsSpan().SequenceEqual(m.Fs.ReadOnlyData.AsSpan(0, 4096)));
            Assert.False(m.RunHasReturned);
        }
        Assert.Equal(0, m.UnmountWhenIdle());
        Assert.Equal(0, m.WaitForRun());
        Assert.False(m.Host.IsMounted);
    }

    [Fact]
    public void ExternalUmountEndsRun()
    {
        using var m = MountedFileSystem.Start();
        Assert.True(File.Exists(m.PathOf("ro.bin")));
        using (var umount = System.Diagnostics.Process.Start("umount", m.Directory))
        {
            umount.WaitForExit();
            Assert.Equal(0, umount.ExitCode);
        }
        Assert.Equal(0, m.WaitForRun());
        Assert.True(m.Fs.DestroyCalled);
        Assert.False(FuseHost.IsStaleMount(m.Directory));
    }

    [Fact]
    public void OnlyOneMountPerProcess()
    {
        using var m = MountedFileSystem.Start();
        string other = MountedFileSystem.NewMountpoint();
        try
        {
            Assert.Throws<InvalidOperationException>(() => FuseHost.Mount(other, new MemoryFileSystem()));
        }
        finally
        {
            Directory.Delete(other);
        }
    }

    [Fact]
    public void StaleMountIsDetectedAndCleared()
    {
        string dir = MountedFileSystem.NewMountpoint();
        try
        {
            // A FUSE mount whose daemon is gone: mount /dev/fuse by hand, then close the device.
            int fd = TestLibc.Open("/dev/fuse", TestLibc.ORdWr);
            Assert.True(fd >= 0, $"open /dev/fuse: errno {Marshal.GetLastPInvokeError()}");
            int rc = TestLibc.Mount("prlfuse-stale", dir, "fuse.prlfuse-test", TestLibc.MsNoSuid | TestLibc.MsNoDev,
                $"fd={fd},rootmode=40000,user_id=0,group_id=0");
            int mountErrno = Marshal.GetLastPInvokeError();
            TestLibc.Close(fd);
            Assert.True(rc == 0, $"mount: errno {mountErrno}");

            Assert.True(FuseHost.IsStaleMount(dir));
            Assert.Throws<IOException>(() => FuseHost.Mount(dir, new MemoryFileSystem()));
            Assert.Equal(0, FuseHost.ClearStaleMount(dir));
            Assert.False(FuseHost.IsStaleMount(dir));
            Assert.DoesNotContain(File.ReadLines("/proc/self/mountinfo"), l => l.Split(' ')[4] == dir);

            // The cleared directory mounts again normally.
            using var host = FuseHost.Mount(dir, new MemoryFileSystem());
            var loop = new Thread(() => host.Run()) { IsBackground = true };
            loop.Start();
            Assert.True(File.Exists(Path.Combine(dir, "rw.bin")));
            Assert.Equal(0, host.TryUnmount());
            Assert.True(loop.Join(MountedFileSystem.Patience));
        }
        finally
        {
            if (FuseHost.IsStaleMount(dir))
            {
                FuseHost.ClearStaleMount(dir);
            }
            Directory.Delete(dir);
        }
    }
}
