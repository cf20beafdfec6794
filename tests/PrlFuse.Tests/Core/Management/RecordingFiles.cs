using PrlFuse.Core.IO;

namespace PrlFuse.Tests.Core.Management;

/// <summary>One file-system operation a management command made, in order; <see cref="Seq"/> numbers them from 1.</summary>
internal abstract record FsOp(int Seq);

/// <summary>A name appeared, moved or went away in a folder: durable only once that folder is fsync'd.</summary>
internal abstract record NameOp(int Seq, string Folder) : FsOp(Seq);

internal sealed record CreateFileOp(int Seq, string Folder, string Path, int Inode) : NameOp(Seq, Folder);

internal sealed record CreateFolderOp(int Seq, string Folder, string Path) : NameOp(Seq, Folder);

internal sealed record RenameOp(int Seq, string Folder, string From, string To, bool IsFolder) : NameOp(Seq, Folder);

internal sealed record DeleteOp(int Seq, string Folder, string Path) : NameOp(Seq, Folder);

internal sealed record SyncFolderOp(int Seq, string Path) : FsOp(Seq);

/// <summary>A change of a file's content: durable only once that file is fsync'd.</summary>
internal sealed record DataOp(int Seq, int Inode, long Offset, byte[]? Data, long Length) : FsOp(Seq);

internal sealed record SyncFileOp(int Seq, int Inode) : FsOp(Seq);

/// <summary>
/// <see cref="DurableFiles"/> that does every operation for real under <see cref="Root"/> and records it, so that
/// <see cref="CrashState"/> can rebuild what a crash at any point could leave: every operation before the last sync
/// that covers it, and of the later ones, names in the order they were made (the journal's order) up to a random
/// point and content changes at random.
/// </summary>
internal sealed class RecordingFiles(string root) : DurableFiles
{
    private readonly List<FsOp> _ops = [];
    private readonly Dictionary<string, int> _inodes = new(StringComparer.Ordinal);
    private int _nextInode = 1;

    public string Root { get; } = Path.GetFullPath(root);

    public IReadOnlyList<FsOp> Ops => _ops;

    private int Seq => _ops.Count + 1;

    private string Rel(string path)
    {
        string full = Path.GetFullPath(path).TrimEnd('/');
        if (full == Root)
        {
            return "";
        }

        Assert.StartsWith(Root + "/", full, StringComparison.Ordinal);
        return Path.GetRelativePath(Root, full);
    }

    private static string FolderOf(string rel) => Path.GetDirectoryName(rel) ?? "";

    /// <summary>The inode of an existing file; files there before recording get theirs on first use.</summary>
    private int InodeOf(string rel)
    {
        if (!_inodes.TryGetValue(rel, out int inode))
        {
            _inodes[rel] = inode = -(_nextInode++);
        }

        return inode;
    }

    public override ImageFile CreateNew(string path)
    {
        var inner = base.CreateNew(path);
        string rel = Rel(path);
        int inode = _nextInode++;
        _inodes[rel] = inode;
        _ops.Add(new CreateFileOp(Seq, FolderOf(rel), rel, inode));
        return new File(inner, this, inode);
    }

    public override ImageFile OpenWrite(string path) => new File(base.OpenWrite(path), this, InodeOf(Rel(path)));

    public override void CreateFolder(string path)
    {
        base.CreateFolder(path);
        string rel = Rel(path);
        _ops.Add(new CreateFolderOp(Seq, FolderOf(rel), rel));
    }

    public override void Rename(string from, string to)
    {
        base.Rename(from, to);
        Moved(Rel(from), Rel(to), isFolder: false);
    }

    public override void RenameFolder(string from, string to)
    {
        base.RenameFolder(from, to);
        Moved(Rel(from), Rel(to), isFolder: true);
    }

    private void Moved(string from, string to, bool isFolder)
    {
        Assert.Equal(FolderOf(from), FolderOf(to));
        foreach (var key in _inodes.Keys.Where(k => k == from || k.StartsWith(from + "/", StringComparison.Ordinal)).ToList())
        {
            _inodes[to + key[from.Length..]] = _inodes[key];
            _inodes.Remove(key);
        }

        _ops.Add(new RenameOp(Seq, FolderOf(from), from, to, isFolder));
    }

    public override void Delete(string path)
    {
        if (!System.IO.File.Exists(path))
        {
            return;
        }

        base.Delete(path);
        string rel = Rel(path);
        _inodes.Remove(rel);
        _ops.Add(new DeleteOp(Seq, FolderOf(rel), rel));
    }

    public override void SyncFolder(string folder)
    {
        base.SyncFolder(folder);
        _ops.Add(new SyncFolderOp(Seq, Rel(folder)));
    }

