using System.Collections.Immutable;
using System.Globalization;
using System.Xml.Linq;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Core.IO;

namespace PrlFuse.Core.Management;

/// <summary>
/// Makes a new disk bundle as Parallels Desktop writes one: a folder <c>NAME.hdd</c> holding DiskDescriptor.xml (its
/// elements in Parallels' order, with the predefined top GUID), the zero-length file <c>NAME.hdd</c>, and one image
/// <c>NAME.hdd.0.{GUID}.hds</c>. The bundle is built in a temporary folder beside the target and renamed into place
/// when complete, so a crash leaves no disk or the whole new one (and at most a hidden left-over folder).
/// </summary>
public static class BundleCreator
{
    /// <summary>The prefix of the temporary folder a creation builds in (beside the target, hidden).</summary>
    public const string TemporaryPrefix = ".prlfuse-create-";

    /// <summary>The bundle's image file name for storage <paramref name="storage"/> and image <paramref name="guid"/>, as Parallels names them.</summary>
    public static string ImageFileName(string bundleName, int storage, Guid guid) =>
        string.Create(CultureInfo.InvariantCulture, $"{bundleName}.{storage}.{DiskDescriptor.FormatGuid(guid)}.hds");

    /// <summary>Creates the bundle <paramref name="bundlePath"/>, which must not exist; returns its full path.</summary>
    public static string Create(string bundlePath, long sizeBytes, bool plain, long clusterBytes, DurableFiles? files = null)
    {
        files ??= DurableFiles.Real;
        string full = Path.GetFullPath(bundlePath.TrimEnd('/'));
        string name = Path.GetFileName(full);
        string parent = Path.GetDirectoryName(full) ?? "/";
        if (name.Length == 0)
        {
            throw new PrlFuseException(bundlePath, "is not a path a bundle can be created at; give a new folder name such as disk.hdd");
        }

        if (Path.Exists(full))
        {
            throw new PrlFuseException(full, "already exists; prlfuse create never overwrites: give a new name or remove it first");
        }

        if (!Directory.Exists(parent))
        {
            throw new PrlFuseException(parent, "no such folder to create the bundle in");
        }

        if (ParallelsImageCreator.ClusterSizeProblem(clusterBytes) is { } clusterProblem)
        {
            throw new PrlFuseException(null, clusterProblem);
        }

        if (ParallelsImageCreator.SizeProblem(sizeBytes, clusterBytes) is { } sizeProblem)
        {
            throw new PrlFuseException(null, sizeProblem);
        }

        string temporary = Path.Combine(parent, TemporaryPrefix + name + "-" + Guid.NewGuid().ToString("N")[..8]);
        try
        {
            files.CreateFolder(temporary);
            var top = DiskDescriptor.PredefinedTopGuid;
            string imageName = ImageFileName(name, 0, top);
            string image = Path.Combine(temporary, imageName);
            if (plain)
            {
                ParallelsImageCreator.CreatePlain(image, sizeBytes, files, syncFolder: false);
            }
            else
            {
                ParallelsImageCreator.CreateExpandable(image, sizeBytes, clusterBytes, files, syncFolder: false);
            }

            // Parallels Desktop keeps an empty file of the bundle's own name in it; some of its tools look for it.
            files.WriteNewFile(Path.Combine(temporary, name), []);
            var descriptor = NewDescriptor(Path.GetFileNameWithoutExtension(name), sizeBytes / 512, clusterBytes / 512, plain ? ImageType.Plain : ImageType.Compressed, imageName);
            DescriptorStore.Write(Path.Combine(temporary, DescriptorStore.FileName), descriptor, files);
            files.SyncFolder(temporary);
            files.RenameFolder(temporary, full);
            files.SyncFolder(parent);
            return full;
        }
        catch
        {
            TryRemove(temporary);
            throw;
        }
    }

    /// <summary>
    /// The descriptor Parallels Desktop writes for a new one-image disk: the spec's elements plus the newer ones it
    /// always adds (sector sizes, an empty Encryption, the disk's UID and Name, the Miscellaneous counters), in its order.
    /// </summary>
    public static DiskDescriptor NewDescriptor(string diskName, long sectors, long clusterSectors, ImageType type, string imageFile)
    {
        static ExtraElement Extra(XElement e, string after) => new(e.ToString(SaveOptions.DisableFormatting), after);
        static XElement Zero(string name) => new(name, "0");
        var parameterExtras = ImmutableArray.Create(
            Extra(new XElement("PhysicalSectorSize", "4096"), "Cylinders"),
            Extra(new XElement("LogicSectorSize", "512"), "Cylinders"),
            Extra(new XElement("Encryption", new XElement("Engine", DiskDescriptor.FormatGuid(Guid.Empty)), new XElement("Data", string.Empty), new XElement("Salt", string.Empty)), "Padding"),
            Extra(new XElement("UID", DiskDescriptor.FormatGuid(Guid.NewGuid())), "Padding"),
            Extra(new XElement("Name", diskName), "Padding"),
            Extra(
                new XElement(
                    "Miscellaneous",
                    new XElement("CompatLevel", "level2"),
                    Zero("SuspendState"),
                    Zero("ChangeState"),
                    Zero("DupBlocksCnt"),
                    Zero("CorruptBlocksCnt"),
                    Zero("UnrefBlocksCnt"),
                    Zero("OutOfDiskBlocksCnt"),
                    Zero("BatOverlapBlocksCnt"),
                    Zero("BlocksCnt"),
                    Zero("TruncatedBlocksCnt"),
                    Zero("ReferencedBlocksCnt"),
                    Zero("Bootable"),
                    Zero("ShutdownState")),
                "Padding"));
        var top = DiskDescriptor.PredefinedTopGuid;
        return new DiskDescriptor(
            DescriptorParser.RootName,
            "1.0",
            new DiskParameters(sectors, ParallelsImageCreator.CylindersFor(sectors), ParallelsImageCreator.Heads, ParallelsImageCreator.SectorsPerTrack, 0, parameterExtras),
            [new StorageDescriptor(0, sectors, clusterSectors, [new ImageDescriptor(top, type, imageFile, [])], [])],
            new SnapshotsDescriptor(null, [new ShotDescriptor(top, Guid.Empty, [])], []),
            [],
            []);
    }

    private static void TryRemove(string folder)
    {
        try
        {
            if (Directory.Exists(folder))
            {
                Directory.Delete(folder, recursive: true);
            }
        }
        catch (IOException)
        {
            // A left-over hidden folder is harmless: it is never a disk.
        }
        catch (UnauthorizedAccessException)
        {
        }
    }
}
