using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.IO;
using PrlFuse.Core.Management;

namespace PrlFuse.Core.Checking;

/// <summary>An .hds file in a bundle folder that neither the descriptor nor its .Backup names.</summary>
public sealed record OrphanImage(string Path, long Bytes);

/// <summary>
/// Image files an interrupted snapshot create, delete or switch can leave in the bundle folder: the descriptor no
/// longer (or not yet) names them. A check reports them; a repair removes the ones that are surely leftovers.
/// </summary>
public static class OrphanImages
{
    /// <summary>
    /// The .hds files in the folder of <paramref name="descriptorPath"/> that neither it nor its .Backup names. Empty
    /// when either cannot be read: what a descriptor names is then unknown, and nothing is called an orphan.
    /// </summary>
    public static IReadOnlyList<OrphanImage> Find(string descriptorPath)
    {
        string folder = Path.GetDirectoryName(Path.GetFullPath(descriptorPath))!;
        var named = new HashSet<string>(StringComparer.Ordinal);

        // A <File> may name the image by a path that no longer holds (a bundle moved from another machine keeps its
        // absolute paths), and readers then take the file of that name beside the descriptor: any file whose name a
        // <File> ends with is named, wherever that path points.
        var namedFileNames = new HashSet<string>(StringComparer.OrdinalIgnoreCase);
        foreach (string xml in new[] { descriptorPath, DescriptorStore.BackupPath(descriptorPath) }.Where(File.Exists))
        {
            try
            {
                // A .Backup with an intent mark is the descriptor a deletion stored before its last step: the images it
                // names and the descriptor does not are the ones that step unlinks, left by a crash before it did.
                var d = DescriptorParser.ParseFile(xml);
                if (xml != descriptorPath && IntentMark.Marked(d).Count > 0)
                {
                    continue;
                }

                foreach (var image in d.Storages.SelectMany(s => s.Images))
                {
                    named.Add(Path.GetFullPath(image.File, folder));
                    namedFileNames.Add(Path.GetFileName(image.File.Replace('\\', '/')));
                }
            }
            catch (PrlFuseException)
            {
                return [];
            }
        }

        if (named.Count == 0)
        {
            return [];
        }

        return [.. new DirectoryInfo(folder).EnumerateFiles("*", SearchOption.TopDirectoryOnly)
            .Where(f => f.Name.EndsWith(".hds", StringComparison.OrdinalIgnoreCase) && !named.Contains(f.FullName) && !namedFileNames.Contains(f.Name))
            .OrderBy(f => f.Name, StringComparer.Ordinal)
            .Select(f => new OrphanImage(f.FullName, f.Length))];
    }

    /// <summary>
    /// Removes each orphan that is a Parallels image and that no process holds (QEMU's image locks); returns what was
    /// removed and, for the others, why not.
    /// </summary>
    public static IReadOnlyList<(OrphanImage Orphan, string? Kept)> Remove(IReadOnlyList<OrphanImage> orphans, DurableFiles? files = null)
    {
        files ??= DurableFiles.Real;
        var results = new List<(OrphanImage, string?)>();
        Span<byte> head = stackalloc byte[64];
        foreach (var orphan in orphans)
        {
            string? kept;
            using (var handle = File.OpenHandle(orphan.Path))
            {
                int n = RandomAccess.Read(handle, head, 0);
                // An empty file is what a crash leaves of an image being created: there is nothing in it to keep.
                kept = n > 0 && !ParallelsHeader.HasMagic(head[..n]) ? "not a Parallels image; left as it is"
                    : ImageLock.FindConflict(handle, ImageLockMode.ReadWrite) is not null ? "in use by another process; left as it is"
                    : null;
            }

            if (kept is null)
            {
                files.Delete(orphan.Path);
                files.SyncFolder(Path.GetDirectoryName(orphan.Path)!);
            }

            results.Add((orphan, kept));
        }

        return results;
    }
}
