namespace PrlFuse.Tests.Support;

/// <summary>The repository the tests were built from: the folder above the test binaries that holds PrlFuse.sln.</summary>
public static class Repository
{
    private static readonly Lazy<string> s_root = new(FindRoot);

    public static string Root => s_root.Value;

    private static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "PrlFuse.sln")))
            {
                return dir.FullName;
            }
        }

        throw new DirectoryNotFoundException("repository root (the folder with PrlFuse.sln) not found above " + AppContext.BaseDirectory);
    }
}
