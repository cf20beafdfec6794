using Spectre.Console;

namespace PrlFuse.Cli.Output;

/// <summary>Spectre consoles that behave when output goes to a pipe or a file: no colour codes, no wrapping at 80.</summary>
internal static class Terminal
{
    public static IAnsiConsole Stdout { get; } = Create(Console.Out, Console.IsOutputRedirected);

    /// <summary>A console over any writer; <paramref name="redirected"/> turns colours and terminal width off.</summary>
    public static IAnsiConsole Create(TextWriter writer, bool redirected)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Ansi = redirected ? AnsiSupport.No : AnsiSupport.Detect,
            ColorSystem = redirected ? ColorSystemSupport.NoColors : ColorSystemSupport.Detect,
            Out = new AnsiConsoleOutput(writer),
            Interactive = redirected ? InteractionSupport.No : InteractionSupport.Detect,
        });
        if (redirected)
        {
            console.Profile.Width = 200;
        }

        return console;
    }
}
