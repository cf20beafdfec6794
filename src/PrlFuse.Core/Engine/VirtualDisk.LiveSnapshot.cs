using System.Collections.Immutable;
using PrlFuse.Core.Descriptor;
using PrlFuse.Core.IO;
using PrlFuse.Core.Images;
using PrlFuse.Core.Management;

namespace PrlFuse.Core.Engine;

public sealed partial class VirtualDisk
{
    /// <summary>
    /// Takes a snapshot of this disk while it stays open read-write (a mount's daemon does it): the current state's
    /// content becomes a new read-only snapshot view, and the top view goes on, the same object, over a new empty image
    /// per storage with the old top below it, so it reads exactly what it read before. The caller must hold every
    /// writer of the top off for the whole call (the mount pauses its write requests); reads may go on, on either
    /// chain. On disk the order is <see cref="SnapshotCreator"/>'s: the new images durable, opened and locked, then the
    /// descriptor; only then do the views change and the old top images get their clean close and a reader's lock.
    /// Returns the new snapshot's view.
    /// </summary>
    public SnapshotView TakeSnapshot(string? name, DurableFiles? files = null)
    {
        if (IsBareImage)
        {
            throw new PrlFuseException(SourcePath, "is a bare image, which has no DiskDescriptor.xml to record a snapshot in; give a disk bundle (NAME.hdd)");
        }

        var top = Top;
        if (!top.IsWritable)
        {
            throw new PrlFuseException(SourcePath, "snapshot create refused: the disk is served read-only");
        }

        files ??= DurableFiles.Real;

        // Everything written so far is durable before an image that holds it is named a snapshot.
        top.Flush();
        var prepared = SnapshotCreator.Prepare(SourcePath, Descriptor, Tree, name, files);
        var warnings = ImmutableArray.CreateBuilder<DiskWarning>();
        var newLayers = new ImageLayer?[Storages.Count];
        try
        {
            for (int s = 0; s < newLayers.Length; s++)
            {
                var sd = prepared.Descriptor.Storages[s];
                var layer = OpenLayer(prepared.NewImages[s], sd.FindImage(prepared.Top)!, sd, s, writable: true, OpenOptions, warnings);
                newLayers[s] = layer;
                if (layer.IsImmutable)
                {
                    throw new PrlFuseException(layer.Path, "the new image of the current state cannot be written; the snapshot is not taken");
                }
            }

            CommitOrFindCommitted(prepared, files);
        }
        catch
        {
            foreach (var layer in newLayers)
            {
                layer?.Dispose();
            }

            SnapshotCreator.Abandon(prepared, files);
            throw;
        }

        // From here on the descriptor says so: the views follow (memory only), then the old tops are closed.
        var snapshotChains = new StorageChain[newLayers.Length];
        var topChains = new StorageChain[newLayers.Length];
        var storages = new List<OpenStorage>();
        var oldTops = new ImageLayer[newLayers.Length];
        foreach (var oldChain in top.Storages)
        {
            int s = oldChain.StorageIndex;
            var layer = newLayers[s]!;
            _opened.Add(layer);
            layer.CacheId = _opened.Count;
            ImageLayer[] below = [.. oldChain.Layers];
            oldTops[s] = below[0];
            snapshotChains[s] = new StorageChain(s, oldChain.StartBytes, oldChain.LengthBytes, below, Cache, writable: false);
            topChains[s] = new StorageChain(s, oldChain.StartBytes, oldChain.LengthBytes, [layer, .. below], Cache, writable: true);
        }

        foreach (var open in Storages)
        {
            var images = new Dictionary<Guid, ImageLayer>(open.Images)
            {
                [prepared.Snapshot] = oldTops[open.Index],
                [prepared.Top] = newLayers[open.Index]!,
            };
            storages.Add(new OpenStorage(open.Index, prepared.Descriptor.Storages[open.Index], images));
        }

        var snapshot = new SnapshotView(prepared.Snapshot, isTop: false, isWritable: false, top.Size, snapshotChains);
        var views = new Dictionary<Guid, SnapshotView>(_views) { [prepared.Snapshot] = snapshot };
        Descriptor = prepared.Descriptor;
        Tree = SnapshotTree.Build(prepared.Descriptor, SourcePath);
        Storages = storages;
        top.ReplaceStorages(topChains);
        Volatile.Write(ref _views, views);
        if (warnings.Count > 0)
        {
            AddWarnings(warnings);
        }

        CloseOldTops(oldTops, prepared.Snapshot);
        return snapshot;
    }

    /// <summary>
    /// Writes the descriptor. A failure after the new descriptor was renamed into place (its folder's fsync) still
    /// leaves it naming the snapshot: then the snapshot stands, as the next open would find it.
    /// </summary>
    private void CommitOrFindCommitted(PreparedSnapshot prepared, DurableFiles files)
    {
        try
        {
            SnapshotCreator.Commit(prepared, files);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            DiskDescriptor? now = null;
            try
            {
                now = DescriptorParser.ParseFile(SourcePath);
            }
            catch (DescriptorException)
            {
            }

            if (now?.Snapshots.Shots.Any(shot => shot.Guid == prepared.Snapshot) != true)
            {
                throw new PrlFuseException(SourcePath, $"snapshot create failed writing the descriptor: {e.Message}", e);
            }
        }
    }

    /// <summary>
    /// The images that were the top: their writers close cleanly (the header marked closed, the file trimmed) and their
    /// locks become a reader's, so QEMU may read the snapshot beside the mount. Every one is tried; a failure is
    /// reported after the snapshot exists.
    /// </summary>
    private static void CloseOldTops(ImageLayer[] oldTops, Guid snapshot)
    {
        Exception? first = null;
        foreach (var layer in oldTops)
        {
            try
            {
                layer.Writer?.Close();
                ImageLock.Acquire(layer.File, ImageLockMode.ReadOnly);
            }
            catch (Exception e) when (e is IOException or ImageInUseException)
            {
                first ??= e;
            }
        }

        if (first is not null)
        {
            throw new PrlFuseException(null, $"snapshot {DiskDescriptor.FormatGuid(snapshot)} was taken, but closing its image failed: {first.Message}; after unmounting, run 'prlfuse check --repair'", first);
        }
    }
}
