using PrlFuse.Core.IO;

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

/// <summary>
/// The disk is encrypted (its descriptor's &lt;Encryption&gt; names an engine and holds key data): its images hold
/// ciphertext, which must never be served as the disk's content.
/// </summary>
public sealed class EncryptedDiskException(string file, string message)
    : PrlFuseException(file, message);

/// <summary>An image file is not a valid Parallels image (or not a usable raw image).</summary>
public sealed class ImageFormatException(string file, string message, Exception? inner = null)
    : PrlFuseException(file, message, inner);

/// <summary>
/// An image file is in use by another process (QEMU, another prlfuse, or another open in this process) whose image locks
/// conflict with the ones asked for. <see cref="PrlFuseException.File"/> is the image's full path, so a caller can
/// find out whether the holder is one of its own mounts.
/// </summary>
public sealed class ImageInUseException : PrlFuseException
{
    public ImageInUseException(string imagePath, LockConflict conflict, bool heldByWriter, ImageLockMode requested)
        : base(imagePath, $"image is in use: {ImageLock.DescribeHolder(conflict, heldByWriter)}; {ImageLock.Advice(conflict, heldByWriter, requested)}")
    {
        Conflict = conflict;
        HeldByWriter = heldByWriter;
        RequestedMode = requested;
    }

    /// <summary>The image file (full path as opened).</summary>
    public string ImagePath => File!;

    /// <summary>The first lock rule broken, in QEMU's order.</summary>
    public LockConflict Conflict { get; }

    /// <summary>Another process holds the write permission (lock byte 101): a QEMU or prlfuse writer.</summary>
    public bool HeldByWriter { get; }

    /// <summary>The mode that was refused.</summary>
    public ImageLockMode RequestedMode { get; }

    /// <summary>Who is in the way, in words, without the advice.</summary>
    public string Holder => ImageLock.DescribeHolder(Conflict, HeldByWriter);

    /// <summary>What QEMU says for the same conflict, e.g. <c>Failed to get "write" lock</c>.</summary>
    public string QemuMessage => Conflict.QemuMessage;
}
