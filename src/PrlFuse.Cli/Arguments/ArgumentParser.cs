using System.Globalization;
using System.Text;

namespace PrlFuse.Cli.Arguments;

/// <summary>A mistake in what the user typed: one line, then the command's usage line; exit 2.</summary>
internal sealed class UsageException(CommandSpec? command, string message) : Exception(message)
{
    public CommandSpec? Command { get; } = command;
}

/// <summary>One option of a command. <see cref="ValueName"/> is null for a flag.</summary>
internal sealed record OptionSpec(string Long, char? Short, string? ValueName, string Help, Action<object, string> Apply, bool Hidden = false)
{
    public string Label => (Short is { } s ? $"-{s}, " : "    ") + "--" + Long + (ValueName is null ? "" : " " + ValueName);
}

/// <summary>A positional argument of a command.</summary>
internal sealed record PositionalSpec(string Name, string Help, Action<object, string> Apply);

/// <summary>
/// A command: its options, positional arguments, help text and what runs it. Options may stand anywhere among the
/// positional arguments (as `mount -o ro disk dir` users type); `--` ends the options.
/// </summary>
internal sealed class CommandSpec
{
    public required string Name { get; init; }

    public IReadOnlyList<string> Aliases { get; init; } = [];

    public required string Summary { get; init; }

    /// <summary>More paragraphs for --help.</summary>
    public IReadOnlyList<string> Description { get; init; } = [];

    public IReadOnlyList<PositionalSpec> Positionals { get; init; } = [];

    public required IReadOnlyList<OptionSpec> Options { get; init; }

    public IReadOnlyList<string> Examples { get; init; } = [];

    /// <summary>
    /// The subcommands of a command group ("snapshot list", "snapshot create"): each a command of its own, named with
    /// the group's name in front. A group itself only shows its help.
    /// </summary>
    public IReadOnlyList<CommandSpec> Subcommands { get; init; } = [];

    public required Func<object> Create { get; init; }

    public required Func<object, int> Run { get; init; }

    /// <summary>The subcommand <paramref name="word"/> of this group, or null.</summary>
    public CommandSpec? FindSubcommand(string word) => Subcommands.FirstOrDefault(s => s.Name == $"{Name} {word}");

    public string UsageLine => Subcommands.Count > 0 ? $"prlfuse {Name} <{string.Join('|', Subcommands.Select(s => s.Name[(Name.Length + 1)..]))}> [options] ..." :
        $"prlfuse {Name}" + (Options.Any(o => !o.Hidden) ? " [options]" : "") + string.Concat(Positionals.Select(p => $" <{p.Name}>"));

    /// <summary>Parses the arguments after the verb into a fresh options object.</summary>
    public object Parse(IReadOnlyList<string> args, out bool helpRequested)
    {
        // -h anywhere before "--" asks for help, whatever else is on the line (a mistyped argument too).
        helpRequested = args.TakeWhile(a => a != "--").Any(a => a is "-h" or "--help");
        var target = Create();
        if (helpRequested)
        {
            return target;
        }

        int positional = 0;
        bool optionsEnded = false;
        for (int i = 0; i < args.Count; i++)
        {
            string arg = args[i];
            if (!optionsEnded && arg == "--")
            {
                optionsEnded = true;
                continue;
            }

            if (!optionsEnded && arg.Length > 1 && arg[0] == '-')
            {
                i = ParseOption(target, args, i);
                continue;
            }

            if (positional >= Positionals.Count)
            {
                throw new UsageException(this, $"unexpected argument \"{arg}\"");
            }

            Positionals[positional++].Apply(target, arg);
        }

        if (positional < Positionals.Count)
        {
            throw new UsageException(this, $"missing <{Positionals[positional].Name}>");
        }

        return target;
    }

    private int ParseOption(object target, IReadOnlyList<string> args, int i)
    {
        string arg = args[i];
        OptionSpec? spec;
        string? inline = null;
        if (arg.StartsWith("--", StringComparison.Ordinal))
        {
            string name = arg[2..];
            int eq = name.IndexOf('=', StringComparison.Ordinal);
            if (eq >= 0)
            {
                inline = name[(eq + 1)..];
                name = name[..eq];
            }

            spec = Options.FirstOrDefault(o => o.Long == name);
            if (spec is null)
            {
                throw new UsageException(this, $"unknown option \"--{name}\"" + Suggest(name));
            }
        }
        else
        {
            spec = Options.FirstOrDefault(o => o.Short == arg[1]);
            if (spec is null)
            {
                throw new UsageException(this, $"unknown option \"-{arg[1]}\"");
            }

            if (arg.Length > 2)
            {
                if (spec.ValueName is null)
                {
                    throw new UsageException(this, $"option \"-{arg[1]}\" takes no value (\"{arg}\"); give flags one by one");
                }

                inline = arg[2..];
            }
        }

        string shown = arg.StartsWith("--", StringComparison.Ordinal) ? "--" + spec.Long : "-" + spec.Short;
        if (spec.ValueName is null)
        {
            if (inline is not null)
            {
                throw new UsageException(this, $"option \"{shown}\" takes no value");
            }

            spec.Apply(target, "");
            return i;
        }

        string value;
        if (inline is not null)
        {
            value = inline;
        }
        else if (i + 1 < args.Count)
        {
            value = args[++i];
        }
        else
        {
            throw new UsageException(this, $"option \"{shown}\" needs a value ({spec.ValueName})");
        }

        try
        {
            spec.Apply(target, value);
        }
        catch (FormatException e)
        {
            throw new UsageException(this, $"{shown} {Quote(value)}: {e.Message}");
        }

        return i;
    }

