using Microsoft.Win32.SafeHandles;

namespace PrlFuse.Core.IO;

/// <summary>QEMU's block permissions (BLK_PERM_*), one bit each; QEMU 7.2 has these four (GRAPH_MOD is gone).</summary>
[Flags]
public enum QemuPermission
{
    None = 0,
    ConsistentRead = 1,
    Write = 2,
    WriteUnchanged = 4,
    Resize = 8,
}

/// <summary>How an image file is locked, in QEMU's terms (measured against QEMU 7.2, see <see cref="ImageLock"/>).</summary>
public enum ImageLockMode
{
    /// <summary>
    /// An image opened for writing (a top image): holds consistent read, write and resize, and does not share write
    /// or resize, as a QEMU writer of a Parallels image does (qemu-io, qemu-img check -r).
    /// </summary>
    ReadWrite,

    /// <summary>
    /// Read-only: holds consistent read and does not share write or resize, as a read-only QEMU user without -U and
    /// every QEMU backing file. Read-only users share with each other; a writer and a read-only user exclude each other.
    /// </summary>
    ReadOnly,

    /// <summary>Read-only and sharing everything (qemu-img -U, --force-share): holds consistent read only.</summary>
    ForceShare,
}

/// <summary>Which of the two rules a conflict broke.</summary>
public enum LockConflictKind
{
    /// <summary>
    /// We want the permission and another process does not share it (it holds byte 200+i). QEMU:
    /// <c>Failed to get "write" lock</c>.
    /// </summary>
    NotShared,

    /// <summary>
    /// We do not share the permission and another process holds it (byte 100+i). QEMU:
    /// <c>Failed to get shared "write" lock</c>.
    /// </summary>
    Held,
}

/// <summary>The first rule another process's locks broke, in QEMU's order of checking.</summary>
public readonly record struct LockConflict(QemuPermission Permission, LockConflictKind Kind)
{
    /// <summary>The lock byte found taken by another process.</summary>
    public int Byte => (Kind == LockConflictKind.Held ? ImageLock.PermissionBase : ImageLock.SharedBase) + ImageLock.BitIndex(Permission);

    /// <summary>QEMU's name of the permission: "consistent read", "write", "write unchanged", "resize".</summary>
    public string PermissionName => ImageLock.NameOf(Permission);

    /// <summary>What QEMU says for the same conflict.</summary>
    public string QemuMessage => Kind == LockConflictKind.NotShared ? $"Failed to get \"{PermissionName}\" lock" : $"Failed to get shared \"{PermissionName}\" lock";
}

/// <summary>What <see cref="ImageLock.Acquire(ImageFile, ImageLockMode)"/> did.</summary>
/// <param name="Mode">The mode asked for.</param>
/// <param name="Locked">False when the file was not locked: no operating-system handle (a test double), or the filesystem has no OFD locks.</param>
/// <param name="OtherWriter">Another process holds the write permission (only possible with <see cref="ImageLockMode.ForceShare"/>).</param>
/// <param name="NotLockedReason">Why <paramref name="Locked"/> is false when that deserves a warning.</param>
public sealed record ImageLockState(ImageLockMode Mode, bool Locked, bool OtherWriter, string? NotLockedReason);

/// <summary>
/// Image locks that QEMU honours (block/file-posix.c): open-file-description locks (F_OFD_SETLK), one byte each, all
/// shared (F_RDLCK). Byte 100+i says "I hold permission bit i", byte 200+i "I do not share bit i". To take a mode, the
/// bytes are locked first and then checked (as QEMU's raw_handle_perm_lock does, so two processes racing cannot both
/// pass): for every permission held, byte 200+i must be free of others (a write-lock probe with F_OFD_GETLK, which
/// ignores our own locks); for every permission not shared, byte 100+i. On a conflict the bytes just taken are released
/// and <see cref="ImageInUseException"/> is thrown. Byte 0 belongs to libvirt and is never touched.
/// <para>
/// Locks belong to the open file description: they are those of the handle the image is read through and go away when
/// it closes (or the process dies). A second open of the same file, even in the same process, is another holder.
/// </para>
/// <para>
/// Measured against QEMU 7.2 (strace, /proc/locks): a Parallels writer (qemu-io, qemu-img check -r) holds 100, 101, 103
/// and locks 201, 203; a read-only user without -U (qemu-io -r, qemu-img check, any backing file) holds 100 and locks
/// 201, 203; qemu-io -r -U holds 100 only; qemu-img info holds nothing and locks 201, 203; qemu-img info -U takes no
/// lock at all.
/// </para>
/// </summary>
public static class ImageLock
{
    public const int PermissionBase = 100;
    public const int SharedBase = 200;

