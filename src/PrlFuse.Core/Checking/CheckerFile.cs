using PrlFuse.Core.IO;

namespace PrlFuse.Core.Checking;

/// <summary>
/// How the checker opens an image: read-only and shared for a check; read-write and exclusive for a repair, so a
/// repair is refused while PrlFuse (or anything else that holds the file's lock) has the image open. The QEMU image
/// locks (<see cref="ImageLock"/>) are taken by <see cref="ImageChecker"/> on the file opened here.
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
            // The exclusive open failed: say who holds the image when its QEMU locks tell.
            if (WhoHolds(path) is { } inUse)
            {
                throw inUse;
            }

            throw new PrlFuseException(path, $"cannot open for repair ({e.Message}); is the disk still mounted?", e);
        }
    }

    private static ImageInUseException? WhoHolds(string path)
    {
        try
        {
            using var probe = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            return ImageLock.FindConflict(probe, ImageLockMode.ReadWrite) is { } conflict
                ? new ImageInUseException(path, conflict, ImageLock.OtherWriterPresent(probe), ImageLockMode.ReadWrite)
                : null;
        }
        catch (IOException)
        {
            return null;
        }
    }
}
