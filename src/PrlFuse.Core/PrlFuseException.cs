namespace PrlFuse.Core;

/// <summary>
/// A problem with the user's input (a descriptor, an image, a path) that the tool reports as one line:
/// what is wrong, in which file, and where useful what to do. Never a bug in PrlFuse itself.
/// </summary>
public class PrlFuseException : Exception
{
    public PrlFuseException(string? file, string message, Exception? inner = null)
        : base(OneLine(file is null ? message : $"{file}: {message}"), inner)
    {
        File = file;
        Problem = OneLine(message);
    }

    /// <summary>The file the problem is in, when there is one.</summary>
    public string? File { get; }

    /// <summary>The problem without the file name.</summary>
    public string Problem { get; }

    /// <summary>
    /// Messages quote untrusted text (descriptor values, paths); control characters in it are escaped so the error
    /// stays one line and cannot forge lines of its own.
    /// </summary>
    private static string OneLine(string text)
    {
        if (!text.Any(char.IsControl))
        {
            return text;
        }

        var sb = new System.Text.StringBuilder(text.Length + 16);
        foreach (char c in text)
        {
            sb.Append(c switch
            {
                '\n' => "\\n",
                '\r' => "\\r",
                '\t' => "\\t",
                _ when char.IsControl(c) => $"\\u{(int)c:x4}",
                _ => c.ToString(),
            });
        }

        return sb.ToString();
    }
}

/// <summary>DiskDescriptor.xml is malformed or describes an impossible disk.</summary>
public sealed class DescriptorException(string file, string message, Exception? inner = null)
    : PrlFuseException(file, message, inner);

/// <summary>An image file is not a valid Parallels image (or not a usable raw image).</summary>
public sealed class ImageFormatException(string file, string message, Exception? inner = null)
    : PrlFuseException(file, message, inner);
