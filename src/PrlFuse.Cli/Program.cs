using System.Text;
using PrlFuse.Cli.Arguments;
using PrlFuse.Cli.Commands;
using PrlFuse.Cli.Output;

namespace PrlFuse.Cli;

internal static class Program
{
    public const int ExitOk = 0;
    public const int ExitError = 1;
    public const int ExitUsage = 2;

    public static string Version => typeof(Program).Assembly.GetName().Version?.ToString(3) ?? "0.0.0";

    private static int Main(string[] args)
    {
        if (args.Length == 0)
        {
            Console.Error.Write(GeneralHelp());
            return ExitUsage;
        }

        string verb = args[0];
        switch (verb)
        {
            case "-h" or "--help":
                Console.Out.Write(GeneralHelp());
                return ExitOk;
            case "--version" or "-V":
                Console.Out.WriteLine($"prlfuse {Version}");
                return ExitOk;
            case "help":
                return Help(args.Length > 1 ? args[1] : null, args.Length > 2 ? args[2] : null);
        }

        var command = CommandTable.Find(verb);
        if (command is null)
        {
            return UsageError(null, verb.StartsWith('-') ? $"unknown option \"{verb}\" (options follow the command)" : $"unknown command \"{verb}\"");
        }

        string[] rest = args[1..];
        if (command.Subcommands.Count > 0)
        {
            var sub = rest.Length > 0 ? command.FindSubcommand(rest[0]) : null;
            if (sub is null)
            {
                if (rest.TakeWhile(a => a != "--").Any(a => a is "-h" or "--help"))
                {
                    Console.Out.Write(command.HelpText());
                    return ExitOk;
                }

                return UsageError(command, rest.Length == 0 ? "missing subcommand" : $"unknown subcommand \"{rest[0]}\"");
            }

            command = sub;
            rest = rest[1..];
        }

        object options;
        try
        {
            options = command.Parse(rest, out bool help);
            if (help)
            {
                Console.Out.Write(command.HelpText());
                return ExitOk;
            }
        }
        catch (UsageException e)
        {
            return UsageError(e.Command, e.Message);
        }

        return Run((CommonOptions)options, () =>
        {
            if (options is DiskArgumentOptions disk)
            {
                ChooseVmDisk(disk);
            }

            return command.Run(options);
        });
    }

    /// <summary>
    /// A VM bundle stands for its chosen disk (--disk N, or its only one) from here on; the bundle and its disks are
    /// kept for 'info'. With several disks and no --disk the argument stays the VM bundle, which the disk resolver
    /// refuses with the list of its disks.
    /// </summary>
    private static void ChooseVmDisk(DiskArgumentOptions o)
    {
        string full = Path.GetFullPath(o.Disk);
        if (!Core.Descriptor.VmBundle.IsVmBundle(full))
        {
            if (o.DiskNumber is not null)
            {
                throw new Core.PrlFuseException(full, "--disk chooses a disk of a VM bundle (NAME.pvm), and this is not one; drop --disk");
            }

            return;
        }

        o.VmBundlePath = full;
        o.VmDisks = Core.Descriptor.VmBundle.ReadDisks(full);
        if (o.DiskNumber is not null || o.VmDisks.Count == 1)
        {
            o.Disk = Core.Descriptor.VmBundle.SelectDisk(full, o.DiskNumber);
        }
    }

    private static int Help(string? verb, string? subcommand)
    {
        if (verb is null)
        {
            Console.Out.Write(GeneralHelp());
            return ExitOk;
        }

        var command = CommandTable.Find(verb);
        if (command is null)
        {
            return UsageError(null, $"unknown command \"{verb}\"");
        }

        if (subcommand is not null && command.Subcommands.Count > 0)
        {
            command = command.FindSubcommand(subcommand) ?? command;
        }

        Console.Out.Write(command.HelpText());
        return ExitOk;
    }

    private static int UsageError(CommandSpec? command, string message)
    {
        string name = command is null ? "prlfuse" : "prlfuse " + command.Name;
        Console.Error.WriteLine($"{name}: {message}");
        Console.Error.WriteLine(command is null ? "Usage: prlfuse <command> [options]; see 'prlfuse --help'" : $"Usage: {command.UsageLine}; see '{name} --help'");
        return ExitUsage;
    }

    internal static string GeneralHelp()
    {
        var sb = new StringBuilder();
        sb.AppendLine($"prlfuse {Version}: opens Parallels disk bundles (.hdd) and shows every snapshot as a raw disk file.");
        sb.AppendLine().AppendLine("Usage: prlfuse <command> [options] [arguments]").AppendLine().AppendLine("Commands:");
        int width = CommandTable.Commands.Max(c => c.Name.Length) + 4;
        foreach (var c in CommandTable.Commands)
        {
            CommandSpec.Wrap(sb, c.Summary, new string(' ', width + 2), "  " + c.Name.PadRight(width));
        }

        sb.AppendLine().AppendLine("'prlfuse <command> --help' (or 'prlfuse help <command>') shows a command's options and examples.");
        sb.AppendLine("'prlfuse --version' prints the version. See also the manual page prlfuse(1).");
        sb.AppendLine().AppendLine("Examples:");
        foreach (var e in HelpFooter.Examples)
        {
            sb.Append("  ").AppendLine(e);
        }

        return sb.ToString();
    }

    /// <summary>Every command runs here: failures become one line on stderr, never a stack trace unless --debug.</summary>
    private static int Run(CommonOptions options, Func<int> command)
    {
        try
        {
            return command();
        }
        catch (UsageException e)
        {
            return UsageError(e.Command, e.Message);
        }
#pragma warning disable CA1031 // The last line of defence: every failure is reported as one line.
        catch (Exception e)
#pragma warning restore CA1031
        {
            Console.Error.WriteLine($"prlfuse: {ErrorText.Describe(e)}");
            if (options.Debug)
            {
                Console.Error.WriteLine(e.ToString());
            }

            return ExitError;
        }
    }
}

internal static class HelpFooter
{
    public static readonly string[] Examples =
    [
        "prlfuse info disk.hdd",
        "prlfuse export disk.hdd --snapshot {986476cf-d62e-45d1-b355-86feca91376e} -o old.raw",
        "prlfuse mount disk.hdd /mnt/x && mount -o loop,ro /mnt/x/snapshots/{GUID}.raw /mnt/old",
        "prlfuse status",
        "prlfuse unmount /mnt/x",
    ];
}
