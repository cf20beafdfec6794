namespace PrlFuse.Fuse.Native;

/// <summary>
/// Adds entries to a readdir reply without allocating: the name is copied with a NUL into a stack
/// buffer and handed to the binding's filler, which appends it to the open directory's listing in libfuse's dirent
/// format (the directory is listed once, at opendir).
/// </summary>
public readonly unsafe ref struct DirectoryFiller
{
    /// <summary>NAME_MAX on Linux.</summary>
    public const int MaxNameLength = 255;

    private readonly void* _buffer;
    private readonly delegate* unmanaged<void*, byte*, Stat*, long, int, int> _filler;

    internal DirectoryFiller(void* buffer, delegate* unmanaged<void*, byte*, Stat*, long, int, int> filler)
    {
        _buffer = buffer;
        _filler = filler;
    }

    /// <summary>Adds a name of unknown type (no stat). Returns false if libfuse could not take it.</summary>
    public bool Add(ReadOnlySpan<byte> utf8Name) => Add(utf8Name, null);

    /// <summary>Adds a name with its file type (and inode if use_ino), from <paramref name="stat"/>.</summary>
    public bool Add(ReadOnlySpan<byte> utf8Name, in Stat stat)
    {
        fixed (Stat* s = &stat)
        {
            return Add(utf8Name, s);
        }
    }

    /// <summary>Adds a name with just a file type, e.g. <see cref="StatMode.Directory"/>.</summary>
    public bool Add(ReadOnlySpan<byte> utf8Name, uint fileType)
    {
        Stat stat = default;
        stat.Mode = fileType;
        return Add(utf8Name, &stat);
    }

    private bool Add(ReadOnlySpan<byte> utf8Name, Stat* stat)
    {
        if (utf8Name.IsEmpty || utf8Name.Length > MaxNameLength || utf8Name.Contains((byte)0))
        {
            throw new ArgumentException("A directory entry name must be 1..255 bytes without NUL.", nameof(utf8Name));
        }
        byte* name = stackalloc byte[MaxNameLength + 1];
        utf8Name.CopyTo(new Span<byte>(name, MaxNameLength));
        name[utf8Name.Length] = 0;
        return _filler(_buffer, name, stat, 0, 0) == 0;
    }
}
