using System.IO.Compression;

namespace PrlFuse.Tests.Support;

/// <summary>The real Parallels Desktop bundles in ../shared/samples, decompressed into a temporary folder.</summary>
public static class Samples
{
    /// <summary>../shared/samples/parallels-desktop beside the repository: one bundle folder per sample.</summary>
    public static string Root
    {
        get
        {
            string root = Path.GetFullPath(Path.Combine(Repository.Root, "..", "shared", "samples", "parallels-desktop"));
            return Directory.Exists(root) ? root : throw new DirectoryNotFoundException($"{root} not found: the samples belong in ../shared/samples beside the repository");
        }
    }

    /// <summary>Copies bundle NAME.hdd into <paramref name="into"/>, gunzipping its images; returns the bundle folder.</summary>
    public static string Extract(string name, string into)
    {
        string source = Path.Combine(Root, name + ".hdd");
        string target = Path.Combine(into, name + ".hdd");
        Directory.CreateDirectory(target);
        foreach (var file in Directory.GetFiles(source))
        {
            string fileName = Path.GetFileName(file);
            if (fileName.EndsWith(".gz", StringComparison.Ordinal))
            {
                using var input = new GZipStream(File.OpenRead(file), CompressionMode.Decompress);
                using var output = File.Create(Path.Combine(target, fileName[..^3]));
                input.CopyTo(output);
            }
            else
            {
                File.Copy(file, Path.Combine(target, fileName));
            }
        }

        return target;
    }
}
