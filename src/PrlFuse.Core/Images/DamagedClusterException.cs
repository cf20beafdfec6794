using PrlFuse.Core.IO;

namespace PrlFuse.Core.Images;

/// <summary>
/// A read touched a cluster whose mapping (a Parallels BAT entry, say) is damaged, so where its data is cannot be known: the read fails as an
/// unreadable sector of a disk does. An <see cref="IOException"/> carrying EIO in HResult (as .NET puts a raw errno there on Linux), which the FUSE layer returns as is.
/// </summary>
public sealed class DamagedClusterException : IOException
{
    public DamagedClusterException(string imagePath, long cluster, string problem, string advice = "run 'prlfuse check --repair'")
        : base($"{imagePath}: guest cluster {cluster} cannot be read: {problem}; {advice}", Errno.EIO)
    {
        ImagePath = imagePath;
        Cluster = cluster;
    }

    public string ImagePath { get; }

    /// <summary>The image's guest cluster (its BAT index).</summary>
    public long Cluster { get; }
}
