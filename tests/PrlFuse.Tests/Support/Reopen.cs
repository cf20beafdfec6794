using PrlFuse.Core;

namespace PrlFuse.Tests.Support;

/// <summary>
/// Opens an image again right after this process closed it. Other tests in this process start programs: a child
/// between fork and exec holds a copy of every descriptor, ours included, and so our image locks, for a moment after
/// we closed. A lock still held a second later is a real conflict and is thrown.
/// </summary>
public static class Reopen
{
    public static T Retrying<T>(Func<T> open)
    {
        for (int attempt = 0; ; attempt++)
        {
            try
            {
                return open();
            }
            catch (ImageInUseException) when (attempt < 20)
            {
                Thread.Sleep(50);
            }
        }
    }
}
