namespace PrlFuse.Core;

/// <summary>Lock-free helpers the BCL's Interlocked lacks.</summary>
internal static class Atomic
{
    /// <summary>Raises <paramref name="location"/> to <paramref name="value"/> unless it is already at least that.</summary>
    public static void RaiseTo(ref long location, long value)
    {
        long current;
        while (value > (current = Volatile.Read(ref location)))
        {
            if (Interlocked.CompareExchange(ref location, value, current) == current)
            {
                return;
            }
        }
    }
}
