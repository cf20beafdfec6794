using PrlFuse.Core.Descriptor;
using PrlFuse.Core.IO;
using PrlFuse.Core.Management;
using Microsoft.Win32.SafeHandles;

namespace PrlFuse.Tests.Core.Management;

/// <summary>One effect of a snapshot operation on a bundle's files, with the file's name and its place in the order.</summary>
internal abstract record BundleOp(int Seq, string File);

/// <summary>A write to an image: <see cref="StartSeq"/> when it began, <see cref="BundleOp.Seq"/> when it was in the file.</summary>
internal sealed record ImageWriteOp(int Seq, int StartSeq, string File, long Offset, byte[] Data) : BundleOp(Seq, File);

internal sealed record ImageLengthOp(int Seq, string File, long Length, bool GrowOnly) : BundleOp(Seq, File);

/// <summary>An fsync: it covers the writes completed before <see cref="BundleOp.Seq"/>, once it returned (<see cref="DoneSeq"/>).</summary>
internal sealed record ImageSyncOp(int Seq, string File) : BundleOp(Seq, File)
{
    public int DoneSeq { get; set; } = int.MaxValue;
}

/// <summary>A descriptor stored (atomic and durable when it returned): its text.</summary>
internal sealed record DescriptorOp(int Seq, string Xml) : BundleOp(Seq, "DiskDescriptor.xml");

/// <summary>A new image created and made durable with its name: its content then.</summary>
internal sealed record CreateOp(int Seq, string File, byte[] Content) : BundleOp(Seq, File);

internal sealed record UnlinkOp(int Seq, string File) : BundleOp(Seq, File);

/// <summary>
/// The real effects, recorded in order with file names: every image write, length change and fsync, every descriptor
/// stored, image created and unlinked. <see cref="Replay"/> builds what a crash at any point leaves.
/// </summary>
internal sealed class RecordingBundleFiles : BundleFiles
{
    private readonly List<BundleOp> _ops = [];
    private int _seq;

    public List<BundleOp> Ops
    {
        get
        {
            lock (_ops)
            {
                return [.. _ops.OrderBy(o => o.Seq)];
            }
        }
    }

    public int Next() => Interlocked.Increment(ref _seq);

    private void Add(BundleOp op)
    {
        lock (_ops)
        {
            _ops.Add(op);
        }
    }

    public override ImageFile OpenImage(string path, bool writable)
    {
        var inner = PositionalImageFile.Open(path, writable);
        return writable ? new Recorded(inner, this) : inner;
    }

    public override void StoreDescriptor(string descriptorPath, DiskDescriptor descriptor)
    {
        base.StoreDescriptor(descriptorPath, descriptor);
        Add(new DescriptorOp(Next(), DescriptorWriter.Write(descriptor)));
    }

    public override void CreateExpandable(string path, long sizeBytes, long clusterBytes)
    {
        base.CreateExpandable(path, sizeBytes, clusterBytes);
        Add(new CreateOp(Next(), Path.GetFileName(path), File.ReadAllBytes(path)));
    }

    public override void Unlink(string path)
    {
        base.Unlink(path);
        Add(new UnlinkOp(Next(), Path.GetFileName(path)));
    }

    /// <summary>
    /// Writes into <paramref name="crash"/> (a copy of the bundle as it was before the operation) what a crash at
    /// <paramref name="point"/> leaves: the last descriptor stored before it, images created and unlinked before it, and
    /// per image every write an fsync that returned before the point covered, and of the later writes that began
    /// before the point, those <paramref name="keep"/> chooses (the page cache may or may not have written them).
    /// </summary>
    public static void Replay(List<BundleOp> ops, int point, string original, string crash, Func<bool> keep)
    {
        var stored = ops.OfType<DescriptorOp>().LastOrDefault(o => o.Seq < point);
        if (stored is not null)
        {
            File.WriteAllText(Path.Combine(crash, "DiskDescriptor.xml"), stored.Xml);
        }

        foreach (var group in ops.Where(o => o is not DescriptorOp).GroupBy(o => o.File))
        {
            string path = Path.Combine(crash, group.Key);
            var created = group.OfType<CreateOp>().FirstOrDefault();
            if (created is not null)
            {
                if (created.Seq >= point)
                {
                    continue;
                }

                File.WriteAllBytes(path, created.Content);
            }
            else
            {
                File.Copy(Path.Combine(original, group.Key), path, overwrite: true);
            }

            if (group.OfType<UnlinkOp>().Any(u => u.Seq < point))
            {
                File.Delete(path);
                continue;
            }

            int durable = group.OfType<ImageSyncOp>().Where(s => s.DoneSeq < point).Select(s => s.Seq).DefaultIfEmpty(0).Max();
            using var f = new FileStream(path, FileMode.Open, FileAccess.ReadWrite);
            foreach (var op in group)
            {
                int started = op is ImageWriteOp w0 ? w0.StartSeq : op.Seq;
                if (!(op.Seq < durable || (started < point && keep())))
                {
                    continue;
                }

                switch (op)
                {
                    case ImageWriteOp w:
                        f.Position = w.Offset;
                        f.Write(w.Data);
                        break;
                    case ImageLengthOp l when !l.GrowOnly || l.Length > f.Length:
                        f.SetLength(l.Length);
                        break;
                }
            }
        }
    }

    private sealed class Recorded(ImageFile inner, RecordingBundleFiles log) : ImageFile(inner.Path, inner.Writable)
    {
        private readonly string _name = System.IO.Path.GetFileName(inner.Path);

        public override long Length => inner.Length;

        public override SafeFileHandle? Handle => inner.Handle;

        public override int Read(Span<byte> buffer, long offset) => inner.Read(buffer, offset);

        public override void Write(ReadOnlySpan<byte> buffer, long offset)
        {
            int start = log.Next();
            inner.Write(buffer, offset);
            log.Add(new ImageWriteOp(log.Next(), start, _name, offset, buffer.ToArray()));
        }

        public override void SetLength(long length)
        {
            inner.SetLength(length);
            log.Add(new ImageLengthOp(log.Next(), _name, length, GrowOnly: false));
        }

        public override void Allocate(long from, long to)
        {
            inner.Allocate(from, to);
            log.Add(new ImageLengthOp(log.Next(), _name, to, GrowOnly: true));
        }

        public override void Flush(bool dataOnly)
        {
            var op = new ImageSyncOp(log.Next(), _name);
            inner.Flush(dataOnly);
            op.DoneSeq = log.Next();
            log.Add(op);
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                inner.Dispose();
            }
        }
    }
}
