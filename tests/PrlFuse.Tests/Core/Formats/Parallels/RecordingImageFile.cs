using PrlFuse.Core.IO;

namespace PrlFuse.Tests.Core.Formats.Parallels;

/// <summary>One operation on an image file, in the order it happened.</summary>
internal abstract record FileOp(int Seq);

/// <summary>A write: <see cref="StartSeq"/> when it began, <see cref="FileOp.Seq"/> when the bytes had reached the file.</summary>
internal sealed record WriteOp(int Seq, int StartSeq, long Offset, byte[] Data) : FileOp(Seq)
{
    /// <summary>Written past the host page cache (O_DIRECT).</summary>
    public bool Direct { get; init; }
}

internal sealed record SetLengthOp(int Seq, long Length) : FileOp(Seq);

/// <summary>A hole punched: <see cref="StartSeq"/> when it began, <see cref="FileOp.Seq"/> when it was done.</summary>
internal sealed record PunchOp(int Seq, int StartSeq, long Offset, long Length) : FileOp(Seq);

/// <summary>A flush: <c>Seq</c> when it started (it covers the writes completed before), done when it returned.</summary>
internal sealed record FlushOp(int Seq, bool DataOnly) : FileOp(Seq)
{
    public int DoneSeq { get; set; } = -1;
}

/// <summary>A test-level event (a guest write started, a disk flush returned) in the same sequence as the file ops.</summary>
internal sealed record MarkOp(int Seq, string What, long Offset, long Length, byte[]? Model) : FileOp(Seq);

/// <summary>Shared log of the file operations of every file a disk opens, plus test markers.</summary>
internal sealed class OpLog
{
    private readonly List<FileOp> _ops = [];
    private int _seq;

    public int Next() => Interlocked.Increment(ref _seq);

    public void Add(FileOp op)
    {
        lock (_ops)
        {
            _ops.Add(op);
        }
    }

    public void Mark(string what, long offset = 0, long length = 0, byte[]? model = null) => Add(new MarkOp(Next(), what, offset, length, model));

    /// <summary>The ops in sequence order.</summary>
    public List<FileOp> Snapshot()
    {
        lock (_ops)
        {
            return _ops.OrderBy(o => o.Seq).ToList();
        }
    }
}

/// <summary>
/// Wraps the real <see cref="PositionalImageFile"/> and records every write, length change and flush of the files
/// whose name matches the <c>record</c> filter its opener is given.
/// </summary>
internal sealed class RecordingImageFile : ImageFile
{
    private readonly ImageFile _inner;
    private readonly OpLog _log;

    private RecordingImageFile(ImageFile inner, OpLog log)
        : base(inner.Path, inner.Writable)
    {
        _inner = inner;
        _log = log;
    }

    public static Func<string, bool, ImageFile> Opener(OpLog log, Func<string, bool> record) => (path, writable) =>
    {
        var inner = PositionalImageFile.Open(path, writable);
        return writable && record(path) ? new RecordingImageFile(inner, log) : inner;
    };

    public override long Length => _inner.Length;

    public override int Read(Span<byte> buffer, long offset) => _inner.Read(buffer, offset);

    public override void Write(ReadOnlySpan<byte> buffer, long offset)
    {
        int start = _log.Next();
        _inner.Write(buffer, offset);
        _log.Add(new WriteOp(_log.Next(), start, offset, buffer.ToArray()));
    }

    public override bool EnableDirectWrites() => _inner.EnableDirectWrites();

    public override bool TryWriteDirect(ReadOnlySpan<byte> buffer, long offset)
    {
        int start = _log.Next();
        if (!_inner.TryWriteDirect(buffer, offset))
        {
            return false;
        }

        _log.Add(new WriteOp(_log.Next(), start, offset, buffer.ToArray()) { Direct = true });
        return true;
    }

    public override bool TryPunchHole(long offset, long length)
    {
        int start = _log.Next();
        if (!_inner.TryPunchHole(offset, length))
        {
            return false;
        }

        _log.Add(new PunchOp(_log.Next(), start, offset, length));
        return true;
    }

    public override void SetLength(long length)
    {
        _inner.SetLength(length);
        _log.Add(new SetLengthOp(_log.Next(), length));
    }

    public override void Flush(bool dataOnly)
    {
        var op = new FlushOp(_log.Next(), dataOnly);
        _inner.Flush(dataOnly);
        op.DoneSeq = _log.Next();
        _log.Add(op);
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _inner.Dispose();
        }
    }
}
