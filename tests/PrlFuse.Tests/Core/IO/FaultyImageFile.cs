using PrlFuse.Core.Engine;
using PrlFuse.Core.IO;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.IO;

/// <summary>
/// Where and how a <see cref="FaultyImageFile"/> fails: reads and/or writes touching [Start, End) of the file whose name
/// ends in <see cref="FileName"/>, with an errno (EIO by default), while <see cref="Armed"/>, at most
/// <see cref="MaxHits"/> times. Shared by every file a disk opens, so a test can arm and disarm it mid-run.
/// </summary>
public sealed class FaultPlan
{
    public const int EIO = 5;

    public string FileName { get; init; } = string.Empty;

    public long Start { get; init; }

    public long End { get; init; } = long.MaxValue;

    public bool FailReads { get; init; }

    public bool FailWrites { get; init; }

    public bool FailFlush { get; init; }

    /// <summary>A failing write first writes the first half of its bytes (a write cut short by the device).</summary>
    public bool WriteHalfFirst { get; init; }

    public int Errno { get; init; } = EIO;

    public int MaxHits { get; set; } = int.MaxValue;

    public volatile bool Armed = true;

    private int _hits;

    public int Hits => Volatile.Read(ref _hits);

    public bool Matches(string path) => path.EndsWith(FileName, StringComparison.Ordinal);

    internal bool Fires(long offset, long length)
    {
        if (!Armed || length <= 0 || offset >= End || offset + length <= Start)
        {
            return false;
        }

        if (Interlocked.Increment(ref _hits) > MaxHits)
        {
            Interlocked.Decrement(ref _hits);
            return false;
        }

        return true;
    }

    internal bool FiresOnFlush()
    {
        if (!Armed || !FailFlush)
        {
            return false;
        }

        if (Interlocked.Increment(ref _hits) > MaxHits)
        {
            Interlocked.Decrement(ref _hits);
            return false;
        }

        return true;
    }

    /// <summary>Options whose OpenFile wraps the planned file (every other file opens as usual).</summary>
    public DiskOpenOptions Options(bool readOnly, long cacheBytes = DiskOpenOptions.DefaultCacheBytes) => new()
    {
        ReadOnly = readOnly,
        CacheBytes = cacheBytes,
        OpenFile = (path, writable) =>
        {
            var inner = PositionalImageFile.Open(path, writable);
            return Matches(path) ? new FaultyImageFile(inner, this) : inner;
        },
    };
}

/// <summary>An <see cref="ImageFile"/> that delegates to a real one and fails where its <see cref="FaultPlan"/> says.</summary>
public sealed class FaultyImageFile(ImageFile inner, FaultPlan plan) : ImageFile(inner.Path, inner.Writable)
{
    public override long Length => inner.Length;

    public override int Read(Span<byte> buffer, long offset)
    {
        if (plan.FailReads && plan.Fires(offset, buffer.Length))
        {
            throw new IOException($"{Path}: injected read error at {offset} (errno {plan.Errno})", plan.Errno);
        }

        return inner.Read(buffer, offset);
    }

    public override void Write(ReadOnlySpan<byte> buffer, long offset)
    {
        if (plan.FailWrites && plan.Fires(offset, buffer.Length))
        {
            if (plan.WriteHalfFirst)
            {
                inner.Write(buffer[..(buffer.Length / 2)], offset);
            }

            throw new IOException($"{Path}: injected write error at {offset} (errno {plan.Errno})", plan.Errno);
        }

        inner.Write(buffer, offset);
    }

    public override void SetLength(long length) => inner.SetLength(length);

    public override void Flush(bool dataOnly)
    {
        if (plan.FiresOnFlush())
        {
            throw new IOException($"{Path}: injected {(dataOnly ? "fdatasync" : "fsync")} error (errno {plan.Errno})", plan.Errno);
        }

        inner.Flush(dataOnly);
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            inner.Dispose();
        }
    }
}
