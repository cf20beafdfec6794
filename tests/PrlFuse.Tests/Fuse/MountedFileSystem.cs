using PrlFuse.Core.IO;
using System.Runtime.InteropServices;
using PrlFuse.Fuse.Native;

namespace PrlFuse.Tests.Fuse;

/// <summary>
/// Mounts a <see cref="MemoryFileSystem"/> on a fresh temp directory with <see cref="FuseHost"/> and
/// runs the loop on a background thread. Dispose always leaves no mount behind, even after a failed
/// assertion (non-lazy unmount first, lazy detach as a last resort).
/// </summary>
internal sealed class MountedFileSystem : IDisposable
{
    public static readonly TimeSpan Patience = TimeSpan.FromSeconds(15);

    private readonly Thread _loop;
    private int _status = int.MinValue;
    private Exception? _runFailure;

    private MountedFileSystem(string directory, MemoryFileSystem fs, FuseHost host)
    {
        Directory = directory;
        Fs = fs;
        Host = host;
        _loop = new Thread(RunLoop) { IsBackground = true, Name = "fuse-test-loop" };
        _loop.Start();
    }

    public string Directory { get; }
    public MemoryFileSystem Fs { get; }
    public FuseHost Host { get; }

    public static string NewMountpoint() => System.IO.Directory.CreateTempSubdirectory("prlfuse-mnt-").FullName;

    public static MountedFileSystem Start(FuseMountOptions? options = null)
    {
        string dir = NewMountpoint();
        var fs = new MemoryFileSystem();
        options ??= new FuseMountOptions { FsName = "prlfuse-test,with-comma" };
        options.OnCallbackException ??= fs.Exceptions.Enqueue;
        try
        {
            return new MountedFileSystem(dir, fs, FuseHost.Mount(dir, fs, options));
        }
        catch
        {
            System.IO.Directory.Delete(dir);
            throw;
        }
    }

    public string PathOf(string name) => Path.Combine(Directory, name);

    private void RunLoop()
    {
        try
        {
            _status = Host.Run();
        }
        catch (Exception e)
        {
            _runFailure = e;
        }
    }

    /// <summary>Waits for Run to return; returns its status.</summary>
    /// <summary>
    /// Unmounts once nothing uses the mount any more: just after the test closed its files the kernel may still
    /// answer EBUSY for a moment, so a few retries; a mount that stays busy still fails.
    /// </summary>
    public int UnmountWhenIdle()
    {
        int rc = Host.TryUnmount();
        for (int i = 0; i < 20 && rc == Errno.EBUSY; i++)
        {
            Thread.Sleep(50);
            rc = Host.TryUnmount();
        }

        return rc;
    }

    public int WaitForRun()
    {
        Assert.True(_loop.Join(Patience), "Run did not return after the unmount");
        Assert.Null(_runFailure);
        return _status;
    }

    public bool RunHasReturned => !_loop.IsAlive;

    public void Dispose()
    {
        if (_loop.IsAlive && Host.TryUnmount() != 0)
        {
            // Something in the test still holds the mount: detach it so the test run cannot hang;
            // the loop ends once the last reference goes.
            TestLibc.Umount2(Directory, TestLibc.MntDetach);
        }
        _loop.Join(Patience);
        if (FuseHost.IsStaleMount(Directory))
        {
            FuseHost.ClearStaleMount(Directory);
        }
        try
        {
            System.IO.Directory.Delete(Directory);
        }
        catch (IOException)
        {
            // Still mounted after all: leave the empty directory rather than hide the real failure.
        }
    }
}

/// <summary>libc calls the tests need to drive the kernel directly.</summary>
internal static partial class TestLibc
{
    private const string Lib = "libc.so.6";
    public const int MntDetach = 2;
    public const int ORdWr = 2;
    public const int MsNoSuid = 2;
    public const int MsNoDev = 4;

    [LibraryImport(Lib, EntryPoint = "umount2", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int Umount2(string target, int flags);

    [LibraryImport(Lib, EntryPoint = "mount", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int Mount(string source, string target, string fsType, ulong flags, string? data);

    [LibraryImport(Lib, EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int Open(string path, int flags);

    [LibraryImport(Lib, EntryPoint = "close", SetLastError = true)]
    internal static partial int Close(int fd);

    [LibraryImport(Lib, EntryPoint = "fdatasync", SetLastError = true)]
    internal static partial int FDataSync(SafeHandle fd);

    [LibraryImport(Lib, EntryPoint = "fallocate", SetLastError = true)]
    internal static partial int FAllocate(SafeHandle fd, int mode, long offset, long length);

}
