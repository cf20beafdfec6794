using PrlFuse.Core.IO;

namespace PrlFuse.Core.Engine;

/// <summary>
/// Where a run of guest bytes lives: <see cref="Length"/> bytes of <see cref="File"/> from <see cref="HostOffset"/>,
/// or zeros when <see cref="File"/> is null (unallocated in every layer, or past the end of the host file).
/// </summary>
public readonly record struct HostPiece(ImageFile? File, long HostOffset, int Length)
{
    public bool IsZero => File is null;
}
