namespace PrlFuse.Nbd;

/// <summary>
/// Bytes of request buffers that may be held at once: a connection's reader takes its request's share before it
/// rents the buffer (and reads a WRITE's data), and gives it back once the reply is sent. A client that sends faster
/// than the disk answers is then simply not read from; memory stays bounded whatever clients send. First come, first
/// served, so a large request is not starved by small ones.
/// </summary>
internal sealed class ByteBudget
{
    private readonly object _lock = new();
    private readonly long _capacity;
    private long _available;
    private long _nextTicket;
    private long _serving;
    private bool _closed;

    public ByteBudget(long capacity)
    {
        _capacity = capacity;
        _available = capacity;
    }

    public bool IsClosed
    {
        get
        {
            lock (_lock)
            {
                return _closed;
            }
        }
    }

    /// <summary>Waits for <paramref name="bytes"/> (at most the whole budget); false once <see cref="Close"/> was called.</summary>
    public bool Acquire(long bytes)
    {
        bytes = Math.Min(bytes, _capacity);
        lock (_lock)
        {
            long ticket = _nextTicket++;
            while (!_closed && (ticket != _serving || _available < bytes))
            {
                Monitor.Wait(_lock);
            }

            _serving++;
            if (_closed)
            {
                Monitor.PulseAll(_lock);
                return false;
            }

            _available -= bytes;
            Monitor.PulseAll(_lock);
            return true;
        }
    }

    public void Release(long bytes)
    {
        bytes = Math.Min(bytes, _capacity);
        lock (_lock)
        {
            _available += bytes;
            Monitor.PulseAll(_lock);
        }
    }

    /// <summary>Every waiting and later <see cref="Acquire"/> returns false (the server stops taking requests).</summary>
    public void Close()
    {
        lock (_lock)
        {
            _closed = true;
            Monitor.PulseAll(_lock);
        }
    }
}
