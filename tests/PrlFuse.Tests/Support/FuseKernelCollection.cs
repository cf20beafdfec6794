namespace PrlFuse.Tests.Support;

/// <summary>The tests that mount through the kernel (FUSE, loop devices) run one at a time.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class FuseKernelCollection
{
    public const string Name = "FUSE kernel mounts";
}