    /// <summary>Permission bits QEMU 7.2 has (BLK_PERM_ALL = 0xf).</summary>
    public const int PermissionCount = 4;

    // ---- The rules: pure functions of the mode. ----

    /// <summary>The permissions a mode holds (bytes 100+i).</summary>
    public static QemuPermission Held(ImageLockMode mode) => mode switch
    {
        ImageLockMode.ReadWrite => QemuPermission.ConsistentRead | QemuPermission.Write | QemuPermission.Resize,
        _ => QemuPermission.ConsistentRead,
    };

    /// <summary>The permissions a mode does not share (bytes 200+i).</summary>
    public static QemuPermission Unshared(ImageLockMode mode) => mode switch
    {
        ImageLockMode.ForceShare => QemuPermission.None,
        _ => QemuPermission.Write | QemuPermission.Resize,
    };

    /// <summary>The bytes a mode locks, ascending.</summary>
    public static IReadOnlyList<int> Bytes(ImageLockMode mode)
    {
        var bytes = new List<int>();
        foreach (var (bit, p) in Bits())
        {
            if ((Held(mode) & p) != 0)
            {
                bytes.Add(PermissionBase + bit);
            }
        }

        foreach (var (bit, p) in Bits())
        {
            if ((Unshared(mode) & p) != 0)
            {
                bytes.Add(SharedBase + bit);
            }
        }

        return bytes;
    }

    /// <summary>
    /// The bytes to probe for a mode, in QEMU's order (raw_check_lock_bytes): first 200+i for every permission held,
    /// then 100+i for every permission not shared; each with the conflict it means when another process has it.
    /// </summary>
    public static IReadOnlyList<(int Byte, LockConflict Conflict)> Probes(ImageLockMode mode)
    {
        var probes = new List<(int, LockConflict)>();
        foreach (var (bit, p) in Bits())
        {
            if ((Held(mode) & p) != 0)
            {
                probes.Add((SharedBase + bit, new LockConflict(p, LockConflictKind.NotShared)));
            }
        }

        foreach (var (bit, p) in Bits())
        {
            if ((Unshared(mode) & p) != 0)
            {
                probes.Add((PermissionBase + bit, new LockConflict(p, LockConflictKind.Held)));
            }
        }

        return probes;
    }

    /// <summary>QEMU's name of one permission (bdrv_perm_names).</summary>
    public static string NameOf(QemuPermission permission) => permission switch
    {
        QemuPermission.ConsistentRead => "consistent read",
        QemuPermission.Write => "write",
        QemuPermission.WriteUnchanged => "write unchanged",
        QemuPermission.Resize => "resize",
        _ => throw new ArgumentOutOfRangeException(nameof(permission), permission, "one permission bit"),
    };

    /// <summary>The bit number of one permission.</summary>
    public static int BitIndex(QemuPermission permission) => permission switch
    {
        QemuPermission.ConsistentRead => 0,
        QemuPermission.Write => 1,
        QemuPermission.WriteUnchanged => 2,
        QemuPermission.Resize => 3,
        _ => throw new ArgumentOutOfRangeException(nameof(permission), permission, "one permission bit"),
    };

