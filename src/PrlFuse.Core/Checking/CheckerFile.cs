using PrlFuse.Core.IO;

namespace PrlFuse.Core.Checking;

/// <summary>
/// How the checker opens an image: read-only and shared for a check; read-write and exclusive for a repair, so a
/// repair is refused while PrlFuse (or anything else that holds the file's lock) has the image open.
/// </summary>
internal static class CheckerFile
{
    public static ImageFile Open(string path, bool writable)
    {
        try
        {
            return PositionalImageFile.Open(path, writable, exclusive: writable);
        }
        catch (IOException e) when (writable && e is not FileNotFoundException and not DirectoryNotFoundException)
        {
            throw new PrlFuseException(path, $"cannot open for repair ({e.Message}); is the disk still mounted?", e);
        }
    }
}
