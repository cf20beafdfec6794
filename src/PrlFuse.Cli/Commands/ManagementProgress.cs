using Spectre.Console;

namespace PrlFuse.Cli.Commands;

/// <summary>
/// A progress bar on stderr for a long management operation, shown only when stderr is a terminal; otherwise the work
/// runs silently and only the final line is printed.
/// </summary>
internal static class ManagementProgress
{
    /// <summary>Runs <paramref name="work"/>, giving it a reporter of (task, done, total).</summary>
    public static T Run<T>(Func<Action<string, long, long>?, T> work)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
        if (Console.IsErrorRedirected || !console.Profile.Capabilities.Interactive)
        {
            return work(null);
        }

        T result = default!;
        console.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                var tasks = new Dictionary<string, ProgressTask>();
                result = work((name, done, total) =>
                {
                    if (!tasks.TryGetValue(name, out var task))
                    {
                        task = ctx.AddTask(Markup.Escape(name), maxValue: Math.Max(total, 1));
                        tasks[name] = task;
                    }

                    task.MaxValue = Math.Max(total, 1);
                    task.Value = done;
                });
            });
        return result;
    }
}
