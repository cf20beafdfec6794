using PrlFuse.Core;

namespace PrlFuse.Cli.Commands;

internal static class MountCommand
{
    public static int Run(MountOptions o) => throw new PrlFuseException(null, "'mount' is not available in this build yet");
}
