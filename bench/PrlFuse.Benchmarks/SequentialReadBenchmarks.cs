using BenchmarkDotNet.Attributes;
using Microsoft.Win32.SafeHandles;
using PrlFuse.Core.Engine;

namespace PrlFuse.Benchmarks;

/// <summary>
/// In-process sequential 1 MiB reads of the whole 2 GiB top view of a 3-level Parallels chain, against
/// <see cref="RandomAccess.Read(SafeFileHandle, Span{byte}, long)"/> of qemu's raw conversion of the same chain.
/// Both sides read through the page cache; setup reads both files once in full (and compares them), so every
/// measured read is a page-cache hit. Figures are per 1 MiB read (OperationsPerInvoke = 2048).
/// Data: scripts/bench-data.sh; location from PRLFUSE_BENCH_DATA (default /tmp/prlfuse-bench).
/// </summary>
[MemoryDiagnoser]
[MedianColumn]
[SimpleJob(launchCount: 1, warmupCount: 2, iterationCount: 8)]
public class SequentialReadBenchmarks
{
    private const int ReadSize = 1 << 20;
    private const int Reads = 2048;
    private const long DiskSize = (long)Reads * ReadSize;

    private readonly byte[] _buffer = GC.AllocateUninitializedArray<byte>(ReadSize, pinned: true);
    private VirtualDisk? _cached;
    private VirtualDisk? _uncached;
    private SnapshotView? _cachedTop;
    private SnapshotView? _uncachedTop;
    private SafeFileHandle? _raw;
    private SafeFileHandle[] _imageHandles = [];
    private (SafeFileHandle Handle, long Host)[] _plan = [];

    public static string DataDirectory =>
        Environment.GetEnvironmentVariable("PRLFUSE_BENCH_DATA") is { Length: > 0 } dir ? dir : "/tmp/prlfuse-bench";

    [GlobalSetup]
    public void Setup()
    {
        string descriptor = Path.Combine(DataDirectory, "bench.hdd", "DiskDescriptor.xml");
        string raw = Path.Combine(DataDirectory, "chain.raw");
        if (!File.Exists(descriptor) || !File.Exists(raw))
        {
            throw new FileNotFoundException($"benchmark data missing in {DataDirectory}: run scripts/bench-data.sh {DataDirectory}");
        }

        _cached = VirtualDisk.Open(descriptor, new DiskOpenOptions { CacheBytes = DiskOpenOptions.DefaultCacheBytes });
        _uncached = VirtualDisk.Open(descriptor, new DiskOpenOptions { CacheBytes = 0 });
        _cachedTop = _cached.Top;
        _uncachedTop = _uncached.Top;
        _raw = File.OpenHandle(raw, FileMode.Open, FileAccess.Read, FileShare.Read);
        if (_cachedTop.Size != DiskSize || RandomAccess.GetLength(_raw) != DiskSize)
        {
            throw new InvalidOperationException($"expected a {DiskSize}-byte disk and raw file");
        }

        // The preads the engine makes for the top view, one per 1 MiB (every read is one whole cluster of one layer).
        var chain = _uncachedTop.Storages[0];
        _imageHandles = chain.Layers.Select(l => File.OpenHandle(l.Path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite)).ToArray();
        _plan = new (SafeFileHandle, long)[Reads];
        for (int i = 0; i < Reads; i++)
        {
            int layer = chain.Resolve((long)i * ReadSize, ReadSize, out long host, out long run);
            if (layer < 0 || run != ReadSize)
            {
                throw new InvalidOperationException($"the 1 MiB at {(long)i * ReadSize} is not one allocated cluster of one layer");
            }

            _plan[i] = (_imageHandles[layer], host);
        }

        // Warms the page cache for both sides and checks that they agree, so the benchmark measures equal work.
        var other = new byte[ReadSize];
        for (long offset = 0; offset < DiskSize; offset += ReadSize)
        {
            _uncachedTop.Read(_buffer, offset);
            RandomAccess.Read(_raw, other, offset);
            if (!_buffer.AsSpan().SequenceEqual(other))
            {
                throw new InvalidOperationException($"top view and chain.raw differ in the 1 MiB at {offset}");
            }
        }

        // MemoryDiagnoser counts the whole process (BenchmarkDotNet's and the runtime's threads too), so it can show
        // a byte or two per read that the read path does not allocate. This counts this thread only.
        long cachedBytes = ThreadAllocationsOfOnePass(_cachedTop);
        long uncachedBytes = ThreadAllocationsOfOnePass(_uncachedTop);
        Console.WriteLine($"in-process bytes allocated by this thread over a whole 2 GiB pass of 1 MiB reads (after one warm pass): prlfuse {cachedBytes} (cache 64 MiB), {uncachedBytes} (cache off)");
    }

    private long ThreadAllocationsOfOnePass(SnapshotView view)
    {
        ReadAll(view);
        long before = GC.GetAllocatedBytesForCurrentThread();
        ReadAll(view);
        return GC.GetAllocatedBytesForCurrentThread() - before;
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _cached?.Dispose();
        _uncached?.Dispose();
        _raw?.Dispose();
        foreach (var handle in _imageHandles)
        {
            handle.Dispose();
        }
    }

    [Benchmark(Baseline = true, OperationsPerInvoke = Reads, Description = "raw file (RandomAccess.Read)")]
    public long RawFile()
    {
        var handle = _raw!;
        long total = 0;
        for (long offset = 0; offset < DiskSize; offset += ReadSize)
        {
            total += RandomAccess.Read(handle, _buffer, offset);
        }

        return total;
    }

    /// <summary>
    /// The same preads the engine issues (same files, same host offsets), without the engine: the floor for ours.
    /// The gap between this and the raw file is the kernel's (other files, scattered offsets), not the engine's.
    /// </summary>
    [Benchmark(OperationsPerInvoke = Reads, Description = "image files, engine's preads replayed")]
    public long ImagePreadReplay()
    {
        long total = 0;
        foreach (var (handle, host) in _plan)
        {
            total += RandomAccess.Read(handle, _buffer, host);
        }

        return total;
    }

    [Benchmark(OperationsPerInvoke = Reads, Description = "prlfuse top view, cache 64 MiB")]
    public long PrlFuseCache64MiB() => ReadAll(_cachedTop!);

    [Benchmark(OperationsPerInvoke = Reads, Description = "prlfuse top view, cache off")]
    public long PrlFuseNoCache() => ReadAll(_uncachedTop!);

    private long ReadAll(SnapshotView view)
    {
        long total = 0;
        for (long offset = 0; offset < DiskSize; offset += ReadSize)
        {
            total += view.Read(_buffer, offset);
        }

        return total;
    }
}