    /// <summary>Who is in the way, in words (the middle of <see cref="ImageInUseException"/>'s message).</summary>
    public static string DescribeHolder(LockConflict conflict, bool heldByWriter)
    {
        if (heldByWriter)
        {
            return "another process holds the \"write\" lock (a QEMU or prlfuse writer)";
        }

        return conflict switch
        {
            { Kind: LockConflictKind.NotShared, Permission: QemuPermission.Write or QemuPermission.Resize } =>
                $"another process has it open and does not share the \"{conflict.PermissionName}\" lock (a QEMU or prlfuse reader)",
            { Kind: LockConflictKind.NotShared } => $"another process does not share the \"{conflict.PermissionName}\" lock",
            _ => $"another process holds the \"{conflict.PermissionName}\" lock",
        };
    }

    /// <summary>What to do about it, for a caller that wanted <paramref name="requested"/>.</summary>
    public static string Advice(LockConflict conflict, bool heldByWriter, ImageLockMode requested)
    {
        if (!heldByWriter && requested == ImageLockMode.ReadWrite && conflict.Kind == LockConflictKind.NotShared
            && conflict.Permission is QemuPermission.Write or QemuPermission.Resize)
        {
            return "close it first, or open read-only to share it with other readers";
        }

        return requested != ImageLockMode.ForceShare && (heldByWriter || conflict.Kind == LockConflictKind.Held)
            ? "close it first, or open read-only with --force-share to inspect it"
            : "close it first";
    }

    private static IEnumerable<(int Bit, QemuPermission Permission)> Bits()
    {
        for (int bit = 0; bit < PermissionCount; bit++)
        {
            yield return (bit, (QemuPermission)(1 << bit));
        }
    }

    // ---- The system calls. ----

    /// <summary>
    /// Locks <paramref name="file"/> in <paramref name="mode"/> through its handle (see the class summary) and records the
    /// state on it. A file without an operating-system handle (a test double) is not locked. Throws
    /// <see cref="ImageInUseException"/> on a conflict, having released what it took.
    /// </summary>
    public static ImageLockState Acquire(ImageFile file, ImageLockMode mode)
    {
        var state = file.Handle is { } handle
            ? ChangeWaitingOutForks(handle, file.Path, file.LockState is { Locked: true } held ? held.Mode : null, mode)
            : new ImageLockState(mode, Locked: false, OtherWriter: false, NotLockedReason: null);
        file.LockState = state;
        return state;
    }

    /// <summary>How long a conflict is retried before it is reported (see <see cref="ChangeWaitingOutForks"/>).</summary>
    private static readonly TimeSpan ForkWindowWait = TimeSpan.FromMilliseconds(300);

    /// <summary>
    /// <see cref="Change"/>, retried for a moment on a conflict. The locks belong to the open file description, and a
    /// child that any thread of a process forks holds a copy of every descriptor until its exec closes them (CLOEXEC
    /// acts only then): an image closed by this process an instant ago can still be locked by such a child. A real
    /// holder keeps its lock past the wait and is reported.
    /// </summary>
    private static ImageLockState ChangeWaitingOutForks(SafeFileHandle handle, string path, ImageLockMode? current, ImageLockMode mode)
    {
        long deadline = Environment.TickCount64 + (long)ForkWindowWait.TotalMilliseconds;
        while (true)
        {
            try
            {
                return Change(handle, path, current, mode);
            }
            catch (ImageInUseException) when (Environment.TickCount64 < deadline)
            {
                Thread.Sleep(10);
            }
        }
    }

