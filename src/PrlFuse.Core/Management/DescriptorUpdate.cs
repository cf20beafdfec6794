using PrlFuse.Core.Descriptor;

namespace PrlFuse.Core.Management;

/// <summary>TEMPORARY until DescriptorStore (branch mgmt-create) is merged: the one place resize rewrites the descriptor.</summary>
internal static class DescriptorUpdate
{
    public static void Write(string descriptorPath, DiskDescriptor descriptor) =>
        File.WriteAllText(descriptorPath, DescriptorWriter.Write(descriptor));
}
