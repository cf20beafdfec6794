using System.Buffers;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Engine;
using Spectre.Console;

namespace PrlFuse.Cli.Commands;

internal static class ExportCommand
{
    private const int ChunkBytes = 4 << 20;

    public static int Run(ExportOptions o)
    {
        if (o.Output is null)
        {
            throw new Arguments.UsageException(CommandTable.Find("export"), "missing -o/--output FILE (where to write the raw disk; - for standard output)");
        }

        using var disk = VirtualDisk.Open(o.Disk, new DiskOpenOptions { CacheBytes = o.CacheBytes, AllowImagesOutsideBundle = o.AllowOutsideImages });
        var view = o.Snapshot is null ? disk.Top : disk.GetView(o.Snapshot);
        string output = Path.GetFullPath(o.Output);
        foreach (var layer in disk.Storages.SelectMany(s => s.Images.Values))
        {
            if (string.Equals(Path.GetFullPath(layer.Path), output, StringComparison.Ordinal))
            {
                throw new Core.PrlFuseException(output, "is an image of the disk being exported; choose another output file");
            }
        }

        string partial = output + ".partial";
        bool interactive = !Console.IsErrorRedirected && AnsiConsole.Profile.Capabilities.Interactive;
        if (interactive)
        {
            AnsiConsole.Progress()
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new TransferSpeedColumn(), new RemainingTimeColumn())
                .Start(ctx =>
                {
                    var task = ctx.AddTask($"export {DiskDescriptor.FormatGuid(view.Id)}", maxValue: view.Size);
                    Export(view, partial, done => task.Value = done);
                });
        }
        else
        {
            Export(view, partial, _ => { });
        }

        File.Move(partial, output, overwrite: true);
        Console.Error.WriteLine($"prlfuse: wrote {Sizes.Human(view.Size)} snapshot {DiskDescriptor.FormatGuid(view.Id)} to {output}");
        return Program.ExitOk;
    }

    /// <summary>
    /// Copies allocated ranges; unallocated ranges and all-zero chunks become holes. The file is written under a
    /// temporary name and made durable before it replaces the output, so an interrupted export leaves no torn file.
    /// </summary>
    private static void Export(SnapshotView view, string path, Action<long> progress)
    {
        using var stream = new FileStream(path, FileMode.Create, FileAccess.ReadWrite, FileShare.None, 1, FileOptions.None);
        var handle = stream.SafeFileHandle;
        RandomAccess.SetLength(handle, view.Size);
        byte[] buffer = ArrayPool<byte>.Shared.Rent(ChunkBytes);
        try
        {
            long offset = 0;
            while (offset < view.Size)
            {
                long run = view.GetAllocationStatus(offset, view.Size - offset, out bool allocated);
                if (allocated)
                {
                    for (long done = 0; done < run;)
                    {
                        int n = (int)Math.Min(ChunkBytes, run - done);
                        var span = buffer.AsSpan(0, n);
                        view.Read(span, offset + done);
                        if (span.ContainsAnyExcept((byte)0))
                        {
                            RandomAccess.Write(handle, span, offset + done);
                        }

                        done += n;
                        progress(offset + done);
                    }
                }

                offset += run;
                progress(offset);
            }

            stream.Flush(flushToDisk: true);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }
}
