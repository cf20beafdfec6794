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
