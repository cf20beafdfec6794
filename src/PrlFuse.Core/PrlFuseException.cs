namespace PrlFuse.Core;

/// <summary>
/// A problem with the user's input (a descriptor, an image, a path) that the tool reports as one line:
/// what is wrong, in which file, and where useful what to do. Never a bug in PrlFuse itself.
/// </summary>
public class PrlFuseException : Exception
{
    public PrlFuseException(string? file, string message, Exception? inner = null)
        : base(file is null ? message : $"{file}: {message}", inner)
    {
        File = file;
        Problem = message;
    }

    /// <summary>The file the problem is in, when there is one.</summary>
    public string? File { get; }

    /// <summary>The problem without the file name.</summary>
    public string Problem { get; }
}

/// <summary>DiskDescriptor.xml is malformed or describes an impossible disk.</summary>
public sealed class DescriptorException(string file, string message, Exception? inner = null)
    : PrlFuseException(file, message, inner);

/// <summary>An image file is not a valid Parallels image (or not a usable raw image).</summary>
public sealed class ImageFormatException(string file, string message, Exception? inner = null)
    : PrlFuseException(file, message, inner);
