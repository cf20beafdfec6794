using PrlFuse.Core;

namespace PrlFuse.Cli.Commands;

internal static class CheckCommand
{
    public static int Run(CheckOptions o) => throw new PrlFuseException(null, "'check' is not available in this build yet");
}
