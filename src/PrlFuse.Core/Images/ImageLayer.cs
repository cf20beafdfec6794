using PrlFuse.Core.IO;

namespace PrlFuse.Core.Images;

public enum ImageKind
{
    /// <summary>A raw file ("Plain" in the descriptor).</summary>
    Plain,

    /// <summary>A Parallels expandable image ("Compressed" in the descriptor).</summary>
    Expandable,

    /// <summary>A qcow2 image (versions 2 and 3).</summary>
    Qcow2,

    /// <summary>A QED image.</summary>
    Qed,
}

/// <summary>
/// One image file of a snapshot chain, seen as a guest address space in which some ranges are allocated.
/// A reader of the layer knows nothing of the layers below it: the engine asks each layer in turn (see StorageChain).
/// Only the writable top is opened over its parent, for writing (<see cref="OpenWriter"/>). The layer owns its
/// <see cref="ImageFile"/> and its <see cref="Writer"/>.
/// </summary>
public abstract class ImageLayer : IDisposable
{
    private readonly List<DiskWarning> _warnings = [];
    private readonly bool _ownsFiles;

    protected ImageLayer(ImageFile file)
        : this(file, file)
    {
    }

    /// <summary>A layer whose guest data lives in <paramref name="dataFile"/> (an external data file) and its metadata in <paramref name="file"/>.</summary>
    protected ImageLayer(ImageFile file, ImageFile dataFile)
        : this(file, dataFile, ownsFiles: true)
    {
    }

    /// <summary>
    /// A layer over files another layer owns (<paramref name="ownsFiles"/> false): a second view of one image, such as
    /// a qcow2 internal snapshot, shares the image's handle (and so its locks) and never closes it.
    /// </summary>
    protected ImageLayer(ImageFile file, ImageFile dataFile, bool ownsFiles)
    {
        File = file;
        DataFile = dataFile;
        _ownsFiles = ownsFiles;
    }

    /// <summary>The image file: its header and tables.</summary>
    public ImageFile File { get; }

    /// <summary>
    /// The file the host offsets of <see cref="TryMap"/> are in: <see cref="File"/>, or a second file the layer owns
    /// (a qcow2 image's external data file).
    /// </summary>
    public ImageFile DataFile { get; }

    public string Path => File.Path;

    public abstract ImageKind Kind { get; }

    /// <summary>Guest bytes this image describes.</summary>
    public abstract long VirtualSize { get; }

    /// <summary>Allocation granularity: the header's cluster size, or 1 MiB for reporting a raw file.</summary>
    public abstract long ClusterBytes { get; }

    /// <summary>Slot of this image in the disk's block cache keys; set once by the disk that opens it.</summary>
    public int CacheId { get; internal set; }

    /// <summary>True when no write can change this image's content, so cached blocks never go stale.</summary>
    public virtual bool IsImmutable => !File.Writable;

    /// <summary>The warnings' messages.</summary>
    public IReadOnlyList<string> Warnings => [.. _warnings.Select(w => w.Message)];

    /// <summary>The warnings with their codes.</summary>
    public IReadOnlyList<DiskWarning> DiskWarnings => _warnings;

    /// <summary>
    /// Opened with force-share while another process holds the image's write lock: what is read may change or be
    /// inconsistent, and an in_use of "Ynot" belongs to that writer, not to a crash.
    /// </summary>
    public bool InUseByOtherWriter { get; private protected set; }

    /// <summary>The warning an image gets when <see cref="InUseByOtherWriter"/>.</summary>
    public const string InUseWarning = "in use by another writer; data may be inconsistent";

    internal void MarkInUseByOtherWriter()
    {
        if (!InUseByOtherWriter)
        {
            InUseByOtherWriter = true;
            AddWarning(WarningCodes.InUseByOtherWriter, InUseWarning);
        }
    }

    /// <summary>
    /// The host offset <see cref="TryMap"/> gives for a cluster this layer holds but whose mapping is damaged: reading
    /// it is an I/O error (<see cref="DamagedRead"/>), and no layer below answers for it.
    /// </summary>
    public const long DamagedHostOffset = -1;

    /// <summary>
    /// The host offset <see cref="TryMap"/> gives for a range this layer holds as zeros (a qcow2 zero cluster): it reads
    /// as zeros, hides the layers below, and is a hole for SEEK_DATA/SEEK_HOLE (<see cref="FindNext"/> does not count it).
    /// </summary>
    public const long ZeroHostOffset = -2;

    /// <summary>
    /// The host offset <see cref="TryMap"/> gives for a range whose bytes are not stored plainly (a compressed cluster):
    /// the layer reads them itself (<see cref="ReadOwn"/>). It is data, and no layer below answers for it.
    /// </summary>
    public const long OwnReadHostOffset = -3;

