using PrlFuse.Nbd.Protocol;

namespace PrlFuse.Nbd;

/// <summary>A request read and checked, waiting for a worker: its header and its buffer (READ's to fill, WRITE's data).</summary>
internal readonly record struct PendingRequest(NbdRequestHeader Header, byte[]? Buffer, long Charged);

/// <summary>
/// The requests of one connection between its reader and its workers: bounded (the reader waits when it is full) and
/// allocation-free once made.
/// </summary>
internal sealed class RequestQueue
{
    private readonly PendingRequest[] _items;
    private readonly object _lock = new();
    private int _head;
    private int _count;
    private bool _completed;

    public RequestQueue(int capacity)
    {
        _items = new PendingRequest[capacity];
    }

    public void Add(in PendingRequest request)
    {
        lock (_lock)
        {
            while (_count == _items.Length)
            {
                Monitor.Wait(_lock);
            }

            _items[(_head + _count) % _items.Length] = request;
            _count++;
            Monitor.PulseAll(_lock);
        }
    }

    /// <summary>Waits for the next request; false once the queue is completed and empty.</summary>
    public bool TryTake(out PendingRequest request)
    {
        lock (_lock)
        {
            while (_count == 0 && !_completed)
            {
                Monitor.Wait(_lock);
            }

            if (_count == 0)
            {
                request = default;
                return false;
            }

            request = _items[_head];
            _items[_head] = default;
            _head = (_head + 1) % _items.Length;
            _count--;
            Monitor.PulseAll(_lock);
            return true;
        }
    }

    /// <summary>No more requests come: workers take what is left, then stop.</summary>
    public void Complete()
    {
        lock (_lock)
        {
            _completed = true;
            Monitor.PulseAll(_lock);
        }
    }
}
