namespace PrlFuse.Core.IO;

/// <summary>
/// The file and folder operations that disk management makes durable in order (create, write, fsync, rename, folder
/// fsync). Management code goes through this and nothing else, so tests substitute a recording subclass and replay
/// every prefix of what it did to show that a crash at any point leaves the old or the new disk.
/// </summary>
public class DurableFiles
{
    /// <summary>The real file system.</summary>
    public static DurableFiles Real { get; } = new();

    /// <summary>Creates a new empty file, open read-write; fails when the path exists.</summary>
    public virtual ImageFile CreateNew(string path) => PositionalImageFile.CreateNew(path);

    /// <summary>Opens an existing file read-write (not locked: the caller holds the disk's locks).</summary>
    public virtual ImageFile OpenWrite(string path) => PositionalImageFile.Open(path, writable: true);

    /// <summary>Creates a folder (and its missing parents).</summary>
    public virtual void CreateFolder(string path) => Directory.CreateDirectory(path);

    /// <summary>rename(2) of a file: atomic, replaces <paramref name="to"/> when it exists.</summary>
    public virtual void Rename(string from, string to) => File.Move(from, to, overwrite: true);

    /// <summary>rename(2) of a folder; fails when <paramref name="to"/> exists.</summary>
    public virtual void RenameFolder(string from, string to) => Directory.Move(from, to);

    /// <summary>Removes a file; no error when it is already gone.</summary>
    public virtual void Delete(string path) => File.Delete(path);

    /// <summary>fsync of a folder, so the names created, renamed or removed in it are durable.</summary>
    public virtual void SyncFolder(string folder)
    {
        int rc = PosixSync.FSyncFolder(folder);
        if (rc != 0)
        {
            throw new IOException($"{folder}: fsync of the folder failed (errno {rc})", rc);
        }
    }

    /// <summary>Writes a new file with <paramref name="content"/> and fsyncs it (its name is durable only after <see cref="SyncFolder"/>).</summary>
    public void WriteNewFile(string path, ReadOnlySpan<byte> content)
    {
        using var file = CreateNew(path);
        if (!content.IsEmpty)
        {
            file.Write(content, 0);
        }

        file.Flush(dataOnly: false);
    }
}