    /// <summary>True when <see cref="TryMap"/> may answer <see cref="ZeroHostOffset"/>: the engine then finds data and holes through every layer's answer, not through allocation alone.</summary>
    public virtual bool MayHoldZeros => false;

    /// <summary>
    /// Reads guest bytes [offset, offset + destination.Length) that <see cref="TryMap"/> answered with
    /// <see cref="OwnReadHostOffset"/> (the range lies within that answer's run).
    /// </summary>
    public virtual void ReadOwn(Span<byte> destination, long offset) => throw new NotSupportedException($"{Path}: the layer has no ranges it reads itself");

    /// <summary>
    /// The error for a read of guest <paramref name="offset"/>, which <see cref="TryMap"/> answered with
    /// <see cref="DamagedHostOffset"/>. A format that can find damage says what is wrong there.
    /// </summary>
    public virtual DamagedClusterException DamagedRead(long offset) => new(Path, offset / ClusterBytes, "its mapping is damaged");

    /// <summary>Damage found at open that makes writing this layer unsafe, in words ("2 damaged BAT entries"), or null.</summary>
    public virtual string? DamageText => null;

    /// <summary>
    /// Maps a guest offset. Returns true with the host offset in <see cref="DataFile"/> when this layer holds the data (or
    /// one of the markers <see cref="DamagedHostOffset"/>, <see cref="ZeroHostOffset"/>, <see cref="OwnReadHostOffset"/>);
    /// either way <paramref name="run"/> is how many bytes from <paramref name="offset"/> keep the same answer (at least 1).
    /// </summary>
    public abstract bool TryMap(long offset, out long hostOffset, out long run);

    public abstract long CountAllocatedClusters();

    /// <summary>
    /// The first guest offset at or after <paramref name="offset"/> where this layer holds data (<paramref name="allocated"/>
    /// true: <see cref="TryMap"/> answers true there, damaged clusters included, zero ranges not) or does not; <see cref="long.MaxValue"/>
    /// when there is none. Never reads data. This default walks <see cref="TryMap"/>'s runs; a format with an allocation
    /// table answers from it.
    /// </summary>
    public virtual long FindNext(long offset, bool allocated)
    {
        while (true)
        {
            bool hit = TryMap(offset, out long host, out long run) && host != ZeroHostOffset;
            if (hit == allocated)
            {
                return offset;
            }

            if (run >= long.MaxValue - offset)
            {
                return long.MaxValue;
            }

            offset += run;
        }
    }

    /// <summary>The write side, once <see cref="OpenWriter"/> opened it; null for a layer that is only read.</summary>
    public LayerWriter? Writer { get; private set; }

    /// <summary>
    /// Opens this layer for writing over <paramref name="parent"/>, the content of the chain below it, which the writer
    /// reads for copy-on-write. Only a layer that is not <see cref="IsImmutable"/>, and only once.
    /// </summary>
    public LayerWriter OpenWriter(IParentContent parent)
    {
        if (IsImmutable)
        {
            throw new InvalidOperationException($"{Path}: image is read-only");
        }

        if (Writer is not null)
        {
            throw new InvalidOperationException($"{Path}: image is already open for writing");
        }

        Writer = CreateWriter(parent);
        return Writer;
    }

    /// <summary>The format's writer for this layer.</summary>
    protected abstract LayerWriter CreateWriter(IParentContent parent);

    protected void AddWarning(string code, string warning) => _warnings.Add(new DiskWarning(code, $"{System.IO.Path.GetFileName(Path)}: {warning}"));

    /// <summary>
    /// Closes every layer, even when one fails (a written layer flushes and marks itself clean as it closes), and then
    /// throws the first failure as one error naming <paramref name="what"/>.
    /// </summary>
    public static void DisposeAll(IEnumerable<ImageLayer> layers, string what)
    {
        Exception? first = null;
        foreach (var layer in layers)
        {
            try
            {
                layer.Dispose();
            }
            catch (IOException e)
            {
                first ??= e;
            }
        }

        if (first is not null)
        {
            throw new PrlFuseException(null, $"closing {what} failed: {first.Message}", first);
        }
    }

    public void Dispose()
    {
        Dispose(true);
        GC.SuppressFinalize(this);
    }

    protected virtual void Dispose(bool disposing)
    {
        if (disposing)
        {
            try
            {
                Writer?.Dispose();
            }
            finally
            {
                if (_ownsFiles)
                {
                    File.Dispose();
                    if (DataFile != File)
                    {
                        DataFile.Dispose();
                    }
                }
            }
        }
    }
}