    /// <summary>
    /// Rebuilds in <paramref name="target"/> (a copy of what <see cref="Root"/> held before the first op, given as
    /// <paramref name="before"/>) the state a crash just before op <paramref name="point"/> could leave.
    /// <paramref name="random"/> null keeps every op before the point (a killed process, not a power cut).
    /// </summary>
    public void CrashState(string before, string target, int point, Random? random)
    {
        // Names and contents, modelled in memory from the state before.
        var names = new Dictionary<string, int>(StringComparer.Ordinal);
        var folders = new HashSet<string>(StringComparer.Ordinal) { "" };
        var contents = new Dictionary<int, MemoryStream>();
        var preInodes = new Dictionary<string, int>(StringComparer.Ordinal);
        int pre = -1_000_000;
        foreach (string dir in Directory.EnumerateDirectories(before, "*", SearchOption.AllDirectories))
        {
            folders.Add(Path.GetRelativePath(before, dir));
        }

        foreach (string file in Directory.EnumerateFiles(before, "*", SearchOption.AllDirectories))
        {
            string rel = Path.GetRelativePath(before, file);
            int inode = pre++;
            names[rel] = inode;
            preInodes[rel] = inode;
            contents[inode] = new MemoryStream(System.IO.File.ReadAllBytes(file));
        }

        // Recorded inodes of files that existed before are negative; map them to the pre-existing ones by name.
        var inodeMap = new Dictionary<int, int>();
        foreach (var (rel, inode) in _inodes.Where(p => p.Value < 0))
        {
            if (preInodes.TryGetValue(rel, out int existing))
            {
                inodeMap[inode] = existing;
            }
        }

        int Map(int inode) => inodeMap.TryGetValue(inode, out int mapped) ? mapped : inode;

        var ops = _ops.Where(o => o.Seq < point).ToList();
        bool journalBroken = false;
        foreach (var op in ops)
        {
            bool durable = op switch
            {
                NameOp n => ops.OfType<SyncFolderOp>().Any(s => s.Seq > n.Seq && s.Path == n.Folder),
                DataOp d => ops.OfType<SyncFileOp>().Any(s => s.Seq > d.Seq && Map(s.Inode) == Map(d.Inode)),
                _ => true,
            };
            bool keep;
            if (op is NameOp)
            {
                keep = durable || (!journalBroken && (random is null || random.Next(3) != 0));
                journalBroken |= !keep;
            }
            else
            {
                keep = durable || random is null || random.Next(2) == 0;
            }

            if (!keep)
            {
                continue;
            }

            switch (op)
            {
                case CreateFileOp c when folders.Contains(c.Folder):
                    names[c.Path] = c.Inode;
                    contents[c.Inode] = new MemoryStream();
                    break;
                case CreateFolderOp f when folders.Contains(f.Folder):
                    folders.Add(f.Path);
                    break;
                case RenameOp r when r.IsFolder && folders.Contains(r.From):
                    foreach (var key in folders.Where(k => k == r.From || k.StartsWith(r.From + "/", StringComparison.Ordinal)).ToList())
                    {
                        folders.Remove(key);
                        folders.Add(r.To + key[r.From.Length..]);
                    }

                    foreach (var key in names.Keys.Where(k => k.StartsWith(r.From + "/", StringComparison.Ordinal)).ToList())
                    {
                        names[r.To + key[r.From.Length..]] = names[key];
                        names.Remove(key);
                    }

                    break;
                case RenameOp r when !r.IsFolder && names.ContainsKey(r.From):
                    names[r.To] = names[r.From];
                    names.Remove(r.From);
                    break;
                case DeleteOp d:
                    names.Remove(d.Path);
                    break;
                case DataOp d when contents.TryGetValue(Map(d.Inode), out var stream):
                    if (d.Data is null)
                    {
                        stream.SetLength(d.Length);
                    }
                    else
                    {
                        if (stream.Length < d.Offset)
                        {
                            stream.SetLength(d.Offset);
                        }

                        stream.Position = d.Offset;
                        stream.Write(d.Data);
                    }

                    break;
            }
        }

        Directory.CreateDirectory(target);
        foreach (string folder in folders.Where(f => f.Length > 0))
        {
            Directory.CreateDirectory(Path.Combine(target, folder));
        }

        foreach (var (rel, inode) in names)
        {
            if (folders.Contains(FolderOf(rel)))
            {
                System.IO.File.WriteAllBytes(Path.Combine(target, rel), contents[inode].ToArray());
            }
        }
    }

    private void Add(FsOp op) => _ops.Add(op);

    /// <summary>The image file a management command writes through: every content change and fsync recorded.</summary>
    private sealed class File(ImageFile inner, RecordingFiles owner, int inode) : ImageFile(inner.Path, inner.Writable)
    {
        public override long Length => inner.Length;

        public override int Read(Span<byte> buffer, long offset) => inner.Read(buffer, offset);

        public override void Write(ReadOnlySpan<byte> buffer, long offset)
        {
            inner.Write(buffer, offset);
            owner.Add(new DataOp(owner.Seq, inode, offset, buffer.ToArray(), 0));
        }

        public override void SetLength(long length)
        {
            inner.SetLength(length);
            owner.Add(new DataOp(owner.Seq, inode, 0, null, length));
        }

        public override void Allocate(long from, long to)
        {
            inner.Allocate(from, to);
            owner.Add(new DataOp(owner.Seq, inode, 0, null, to));
        }

        public override void Flush(bool dataOnly)
        {
            inner.Flush(dataOnly);
            owner.Add(new SyncFileOp(owner.Seq, inode));
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                inner.Dispose();
            }
        }
    }
}
