using CommandLine;
using CommandLine.Text;
using PrlFuse.Cli.Commands;
using PrlFuse.Core;

namespace PrlFuse.Cli;

internal static class Program
{
    public const int ExitOk = 0;
    public const int ExitError = 1;
    public const int ExitUsage = 2;

    private static int Main(string[] args)
    {
        var parser = new Parser(s =>
        {
            s.HelpWriter = null;
            s.CaseInsensitiveEnumValues = true;
            s.AutoVersion = true;
        });
        var result = parser.ParseArguments<InfoOptions, ExportOptions, CheckOptions, MountOptions, UnmountOptions>(args);
        return result.MapResult(
            (InfoOptions o) => Run(o, () => InfoCommand.Run(o)),
            (ExportOptions o) => Run(o, () => ExportCommand.Run(o)),
            (CheckOptions o) => Run(o, () => CheckCommand.Run(o)),
            (MountOptions o) => Run(o, () => MountCommand.Run(o)),
            (UnmountOptions o) => Run(o, () => UnmountCommand.Run(o)),
            errors => Usage(result, errors));
    }

    /// <summary>Every command runs here: user errors become one line on stderr, never a stack trace unless --debug.</summary>
    private static int Run(CommonOptions options, Func<int> command)
    {
        try
        {
            return command();
        }
        catch (PrlFuseException e)
        {
            return Fail(e.Message, e, options.Debug);
        }
        catch (IOException e)
        {
            return Fail(e.Message, e, options.Debug);
        }
        catch (UnauthorizedAccessException e)
        {
            return Fail(e.Message, e, options.Debug);
        }
#pragma warning disable CA1031 // The last line of defence: a bug is reported as one line too.
        catch (Exception e)
#pragma warning restore CA1031
        {
            return Fail($"internal error ({e.GetType().Name}): {e.Message}; rerun with --debug and report it", e, options.Debug);
        }
    }

    private static int Fail(string message, Exception e, bool debug)
    {
        Console.Error.WriteLine($"prlfuse: {message}");
        if (debug)
        {
            Console.Error.WriteLine(e.ToString());
        }

        return ExitError;
    }

    private static int Usage<T>(ParserResult<T> result, IEnumerable<Error> errors)
    {
        var list = errors.ToList();
        bool help = list.Any(e => e.Tag is ErrorType.HelpRequestedError or ErrorType.HelpVerbRequestedError or ErrorType.VersionRequestedError);
        var text = HelpText.AutoBuild(result, h =>
        {
            h.Heading = "prlfuse " + typeof(Program).Assembly.GetName().Version?.ToString(3);
            h.Copyright = "Mounts Parallels disk bundles (.hdd) and shows every snapshot as a raw disk file.";
            h.AddDashesToOption = true;
            h.AdditionalNewLineAfterOption = false;
            h.MaximumDisplayWidth = 100;
            h.AddPostOptionsLines(HelpFooter.Lines);
            return HelpText.DefaultParsingErrorsHandler(result, h);
        }, e => e, verbsIndex: true);
        if (help)
        {
            Console.Out.WriteLine(text);
            return ExitOk;
        }

        Console.Error.WriteLine(text);
        return ExitUsage;
    }
}
