namespace PrlFuse.Fuse.Native;

/// <summary>
/// A filesystem served by <see cref="FuseHost"/>. Every method returns 0 (or a byte count for
/// Read/Write) on success and a negated errno (<c>-Errno.ENOENT</c>) on failure. Paths are the UTF-8
/// bytes of the path below the mountpoint, starting with '/', without the NUL; buffers are spans
/// over libfuse's memory, valid only during the call. Methods are called concurrently from libfuse's
/// worker threads. An exception thrown here is caught, reported and answered with EIO.
/// A method must never touch the mountpoint itself (deadlock).
/// </summary>
public interface IFuseFileSystem
{
    /// <summary>Called once when the kernel connection is set up, before any other request.</summary>
    void Init(FuseInitContext context)
    {
    }

    /// <summary>Called from fuse_destroy after the loop ended.</summary>
    void Destroy()
    {
    }

    /// <summary><paramref name="stat"/> is zeroed on entry. <paramref name="fileInfo"/> may be absent.</summary>
    int GetAttr(ReadOnlySpan<byte> path, ref Stat stat, FuseFileInfo fileInfo);

    /// <summary>List a directory: call <see cref="DirectoryFiller.Add(ReadOnlySpan{byte})"/> per entry ("." and ".." included).</summary>
    int ReadDir(ReadOnlySpan<byte> path, DirectoryFiller filler);

    /// <summary>Check <see cref="FuseFileInfo.AccessMode"/>; may set Handle, DirectIo, KeepCache.</summary>
    int Open(ReadOnlySpan<byte> path, FuseFileInfo fileInfo);

    /// <summary>Fill <paramref name="buffer"/> from <paramref name="offset"/>; return bytes read (0 at end of file).</summary>
    int Read(ReadOnlySpan<byte> path, Span<byte> buffer, long offset, FuseFileInfo fileInfo);

    /// <summary>
    /// True to serve reads through <see cref="ReadBuf"/> (libfuse's read_buf) instead of <see cref="Read"/>. Asked once,
    /// when the mount is created. Want <see cref="FuseCapabilities.SpliceWrite"/> in Init for file pieces to be spliced.
    /// </summary>
    bool ProvidesReadBuf => false;

    /// <summary>
    /// Answer a read of <see cref="FuseReadReply.RequestedBytes"/> at <paramref name="offset"/> by adding pieces to
    /// <paramref name="reply"/> (fewer bytes means end of file); return 0 or a negated errno (the pieces are then dropped).
    /// </summary>
    int ReadBuf(ReadOnlySpan<byte> path, FuseReadReply reply, long offset, FuseFileInfo fileInfo) => -Errno.ENOSYS;

    /// <summary>Write <paramref name="buffer"/> at <paramref name="offset"/>; return bytes written.</summary>
    int Write(ReadOnlySpan<byte> path, ReadOnlySpan<byte> buffer, long offset, FuseFileInfo fileInfo);

    /// <summary>Make data (and metadata unless <paramref name="dataSync"/>) durable. Do not return ENOSYS:
    /// the kernel would then treat every later fsync as successful.</summary>
    int Fsync(ReadOnlySpan<byte> path, bool dataSync, FuseFileInfo fileInfo);

    int StatFs(ReadOnlySpan<byte> path, ref StatVfs statVfs);

    /// <summary><paramref name="fileInfo"/> is present for ftruncate/O_TRUNC, absent for truncate(path).</summary>
    int Truncate(ReadOnlySpan<byte> path, long size, FuseFileInfo fileInfo);

    /// <summary>Called on every close(2) of a descriptor (may be several per open).</summary>
    int Flush(ReadOnlySpan<byte> path, FuseFileInfo fileInfo) => 0;

    /// <summary>Last close of an open file; the return value is ignored by the kernel.</summary>
    int Release(ReadOnlySpan<byte> path, FuseFileInfo fileInfo) => 0;

    /// <summary>fallocate(2) with FALLOC_FL_* <paramref name="mode"/>. Default EOPNOTSUPP (safe: mkfs copes).</summary>
    int Fallocate(ReadOnlySpan<byte> path, int mode, long offset, long length, FuseFileInfo fileInfo) => -Errno.EOPNOTSUPP;

    /// <summary>
    /// lseek(2) with SEEK_DATA or SEEK_HOLE (<paramref name="whence"/>; the kernel answers the other modes itself): the
    /// resulting offset, or a negated errno (ENXIO: no data at or after <paramref name="offset"/>). Default ENOSYS: the
    /// kernel then stops asking and treats the whole file as data.
    /// </summary>
    long Lseek(ReadOnlySpan<byte> path, long offset, int whence, FuseFileInfo fileInfo) => -Errno.ENOSYS;

    /// <summary>utimensat(2); a Nanoseconds of TimeSpec.UtimeNow/UtimeOmit means now/leave. Default: accept and ignore.</summary>
    int SetTimes(ReadOnlySpan<byte> path, in TimeSpec accessTime, in TimeSpec modifyTime, FuseFileInfo fileInfo) => 0;

    int Chmod(ReadOnlySpan<byte> path, uint mode, FuseFileInfo fileInfo) => -Errno.EPERM;

    int Chown(ReadOnlySpan<byte> path, uint uid, uint gid, FuseFileInfo fileInfo) => -Errno.EPERM;
}