    /// <summary>
    /// Moves the locks of <paramref name="handle"/> from <paramref name="current"/> (null: none) to <paramref name="mode"/>
    /// as QEMU does: the new bytes are taken, the new mode checked, then the bytes no longer needed released. On a
    /// conflict the new bytes are released again and the old mode stays.
    /// </summary>
    public static ImageLockState Change(SafeFileHandle handle, string path, ImageLockMode? current, ImageLockMode mode)
    {
        var old = current is { } c ? Bytes(c) : [];
        var added = new List<int>();
        foreach (int b in Bytes(mode))
        {
            if (old.Contains(b))
            {
                continue;
            }

            int rc = SetLock(handle, b, Posix.LockRead);
            if (rc == 0)
            {
                added.Add(b);
                continue;
            }

            Unlock(handle, added);
            if (IsUnsupported(rc))
            {
                return new ImageLockState(mode, false, false, Unsupported(rc));
            }

            if (rc is Errno.EAGAIN or Errno.EACCES)
            {
                // Someone holds a write lock on the byte (no QEMU does; a probe holds nothing): the same conflict.
                int bit = (b % 100);
                var conflict = new LockConflict((QemuPermission)(1 << bit), b >= SharedBase ? LockConflictKind.Held : LockConflictKind.NotShared);
                throw new ImageInUseException(path, conflict, IsTakenByOther(handle, PermissionBase + 1) == true, mode);
            }

            throw new IOException($"{path}: cannot lock byte {b} (errno {rc})", rc);
        }

        foreach (var (b, conflict) in Probes(mode))
        {
            bool? taken = IsTakenByOther(handle, b);
            if (taken is null)
            {
                Unlock(handle, added);
                return new ImageLockState(mode, false, false, Unsupported(Posix.LastError));
            }

            if (taken.Value)
            {
                bool writer = IsTakenByOther(handle, PermissionBase + 1) == true;
                Unlock(handle, added);
                throw new ImageInUseException(path, conflict, writer, mode);
            }
        }

        Unlock(handle, old.Except(Bytes(mode)));
        bool otherWriter = mode == ImageLockMode.ForceShare && IsTakenByOther(handle, PermissionBase + 1) == true;
        return new ImageLockState(mode, true, otherWriter, null);
    }

    /// <summary>
    /// The conflict <paramref name="mode"/> would meet on this file now, without taking anything (null: none, or no
    /// locks on this filesystem). A probe only: another process may take its locks right after.
    /// </summary>
    public static LockConflict? FindConflict(SafeFileHandle handle, ImageLockMode mode)
    {
        foreach (var (b, conflict) in Probes(mode))
        {
            if (IsTakenByOther(handle, b) == true)
            {
                return conflict;
            }
        }

        return null;
    }

    /// <summary>Another open file description holds the write permission (byte 101): a QEMU or prlfuse writer.</summary>
    public static bool OtherWriterPresent(SafeFileHandle handle) => IsTakenByOther(handle, PermissionBase + 1) == true;

    /// <summary>Releases every lock byte this handle may hold (closing the handle does it too).</summary>
    public static void Release(ImageFile file)
    {
        if (file.Handle is { } handle && file.LockState is { Locked: true } state)
        {
            Unlock(handle, Bytes(state.Mode));
            file.LockState = state with { Locked = false };
        }
    }

    private static bool IsUnsupported(int errno) => errno is Errno.ENOLCK or Errno.EINVAL or Errno.EOPNOTSUPP or Errno.ENOSYS;

    private static string Unsupported(int errno) =>
        $"image locks are not supported on this filesystem (errno {errno}); other programs (QEMU, prlfuse) are not kept out";

    /// <summary>0 or the errno.</summary>
    private static int SetLock(SafeFileHandle handle, int b, short type)
    {
        var fl = new Posix.FileLock { Type = type, Whence = 0 /* SEEK_SET */, Start = b, Length = 1, Pid = 0 };
        return Posix.FcntlLock(handle, Posix.FOfdSetLock, ref fl) == 0 ? 0 : Posix.LastError;
    }

    /// <summary>A write-lock probe of one byte: does another open file description hold a lock on it? Null when unsupported.</summary>
    private static bool? IsTakenByOther(SafeFileHandle handle, int b)
    {
        var fl = new Posix.FileLock { Type = Posix.LockWrite, Whence = 0, Start = b, Length = 1, Pid = 0 };
        if (Posix.FcntlLock(handle, Posix.FOfdGetLock, ref fl) != 0)
        {
            return null;
        }

        return fl.Type != Posix.Unlocked;
    }

    private static void Unlock(SafeFileHandle handle, IEnumerable<int> bytes)
    {
        foreach (int b in bytes)
        {
            // Unlocking cannot conflict; a failure here would leave a stale shared byte until the handle closes.
            SetLock(handle, b, Posix.Unlocked);
        }
    }
}
