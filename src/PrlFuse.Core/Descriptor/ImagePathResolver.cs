using PrlFuse.Core.IO;

namespace PrlFuse.Core.Descriptor;

/// <summary>Why an image's &lt;File&gt; leads to no file that may be used.</summary>
public enum ImagePathRefusal
{
    /// <summary>Nothing is there (nor, for a stale absolute path, beside the descriptor).</summary>
    Missing,

    /// <summary>A folder, device node, FIFO or socket: never read as an image (a FIFO would block the reader forever).</summary>
    NotRegularFile,

    /// <summary>A relative path (or a symlink in the bundle) that leads out of the bundle folder.</summary>
    OutsideBundle,
}

/// <summary>An image's &lt;File&gt; the resolver refuses: the message names the descriptor, the &lt;File&gt; and why.</summary>
public sealed class ImagePathException(string file, ImagePathRefusal refusal, string message)
    : PrlFuseException(file, message)
{
    public ImagePathRefusal Refusal { get; } = refusal;
}

/// <summary>Where an image's &lt;File&gt; leads, in the descriptor at <paramref name="DescriptorPath"/>.</summary>
/// <param name="Path">The file to use.</param>
/// <param name="DescriptorPath">The descriptor that names it.</param>
/// <param name="Fallback">
/// Set when the absolute path the descriptor names is gone and the file of the same name beside the descriptor is used
/// instead: that, in words.
/// </param>
public sealed record ResolvedImagePath(string Path, string DescriptorPath, string? Fallback)
{
    /// <summary>The fallback as a disk warning naming the descriptor, or null.</summary>
    public DiskWarning? Warning => Fallback is null ? null : new(WarningCodes.StaleAbsolutePath, $"{System.IO.Path.GetFileName(DescriptorPath)}: {Fallback}");
}

/// <summary>
/// The one mapping from a descriptor's &lt;File&gt; to an image file, for every command that opens, checks or repairs
/// a disk, so that what one of them refuses none of them uses. The descriptor is untrusted input: it must not make
/// PrlFuse read, write or serve through a mount a file the user did not mean. So a relative path is taken against the
/// descriptor's folder and must stay inside it after symlinks; an absolute path the descriptor names may lead
/// anywhere, since whoever wrote it chose that file; only regular files are used. A bundle moved from another machine
/// keeps absolute paths that no longer exist: the file of the same name beside the descriptor is used, with a warning.
/// </summary>
public sealed class ImagePathResolver
{
    /// <summary>PATH_MAX: no file has a longer path, so a longer &lt;File&gt; is quoted only in part.</summary>
    private const int LongestPath = 4096;

    private readonly string _descriptorPath;
    private readonly bool _allowOutsideBundle;

    /// <param name="descriptorPath">The DiskDescriptor.xml whose &lt;File&gt; values are resolved (its folder is the bundle).</param>
    /// <param name="allowOutsideBundle">Let relative paths lead out of the bundle folder (--allow-outside-images).</param>
    public ImagePathResolver(string descriptorPath, bool allowOutsideBundle)
    {
        _descriptorPath = descriptorPath;
        _allowOutsideBundle = allowOutsideBundle;
        BundleFolder = Path.GetDirectoryName(descriptorPath) ?? "/";
    }

    public string BundleFolder { get; }

    /// <summary>The file <paramref name="file"/> leads to; throws <see cref="ImagePathException"/> when it must not be used.</summary>
    public ResolvedImagePath Resolve(string file)
    {
        if (!Path.IsPathRooted(file))
        {
            string path = Path.GetFullPath(Path.Combine(BundleFolder, file));
            Check(path, file, inBundle: true);
            return new ResolvedImagePath(path, _descriptorPath, null);
        }

        if (Path.Exists(file))
        {
            Check(file, file, inBundle: false);
            return new ResolvedImagePath(file, _descriptorPath, null);
        }

        string local = Path.Combine(BundleFolder, Path.GetFileName(file));
        if (!Path.Exists(local))
        {
            throw new ImagePathException(_descriptorPath, ImagePathRefusal.Missing, $"image {Quote(file)} does not exist, nor does {Quote(local)}");
        }

        // The name beside the descriptor is not what the descriptor named, so it is held to the bundle rule.
        Check(local, file, inBundle: true);
        return new ResolvedImagePath(local, _descriptorPath, $"image path {Quote(file)} does not exist; using {Path.GetFileName(file)} in the bundle folder");
    }

    /// <summary>The file <paramref name="file"/> leads to, or null when the resolver refuses it (for notes, never for use).</summary>
    public string? TryResolve(string file)
    {
        try
        {
            return Resolve(file).Path;
        }
        catch (ImagePathException)
        {
            return null;
        }
    }

    /// <summary>
    /// A regular file, and inside the bundle folder after symlinks when <paramref name="inBundle"/> applies. A refusal
    /// names the descriptor, where the fix goes, and the &lt;File&gt; as it is written there.
    /// </summary>
    private void Check(string path, string named, bool inBundle)
    {
        string real = PathRules.RealPath(path) ?? throw new ImagePathException(_descriptorPath, ImagePathRefusal.Missing, $"image {Quote(named)} does not exist");
        string kind = PathRules.FileKind(real);
        if (kind != "regular file")
        {
            throw new ImagePathException(_descriptorPath, ImagePathRefusal.NotRegularFile, $"image {Quote(named)} is a {kind}, not a regular file; refused");
        }

        if (!inBundle || _allowOutsideBundle)
        {
            return;
        }

        string bundle = PathRules.RealPath(BundleFolder) ?? BundleFolder;
        string prefix = bundle.EndsWith('/') ? bundle : bundle + "/";
        if (!real.StartsWith(prefix, StringComparison.Ordinal))
        {
            throw new ImagePathException(_descriptorPath, ImagePathRefusal.OutsideBundle, $"image path {Quote(named)} resolves to {real}, outside the bundle folder; refused (only absolute <File> paths may point outside the bundle; give --allow-outside-images to follow it)");
        }
    }

    /// <summary>
    /// A &lt;File&gt; (or a path made of one) for a message. It is untrusted text of any length: one that cannot name a
    /// file is cut, so a hostile descriptor cannot make a refusal cost megabytes.
    /// </summary>
    private static string Quote(string path) =>
        path.Length <= LongestPath ? path : $"{path[..64]}... ({path.Length} characters, longer than any path)";
}
