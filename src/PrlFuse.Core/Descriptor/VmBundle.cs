using System.Xml.Linq;
using PrlFuse.Core.Management;

namespace PrlFuse.Core.Descriptor;

/// <summary>One hard disk image a VM's config.pvs lists.</summary>
/// <param name="Number">Its number for --disk: counted from 0 over the image hard disks, in config.pvs order.</param>
/// <param name="Name">What Parallels shows for it (UserFriendlyName), or the file name.</param>
/// <param name="ConfiguredPath">The path as config.pvs has it (SystemName).</param>
/// <param name="Path">Where the disk is (made absolute, a stale absolute path replaced by the VM folder's file of the same name); null when it is nowhere.</param>
/// <param name="Enabled">False when the VM has the disk switched off (it is still readable).</param>
public sealed record VmDisk(int Number, string Name, string ConfiguredPath, string? Path, bool Enabled);

/// <summary>
/// A Parallels VM bundle (NAME.pvm, NAME.macvm): a folder whose config.pvs lists the VM's hard disks. Accepted
/// wherever a disk is: with one disk it stands for that disk; with several one is chosen by number.
/// </summary>
public static class VmBundle
{
    public const string ConfigFileName = "config.pvs";

    /// <summary>Real configs are tens of KiB; anything this large is not one.</summary>
    public const long MaxConfigBytes = 4 << 20;

    private const string RootName = "ParallelsVirtualMachine";

    /// <summary>EmulatedType of a disk backed by an image file (others are host devices: a real disk, Boot Camp).</summary>
    private const string ImageFileEmulation = "1";

    /// <summary>True for a folder that is a VM bundle, not a disk bundle: a config.pvs or the VM suffix, and no descriptor.</summary>
    public static bool IsVmBundle(string folder)
    {
        if (!Directory.Exists(folder) || File.Exists(System.IO.Path.Combine(folder, DescriptorStore.FileName)))
        {
            return false;
        }

        string name = System.IO.Path.GetFileName(System.IO.Path.TrimEndingDirectorySeparator(folder));
        return File.Exists(System.IO.Path.Combine(folder, ConfigFileName))
            || name.EndsWith(".pvm", StringComparison.OrdinalIgnoreCase)
            || name.EndsWith(".macvm", StringComparison.OrdinalIgnoreCase);
    }

    /// <summary>The image hard disks config.pvs lists, in its order. Throws <see cref="PrlFuseException"/> when it cannot be read.</summary>
    public static IReadOnlyList<VmDisk> ReadDisks(string folder)
    {
        folder = System.IO.Path.GetFullPath(folder);
        string config = System.IO.Path.Combine(folder, ConfigFileName);
        var info = new FileInfo(config);
        if (!info.Exists)
        {
            throw new PrlFuseException(folder, $"VM bundle has no {ConfigFileName}; give one of its disks (NAME.hdd) instead");
        }

        if (info.Length > MaxConfigBytes)
        {
            throw new PrlFuseException(config, $"is {info.Length} bytes, more than the {MaxConfigBytes} a {ConfigFileName} can be");
        }

        XDocument document;
        using (var stream = File.OpenRead(config))
        {
            document = DescriptorParser.LoadHardened(stream, config, $"a {ConfigFileName}", MaxConfigBytes);
        }

        var root = document.Root;
        if (root?.Name.LocalName != RootName)
        {
            throw new PrlFuseException(config, $"root element is <{root?.Name.LocalName}>, not <{RootName}>: not a Parallels VM config");
        }

        var hdds = root.Elements("Hardware").Elements("Hdd")
            .Where(h => (Text(h, "EmulatedType") ?? ImageFileEmulation) == ImageFileEmulation);
        var disks = new List<VmDisk>();
        foreach (var hdd in hdds)
        {
            string configured = Text(hdd, "SystemName") is { Length: > 0 } system ? system : Text(hdd, "UserFriendlyName") ?? "";
            string name = Text(hdd, "UserFriendlyName") is { Length: > 0 } friendly ? friendly : System.IO.Path.GetFileName(configured);
            disks.Add(new VmDisk(disks.Count, name, configured, Locate(folder, configured), Text(hdd, "Enabled") != "0"));
        }

        return disks;
    }

    /// <summary>
    /// The path of the disk to use: disk <paramref name="number"/>, or the only one when null. Throws
    /// <see cref="PrlFuseException"/> (one line listing the disks) when there is no such disk, several and no
    /// number, or the disk is missing.
    /// </summary>
    public static string SelectDisk(string folder, int? number)
    {
        folder = System.IO.Path.GetFullPath(folder);
        var disks = ReadDisks(folder);
        if (disks.Count == 0)
        {
            throw new PrlFuseException(folder, $"VM bundle's {ConfigFileName} lists no hard disk image");
        }

        VmDisk disk;
        if (number is int n)
        {
            disk = n >= 0 && n < disks.Count ? disks[n] : throw new PrlFuseException(folder, $"VM bundle has no disk {n}; its disks: {List(disks)}");
        }
        else if (disks.Count == 1)
        {
            disk = disks[0];
        }
        else
        {
            throw new PrlFuseException(folder, $"VM bundle has {disks.Count} disks: {List(disks)}; choose one with --disk N");
        }

        return disk.Path ?? throw new PrlFuseException(folder, $"VM bundle's disk {disk.Number} ({disk.ConfiguredPath}) is missing: neither that path nor {System.IO.Path.GetFileName(disk.ConfiguredPath)} in the VM folder exists");
    }

    /// <summary>The disks as one line: "0 NAME (PATH), 1 ...".</summary>
    public static string List(IEnumerable<VmDisk> disks) =>
        string.Join(", ", disks.Select(d => $"{d.Number} {d.Name} ({d.Path ?? d.ConfiguredPath + ", missing"})"));

    private static string? Text(XElement parent, string name) => parent.Element(name)?.Value.Trim();

    /// <summary>
    /// Relative paths are the VM folder's. A moved VM keeps its old absolute paths, so one that does not exist (or a
    /// relative one leading out of the folder) is looked for in the folder under its file name.
    /// </summary>
    private static string? Locate(string folder, string configured)
    {
        if (configured.Length == 0 || configured.Contains('\0', StringComparison.Ordinal))
        {
            return null;
        }

        string full = System.IO.Path.GetFullPath(configured, folder);
        bool inside = full.StartsWith(folder + System.IO.Path.DirectorySeparatorChar, StringComparison.Ordinal);
        if ((inside || System.IO.Path.IsPathRooted(configured)) && Exists(full))
        {
            return full;
        }

        string fileName = System.IO.Path.GetFileName(System.IO.Path.TrimEndingDirectorySeparator(configured));
        if (fileName is "" or "." or "..")
        {
            return null;
        }

        string local = System.IO.Path.Combine(folder, fileName);
        return Exists(local) ? local : null;
    }

    private static bool Exists(string path) => Directory.Exists(path) || File.Exists(path);
}
