using Microsoft.Win32.SafeHandles;
using PrlFuse.Core.IO;

namespace PrlFuse.Core.Checking;

/// <summary>
/// How the checker opens an image: read-only and shared for a check; read-write and exclusive for a repair, so a
/// repair is refused while PrlFuse (or anything else that holds the file's lock) has the image open.
/// </summary>
internal sealed class CheckerFile : ImageFile
{
    private readonly SafeFileHandle _handle;

    private CheckerFile(string path, SafeFileHandle handle, bool writable)
        : base(path, writable)
    {
        _handle = handle;
    }

    public static ImageFile Open(string path, bool writable)
    {
        SafeFileHandle handle;
        try
        {
            handle = File.OpenHandle(
                path,
                FileMode.Open,
                writable ? FileAccess.ReadWrite : FileAccess.Read,
                writable ? FileShare.None : FileShare.ReadWrite | FileShare.Delete,
                FileOptions.None);
        }
        catch (IOException e) when (writable && e is not FileNotFoundException and not DirectoryNotFoundException)
        {
            throw new PrlFuseException(path, $"cannot open for repair ({e.Message}); is the disk still mounted?", e);
        }

        return new CheckerFile(path, handle, writable);
    }

    public override long Length => RandomAccess.GetLength(_handle);

    public override int Read(Span<byte> buffer, long offset)
    {
        int done = 0;
        while (done < buffer.Length)
        {
            int n = RandomAccess.Read(_handle, buffer[done..], offset + done);
            if (n == 0)
            {
                break;
            }

            done += n;
        }

        return done;
    }

    public override void Write(ReadOnlySpan<byte> buffer, long offset) => RandomAccess.Write(_handle, buffer, offset);

    public override void SetLength(long length) => RandomAccess.SetLength(_handle, length);

    public override void Flush(bool dataOnly)
    {
        if (!Writable)
        {
            return;
        }

        int rc = dataOnly ? PosixSync.FDataSync(_handle) : PosixSync.FSync(_handle);
        if (rc != 0)
        {
            throw new IOException($"{Path}: {(dataOnly ? "fdatasync" : "fsync")} failed (errno {rc})", rc);
        }
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _handle.Dispose();
        }
    }
}
