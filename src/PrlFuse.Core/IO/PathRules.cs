using System.Runtime.InteropServices;

namespace PrlFuse.Core.IO;

/// <summary>
/// The descriptor is untrusted input: it must not make PrlFuse open (and then serve through a mount) a file the user
/// did not mean. An image path must resolve, after symlinks, to a regular file inside the bundle folder, or be an
/// absolute path the descriptor names that is a regular file. Device nodes, FIFOs and sockets are always refused.
/// </summary>
public static class PathRules
{
    private const uint TypeMask = 0xF000;
    private const uint RegularFile = 0x8000;
    private const uint Directory = 0x4000;
    private const int StatSize = 144;
    private const int StatModeOffset = 24;
    private const int StatInodeOffset = 8;

    /// <summary>Checks an image path; <paramref name="namedAbsolute"/> says the descriptor named this absolute path.</summary>
    public static void CheckImagePath(string path, string bundleFolder, bool namedAbsolute, string descriptorPath, bool allowAnywhere)
    {
        string real = RealPath(path) ?? throw new PrlFuseException(path, "image does not exist");
        string kind = FileKind(real);
        if (kind != "regular file")
        {
            throw new PrlFuseException(path, $"image is a {kind}, not a regular file; refused");
        }

        if (allowAnywhere || namedAbsolute)
        {
            return;
        }

        string bundle = RealPath(bundleFolder) ?? bundleFolder;
        string prefix = bundle.EndsWith('/') ? bundle : bundle + "/";
        if (!real.StartsWith(prefix, StringComparison.Ordinal))
        {
            throw new PrlFuseException(descriptorPath, $"image path {path} resolves to {real}, outside the bundle folder; refused (only absolute <File> paths may point outside the bundle)");
        }
    }

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
    /// Why a file must not be opened for writing although the open might succeed: no write permission bit at all
    /// (mode 0444: root could write it anyway, and must not), or a read-only filesystem. Null when neither.
    /// </summary>
    public static unsafe string? ReadOnlyReason(string path)
    {
        byte* buffer = stackalloc byte[StatSize + 64];
        if (Posix.Stat(path, buffer) == 0 && (*(uint*)(buffer + StatModeOffset) & 0x92) == 0)
        {
            return $"the image file is read-only (mode {Convert.ToString(*(uint*)(buffer + StatModeOffset) & 0xFFF, 8).PadLeft(4, '0')})";
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
