namespace PrlFuse.Tests.Support;

/// <summary>
/// A fresh folder for one test (or fixture), deleted with everything in it on dispose. Every test that needs scratch
/// space takes one of these: under the system temp folder, or under <c>under</c> (e.g. /dev/shm) when given.
/// </summary>
public sealed class TempFolder : IDisposable
{
    public TempFolder(string prefix = "prlfuse-test", string? under = null)
    {
        Path = under is null
            ? Directory.CreateTempSubdirectory(prefix + "-").FullName
            : Directory.CreateDirectory(System.IO.Path.Combine(under, $"{prefix}-{Guid.NewGuid():N}")).FullName;
    }

    public string Path { get; }

    public string Combine(params string[] parts) => System.IO.Path.Combine([Path, .. parts]);

    /// <summary>A subfolder (created).</summary>
    public string Folder(string name) => Directory.CreateDirectory(Combine(name)).FullName;

    /// <summary>Copies the files of <paramref name="from"/> (not its subfolders) into <paramref name="to"/>, created when missing, replacing files there.</summary>
    public static void CopyFiles(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (string file in Directory.GetFiles(from))
        {
            File.Copy(file, System.IO.Path.Combine(to, System.IO.Path.GetFileName(file)), overwrite: true);
        }
    }

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }
}
