using PrlFuse.Core;

namespace PrlFuse.Cli.Commands;

internal static class UnmountCommand
{
    public static int Run(UnmountOptions o) => throw new PrlFuseException(null, "'unmount' is not available in this build yet");
}
