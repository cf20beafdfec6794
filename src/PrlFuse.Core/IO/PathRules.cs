using System.Runtime.InteropServices;

namespace PrlFuse.Core.IO;

/// <summary>
/// What a path leads to on this machine, after symlinks: its kind, its identity, whether it may be written.
/// </summary>
public static class PathRules
{
    private const uint TypeMask = 0xF000;
    private const uint RegularFile = 0x8000;
    private const uint Directory = 0x4000;
    private const int StatSize = 144;
    private const int StatModeOffset = 24;
    private const int StatInodeOffset = 8;
    private const int StatOwnerOffset = 28;

    /// <summary>Refuses a descriptor that is not a regular file (a FIFO would block the reader forever).</summary>
    public static void CheckRegularFile(string path)
    {
        string real = RealPath(path) ?? throw new PrlFuseException(path, "no such file");
        string kind = FileKind(real);
        if (kind != "regular file")
        {
            throw new PrlFuseException(path, $"is a {kind}, not a regular file; refused");
        }
    }

    public static unsafe string FileKind(string path)
    {
        byte* buffer = stackalloc byte[StatSize + 64];
        if (Posix.Stat(path, buffer) != 0)
        {
            return "missing file";
        }

        uint mode = *(uint*)(buffer + StatModeOffset) & TypeMask;
        return mode switch
        {
            RegularFile => "regular file",
            Directory => "directory",
            0x2000 => "character device",
            0x6000 => "block device",
            0x1000 => "FIFO",
            0xC000 => "socket",
            _ => "special file",
        };
    }

    /// <summary>
    /// A private folder's owner and permission bits, without following a symlink: null when <paramref name="path"/> is
    /// missing or not a real folder (a symlink planted there is not one).
    /// </summary>
    public static unsafe (uint Owner, uint Mode)? FolderOwnerAndMode(string path)
    {
        byte* buffer = stackalloc byte[StatSize + 64];
        if (Posix.LStat(path, buffer) != 0 || (*(uint*)(buffer + StatModeOffset) & TypeMask) != Directory)
        {
            return null;
        }

        return (*(uint*)(buffer + StatOwnerOffset), *(uint*)(buffer + StatModeOffset) & 0xFFF);
    }

    /// <summary>
    /// The (device, inode) pair of what <paramref name="path"/> leads to after symlinks, or null when it does not exist:
    /// two paths are the same file (hard links, bind mounts, symlinks) exactly when these are equal.
    /// </summary>
    public static unsafe (ulong Device, ulong Inode)? Identity(string path)
    {
        byte* buffer = stackalloc byte[StatSize + 64];
        if (Posix.Stat(path, buffer) != 0)
        {
            return null;
        }

        return (*(ulong*)buffer, *(ulong*)(buffer + StatInodeOffset));
    }

    /// <summary>
    /// Why a file must not (or cannot) be opened for writing: no write permission bit at all (mode 0444: root could write
    /// it anyway, and must not), write permission that is not this user's (another user's 0644 file), or a read-only
    /// filesystem. Null when none. Each is served read-only alike, with the reason said.
    /// </summary>
    public static unsafe string? ReadOnlyReason(string path)
    {
        byte* buffer = stackalloc byte[StatSize + 64];
        if (Posix.Stat(path, buffer) == 0)
        {
            uint mode = *(uint*)(buffer + StatModeOffset) & 0xFFF;
            string octal = System.Convert.ToString(mode, 8).PadLeft(4, '0');
            if ((mode & 0x92) == 0)
            {
                return $"the image file is read-only (mode {octal})";
            }

            if (Posix.Access(path, Posix.WriteOk) != 0 && Posix.LastError == Errno.EACCES)
            {
                uint owner = *(uint*)(buffer + StatOwnerOffset);
                return $"you may not write the image file (owner uid {owner}, mode {octal})";
            }
        }

        if (Posix.StatVfs(path, out var vfs) == 0 && (vfs.Flags & Posix.StatVfsReadOnly) != 0)
        {
            return "the image is on a read-only filesystem";
        }

        return null;
    }

    /// <summary>realpath(3): every symlink resolved; null when the path does not exist.</summary>
    public static unsafe string? RealPath(string path)
    {
        IntPtr resolved = Posix.RealPath(path, IntPtr.Zero);
        if (resolved == IntPtr.Zero)
        {
            return null;
        }

        try
        {
            return Marshal.PtrToStringUTF8(resolved);
        }
        finally
        {
            NativeMemory.Free((void*)resolved);
        }
    }
}
