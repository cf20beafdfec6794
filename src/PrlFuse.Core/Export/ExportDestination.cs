using PrlFuse.Core.IO;

namespace PrlFuse.Core.Export;

/// <summary>What an export writes to, which decides how: never by destroying the thing named.</summary>
public enum ExportTargetKind
{
    /// <summary>A name that does not exist yet (or a dangling symlink's target): written beside it and renamed.</summary>
    NewFile,

    /// <summary>An existing regular file (or a symlink's regular target): replaced atomically by a rename.</summary>
    RegularFile,

    /// <summary>Written in place, every byte (its old content is unknown, so no byte may be skipped).</summary>
    BlockDevice,

    /// <summary>Written in place, every byte in order.</summary>
    CharacterDevice,

    /// <summary>Written in place, every byte in order, for whoever reads the other end.</summary>
    Fifo,

    /// <summary>A stream the caller opened (standard output): every byte in order.</summary>
    Stream,
}

/// <summary>
/// A validated export destination: what the user named, the file actually written (a symlink's target), and its kind.
/// Made by <see cref="ForPath"/> before any byte is read, so every refusal comes before the export starts.
/// </summary>
public sealed class ExportDestination
{
    private ExportDestination(string named, string target, ExportTargetKind kind, Stream? stream, UnixFileMode? mode)
    {
        Named = named;
        Target = target;
        Kind = kind;
        Stream = stream;
        ExistingMode = mode;
    }

    /// <summary>The destination as the user named it (made absolute), or "-" for standard output.</summary>
    public string Named { get; }

    /// <summary>The file written: a symlink's final target, else <see cref="Named"/>.</summary>
    public string Target { get; }

    public ExportTargetKind Kind { get; }

    /// <summary>Unallocated ranges become holes only in a file that is created for the export.</summary>
    public bool IsSparse => Kind is ExportTargetKind.NewFile or ExportTargetKind.RegularFile;

    internal Stream? Stream { get; }

    /// <summary>The replaced file's permissions, kept by its replacement.</summary>
    internal UnixFileMode? ExistingMode { get; }

    /// <summary>A stream such as standard output, written in order; the caller owns it.</summary>
    public static ExportDestination ForStream(Stream stream, string name = "-")
    {
        ArgumentNullException.ThrowIfNull(stream);
        return new ExportDestination(name, name, ExportTargetKind.Stream, stream, null);
    }

    /// <summary>
    /// Classifies <paramref name="path"/> (following symlinks) and refuses what cannot or must not be written: a
    /// folder, a socket, a missing folder, or any of <paramref name="refused"/> (the disk's own files), however reached.
    /// </summary>
    public static ExportDestination ForPath(string path, IEnumerable<string>? refused = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        string named = Path.GetFullPath(path);
        var destination = Classify(named);
        if (refused is not null && PathRules.Identity(destination.Target) is { } id)
        {
            foreach (string file in refused)
            {
                if (PathRules.Identity(file) == id)
                {
                    string via = destination.Target == named ? "" : $"leads to {destination.Target}, which ";
                    throw new PrlFuseException(named, $"{via}is an image of the disk being exported; choose another output file");
                }
            }
        }

        return destination;
    }

    private static ExportDestination Classify(string named)
    {
        string kind = PathRules.FileKind(named);
        switch (kind)
        {
            case "missing file":
                return NewFile(named, FinalTarget(named));
            case "regular file":
                string target = PathRules.RealPath(named)
                    ?? throw new PrlFuseException(named, "leads to a file that was deleted; name a file to write");
                return new ExportDestination(named, target, ExportTargetKind.RegularFile, null, File.GetUnixFileMode(target));
            case "directory":
                throw new PrlFuseException(named, $"is a folder; name the raw file to write, for example {Path.Combine(named, "disk.raw")}");
            case "block device":
                return new ExportDestination(named, named, ExportTargetKind.BlockDevice, null, null);
            case "character device":
                return new ExportDestination(named, named, ExportTargetKind.CharacterDevice, null, null);
            case "FIFO":
                return new ExportDestination(named, named, ExportTargetKind.Fifo, null, null);
            default:
                throw new PrlFuseException(named, $"is a {kind}; export writes to a file, a device, a FIFO or standard output (-o -)");
        }
    }

    /// <summary>A dangling symlink is followed to the name it points at, as a shell redirection would.</summary>
    private static string FinalTarget(string named)
    {
        try
        {
            return new FileInfo(named).LinkTarget is null ? named : File.ResolveLinkTarget(named, returnFinalTarget: true)?.FullName ?? named;
        }
        catch (IOException e)
        {
            throw new PrlFuseException(named, $"cannot follow the symlink: {e.Message}", e);
        }
    }

    private static ExportDestination NewFile(string named, string target)
    {
        string folder = Path.GetDirectoryName(target) ?? "/";
        string folderKind = PathRules.FileKind(folder);
        if (folderKind == "missing file")
        {
            // stat fails the same way for a missing folder and for one behind a file ("a/b" where a is a file).
            string? existing = folder;
            while (existing is not null && PathRules.FileKind(existing) == "missing file")
            {
                existing = Path.GetDirectoryName(existing);
            }

            if (existing is not null && PathRules.FileKind(existing) != "directory")
            {
                throw new PrlFuseException(named, $"{existing} is a {PathRules.FileKind(existing)}, not a folder");
            }

            throw new PrlFuseException(named, $"folder {folder} does not exist");
        }

        if (folderKind != "directory")
        {
            throw new PrlFuseException(named, $"{folder} is a {folderKind}, not a folder");
        }

        // Canonical folder: the temporary file must be created in the folder the final name is in, for the rename.
        string real = PathRules.RealPath(folder) ?? folder;
        return new ExportDestination(named, Path.Combine(real, Path.GetFileName(target)), ExportTargetKind.NewFile, null, null);
    }
}
