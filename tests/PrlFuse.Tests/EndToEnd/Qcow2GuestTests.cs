using System.Security.Cryptography;
using PrlFuse.Tests.Support;
using static PrlFuse.Tests.Core.Formats.Qcow2.Qcow2Oracle;

namespace PrlFuse.Tests.EndToEnd;

/// <summary>
/// A guest ext4 in a 3-level qcow2 chain (a compressed base, then overlays holding only what changed, made by qemu-img
/// convert -B from <see cref="GuestChain"/>'s versions): mounted read-write with `prlfuse mount`, loop-mounted, changed
/// by the kernel's ext4; afterwards every level's files have their checksums through our mount, QEMU's view of every
/// level equals ours, qemu-img check is clean on every image and e2fsck finds the filesystem clean.
/// </summary>
[Collection(FuseKernelCollection.Name)]
[Trait("Needs", "Kernel")]
[Trait("Needs", "Qemu")]
[Trait("Needs", "Installed")]
public sealed class Qcow2GuestTests
{
    [Fact]
    public void GuestExt4InAQcow2ChainTakesChangesAndEveryLevelKeepsItsFiles()
    {
        using var temp = new TempFolder();
        var chain = GuestChain.Build(temp.Folder("guest"));
        string q = temp.Folder("qcow2");
        Img(q, "convert", "-c", "-f", "raw", "-O", "qcow2", chain.RawVersions[0], "base.qcow2");
        Img(q, "convert", "-f", "raw", "-O", "qcow2", "-B", "base.qcow2", "-F", "qcow2", chain.RawVersions[1], "mid.qcow2");
        Img(q, "convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=16k", "-B", "mid.qcow2", "-F", "qcow2", chain.RawVersions[2], "top.qcow2");
        string[] images = ["base.qcow2", "mid.qcow2", "top.qcow2"];

        var random = new Random(5);
        var changed = new Dictionary<string, string>(chain.Files[2], StringComparer.Ordinal);
        string ours = temp.Combine("ours.raw");
        using (var mount = new PrlFuseMount(Path.Combine(q, "top.qcow2"), temp.Combine("mnt")))
        {
            Assert.Equal(-1, Hashing.FirstDifference(chain.RawVersions[2], mount.Current));
            using (var guest = mount.Loop(mount.Current, temp.Combine("guest-rw"), readOnly: false))
            {
                void Put(string path, byte[] bytes)
                {
                    File.WriteAllBytes(guest.At + path, bytes);
                    changed[path] = Convert.ToHexStringLower(SHA256.HashData(bytes));
                }

                Put("/hello.txt", "hello from the qcow2 top\n"u8.ToArray());
                Put("/data/written-through-qcow2.bin", RandomBytes(random, 3_000_000));
                Put("/data/blob2.bin", RandomBytes(random, 200_001));
                Directory.CreateDirectory(guest.At + "/deep/er");
                Put("/deep/er/small.txt", "a small file\n"u8.ToArray());
                File.Delete(guest.At + "/data/blob0.bin");
                changed.Remove("/data/blob0.bin");
                // A few bytes inside a file only the base holds: the top copies the rest of its cluster from below.
                byte[] blob = File.ReadAllBytes(guest.At + "/data/blob5.bin");
                RandomBytes(random, 100).CopyTo(blob, 70_001);
                using (var f = new FileStream(guest.At + "/data/blob5.bin", FileMode.Open, FileAccess.Write))
                {
                    f.Position = 70_001;
                    f.Write(blob, 70_001, 100);
                }

                changed["/data/blob5.bin"] = Convert.ToHexStringLower(SHA256.HashData(blob));
                File.AppendAllText(guest.At + "/etc/hosts", "10.0.0.2 qcow2-guest\n");
                changed["/etc/hosts"] = Hashing.Sha256File(guest.At + "/etc/hosts");
                ProcessRunner.Run("sync", []);
            }

            File.Copy(mount.Current, ours);
            Assert.Equal(0, mount.Unmount().ExitCode);
        }

        var fsck = ProcessRunner.Run("e2fsck", ["-fn", ours], check: false);
        Assert.True(fsck.ExitCode == 0, $"e2fsck: exit {fsck.ExitCode}\n{fsck.Stdout}{fsck.Stderr}");

        // QEMU's view of each level: the top equals what the mount showed, the levels below are untouched.
        string[] expectedRaw = [chain.RawVersions[0], chain.RawVersions[1], ours];
        for (int level = 0; level < 3; level++)
        {
            Core.Formats.Qcow2.Qcow2WriteTests.AssertQemuCheckClean(q, images[level]);
            var compare = ProcessRunner.Run("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", expectedRaw[level], images[level]], check: false, workingDirectory: q);
            Assert.True(compare.ExitCode == 0, $"{images[level]}: qemu-img compare exit {compare.ExitCode}\n{compare.Stdout}{compare.Stderr}");
        }

        // Our view of each level, mounted read-only on its own: its files and their checksums.
        Dictionary<string, string>[] expectedFiles = [chain.Files[0], chain.Files[1], changed];
        for (int level = 0; level < 3; level++)
        {
            using var mount = new PrlFuseMount(Path.Combine(q, images[level]), temp.Combine($"mnt{level}"), "--read-only");
            using (var loop = mount.Loop(mount.Current, temp.Combine($"guest{level}"), readOnly: true))
            {
                Assert.Equal(expectedFiles[level].OrderBy(k => k.Key), Hashing.GuestFileSums(loop.At).OrderBy(k => k.Key));
            }

            Assert.Equal(0, mount.Unmount().ExitCode);
        }
    }

    private static byte[] RandomBytes(Random random, int length)
    {
        byte[] bytes = new byte[length];
        random.NextBytes(bytes);
        return bytes;
    }
}