    private string Suggest(string name)
    {
        var near = Options.Where(o => !o.Hidden && (o.Long.StartsWith(name, StringComparison.Ordinal) || name.StartsWith(o.Long, StringComparison.Ordinal))).Select(o => "--" + o.Long).ToList();
        return near.Count == 1 ? $"; did you mean {near[0]}?" : "";
    }

    private static string Quote(string value) => value.Length == 0 ? "\"\"" : value;

    public string HelpText()
    {
        var sb = new StringBuilder();
        sb.Append("Usage: ").AppendLine(UsageLine).AppendLine();
        Wrap(sb, Summary, "");
        foreach (var paragraph in Description)
        {
            sb.AppendLine();
            Wrap(sb, paragraph, "");
        }

        if (Positionals.Count > 0)
        {
            sb.AppendLine().AppendLine("Arguments:");
            int width = Positionals.Max(p => p.Name.Length + 2) + 4;
            foreach (var p in Positionals)
            {
                Row(sb, "  <" + p.Name + ">", p.Help, width);
            }
        }

        if (Subcommands.Count > 0)
        {
            sb.AppendLine().AppendLine("Subcommands:");
            int width = Subcommands.Max(c => c.Name.Length) + 4;
            foreach (var c in Subcommands)
            {
                Row(sb, "  " + c.Name, c.Summary, width);
            }

            sb.AppendLine().AppendLine($"'prlfuse {Name} <subcommand> --help' shows a subcommand's options and examples.");
        }

        var visible = Options.Where(o => !o.Hidden).ToList();
        sb.AppendLine().AppendLine("Options:");
        int w = Math.Max(visible.Count == 0 ? 0 : visible.Max(o => o.Label.Length), "-h, --help".Length) + 4;
        foreach (var o in visible)
        {
            Row(sb, "  " + o.Label, o.Help, w);
        }

        Row(sb, "  -h, --help", "Show this help.", w);
        if (Examples.Count > 0)
        {
            sb.AppendLine().AppendLine("Examples:");
            foreach (var e in Examples)
            {
                sb.Append("  ").AppendLine(e);
            }
        }

        return sb.ToString();
    }

    internal const int Width = 100;

    private static void Row(StringBuilder sb, string label, string help, int width)
    {
        if (label.Length + 2 > width)
        {
            sb.AppendLine(label);
            label = "";
        }

        Wrap(sb, help, new string(' ', width), label.PadRight(width));
    }

    internal static void Wrap(StringBuilder sb, string text, string indent, string? first = null)
    {
        var line = new StringBuilder(first ?? indent);
        int start = line.Length;
        foreach (var word in text.Split(' ', StringSplitOptions.RemoveEmptyEntries))
        {
            if (line.Length > start && line.Length + 1 + word.Length > Width)
            {
                sb.AppendLine(line.ToString().TrimEnd());
                line.Clear().Append(indent);
                start = line.Length;
            }

            if (line.Length > start)
            {
                line.Append(' ');
            }

            line.Append(word);
        }

        sb.AppendLine(line.ToString().TrimEnd());
    }
}

/// <summary>Typed builders for option tables, so each command lists its options once with their setters.</summary>
internal static class Spec
{
    public static OptionSpec Flag<T>(string name, char? shortName, string help, Action<T> set, bool hidden = false) =>
        new(name, shortName, null, help, (o, _) => set((T)o), hidden);

    public static OptionSpec Value<T>(string name, char? shortName, string valueName, string help, Action<T, string> set, bool hidden = false) =>
        new(name, shortName, valueName, help, (o, v) => set((T)o, v), hidden);

    public static PositionalSpec Positional<T>(string name, string help, Action<T, string> set) =>
        new(name, help, (o, v) => set((T)o, v));

    /// <summary>A whole number in [min, max]; a FormatException carries the range for the message.</summary>
    public static int Count(string text, int min, int max)
    {
        if (!int.TryParse(text, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out int n) || n < min || n > max)
        {
            throw new FormatException($"must be a whole number from {min} to {max}");
        }

        return n;
    }
}
