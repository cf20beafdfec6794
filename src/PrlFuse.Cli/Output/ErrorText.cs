using System.Text.RegularExpressions;
using PrlFuse.Core;

namespace PrlFuse.Cli.Output;

/// <summary>
/// Failures in the tool's own words: what, which path, what to do. .NET's texts ("Could not find a part of the
/// path '...'") are recognised by type and errno and said again; the path they name is kept.
/// </summary>
internal static partial class ErrorText
{
    public static string Describe(Exception e)
    {
        string? path = QuotedPath(e.Message);
        switch (e)
        {
            case ImageInUseException inUse:
                return InUse.Explain(inUse);
            case PrlFuseException:
                return e.Message;
            case DirectoryNotFoundException:
                return path is null ? "a folder on the path does not exist" : $"{path}: folder {Parent(path)} does not exist; create it first or choose another path";
            case FileNotFoundException f:
                return $"{f.FileName ?? path ?? "file"}: no such file";
            case UnauthorizedAccessException:
                return path is null ? "permission denied" : $"{path}: permission denied; run as a user who may write there, or choose another path";
            case PathTooLongException:
                return path is null ? "a path is too long" : $"{path}: path too long";
            case IOException io:
                string what = Errno(io.HResult) ?? io.Message.TrimEnd('.');
                return path is null ? what : $"{path}: {what}";
            case OutOfMemoryException:
                return "out of memory; try a smaller --cache-size";
            default:
                return $"internal error ({e.GetType().Name}): {e.Message}; rerun with --debug and report it";
        }
    }

    private static string Parent(string path) => Path.GetDirectoryName(path) is { Length: > 0 } d ? d : "/";

    private static string? Errno(int hresult) => hresult switch
    {
        Core.IO.Errno.EISDIR => "is a folder; give a file name",
        Core.IO.Errno.ENOTDIR => "a part of the path is not a folder",
        Core.IO.Errno.ENOSPC => "no space left on the device",
        Core.IO.Errno.EROFS => "read-only filesystem",
        Core.IO.Errno.EACCES or Core.IO.Errno.EPERM => "permission denied",
        Core.IO.Errno.EEXIST => "already exists",
        Core.IO.Errno.EIO => "input/output error",
        Core.IO.Errno.ENOENT => "no such file or folder",
        _ => null,
    };

    private static string? QuotedPath(string message)
    {
        var m = Quoted().Match(message);
        return m.Success ? m.Groups[1].Value : null;
    }

    [GeneratedRegex("'(/[^']*)'")]
    private static partial Regex Quoted();
}
