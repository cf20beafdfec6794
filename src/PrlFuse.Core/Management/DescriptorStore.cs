using System.Text;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.IO;

namespace PrlFuse.Core.Management;

/// <summary>
/// Reads and rewrites a bundle's DiskDescriptor.xml the way Parallels Desktop does: the previous version is kept as
/// <c>DiskDescriptor.xml.Backup</c>, and the new one is written to a temporary file, fsync'd, renamed over the old one,
/// and the folder fsync'd, so a crash leaves either the old or the new descriptor, never a torn one. Readers fall back
/// to the backup (with a warning) when the descriptor is missing or unreadable.
/// </summary>
public static class DescriptorStore
{
    public const string FileName = "DiskDescriptor.xml";

    public const string BackupSuffix = ".Backup";

    /// <summary>Where a rewrite puts the new text before it is renamed into place.</summary>
    public const string TemporarySuffix = ".tmp";

    public static string BackupPath(string descriptorPath) => descriptorPath + BackupSuffix;

    /// <summary>
    /// Parses <paramref name="descriptorPath"/>; when it is missing or unreadable and a <c>.Backup</c> beside it
    /// parses, that one, with a <paramref name="warning"/> saying so. An encrypted disk is refused, never taken from
    /// the backup. Throws the descriptor's own error when neither can be read.
    /// </summary>
    public static DiskDescriptor Load(string descriptorPath, out DiskWarning? warning)
    {
        warning = null;
        try
        {
            return DescriptorParser.ParseFile(descriptorPath);
        }
        catch (DescriptorException e)
        {
            string backup = BackupPath(descriptorPath);
            if (!File.Exists(backup))
            {
                throw;
            }

            if (TryParse(backup) is not { } previous)
            {
                throw;
            }

            warning = new DiskWarning(
                WarningCodes.DescriptorFromBackup,
                $"{descriptorPath}: {e.Problem}; read its previous version {Path.GetFileName(backup)} instead (the newest changes to the disk's snapshots may be missing)");
            return previous;
        }
    }

    private static DiskDescriptor? TryParse(string path)
    {
        try
        {
            return DescriptorParser.ParseFile(path);
        }
        catch (DescriptorException)
        {
            return null;
        }
    }

    /// <summary>True when the bundle folder has a descriptor or, failing that, its backup.</summary>
    public static bool HasDescriptor(string folder)
    {
        string xml = Path.Combine(folder, FileName);
        return File.Exists(xml) || File.Exists(BackupPath(xml));
    }

    /// <summary>Rewrites the descriptor with <paramref name="descriptor"/> (unknown elements kept), crash-safely.</summary>
    public static void Write(string descriptorPath, DiskDescriptor descriptor, DurableFiles? files = null) =>
        WriteText(descriptorPath, DescriptorWriter.Write(descriptor), files);

    /// <summary>
    /// Replaces the descriptor with <paramref name="xml"/>: the current version (when it parses) becomes the backup,
    /// then the new text goes in through a temporary file, fsync, rename and folder fsync.
    /// </summary>
    public static void WriteText(string descriptorPath, string xml, DurableFiles? files = null)
    {
        files ??= DurableFiles.Real;
        string folder = Path.GetDirectoryName(Path.GetFullPath(descriptorPath)) ?? "/";
        if (CurrentIfValid(descriptorPath) is { } current)
        {
            // A backup that is itself torn would be worse than none: it too goes in through a temporary file.
            string backup = BackupPath(descriptorPath);
            ReplaceDurably(files, backup, current);
            files.SyncFolder(folder);
        }

        ReplaceDurably(files, descriptorPath, Encoding.UTF8.GetBytes(xml));
        files.SyncFolder(folder);
    }

    private static void ReplaceDurably(DurableFiles files, string path, byte[] content)
    {
        string temporary = path + TemporarySuffix;

        // A left-over from an interrupted rewrite: never part of the disk.
        files.Delete(temporary);
        files.WriteNewFile(temporary, content);
        files.Rename(temporary, path);
    }

    /// <summary>The bytes of the current descriptor when it parses; null when it is missing or broken (the backup then stays as it is).</summary>
    private static byte[]? CurrentIfValid(string descriptorPath)
    {
        if (!File.Exists(descriptorPath))
        {
            return null;
        }

        byte[] bytes = File.ReadAllBytes(descriptorPath);
        try
        {
            using var stream = new MemoryStream(bytes, writable: false);
            DescriptorParser.Parse(stream, descriptorPath);
            return bytes;
        }
        catch (DescriptorException)
        {
            return null;
        }
    }
}
