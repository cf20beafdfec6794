using PrlFuse.Core.Engine;

namespace PrlFuse.Tests.Support;

public static class CoreTestSupport
{
    /// <summary>
    /// Reads <paramref name="count"/> ranges at random unaligned offsets and lengths (fixed seed) plus the first
    /// and last bytes of the disk, and compares every byte with <paramref name="expected"/>.
    /// </summary>
    public static void AssertReadsLike(SnapshotView view, Action<Span<byte>, long> expected, int seed, int count = 300, int maxLength = 300_000)
    {
        var random = new Random(seed);
        var ranges = new List<(long Offset, int Length)> { (0, 4096), (Math.Max(0, view.Size - 5000), 5000), (view.Size - 1, 1) };
        for (int i = 0; i < count; i++)
        {
            int length = random.Next(4) switch
            {
                0 => random.Next(1, 64),
                1 => random.Next(1, 8192),
                _ => random.Next(1, maxLength),
            };
            long offset = random.NextInt64(0, view.Size);
            ranges.Add((offset, length));
        }

        var actual = new byte[maxLength + 8192];
        var want = new byte[maxLength + 8192];
        var pieces = new HostPiece[8192];
        foreach (var (offset, length) in ranges)
        {
            int n = view.Read(actual.AsSpan(0, length), offset);
            int expectN = (int)Math.Min(length, view.Size - offset);
            Assert.Equal(expectN, n);
            expected(want.AsSpan(0, n), offset);
            int diff = actual.AsSpan(0, n).CommonPrefixLength(want.AsSpan(0, n));
            if (diff != n)
            {
                Assert.Fail($"read of {length} bytes at {offset}: byte at guest offset {offset + diff} is 0x{actual[diff]:x2}, expected 0x{want[diff]:x2}");
            }

            // MapRange must describe the same bytes: read each piece from its file (zeros where it has none).
            actual.AsSpan(0, n).Fill(0xA5);
            int pieceCount = view.MapRange(offset, n, pieces);
            Assert.True(pieceCount > 0 || n == 0, $"MapRange({offset}, {n}) returned {pieceCount}");
            int pos = 0;
            foreach (var piece in pieces.AsSpan(0, Math.Max(pieceCount, 0)))
            {
                Assert.True(piece.Length > 0);
                var target = actual.AsSpan(pos, piece.Length);
                if (piece.File is null)
                {
                    target.Clear();
                }
                else
                {
                    Assert.True(piece.HostOffset + piece.Length <= piece.File.Length, "a file piece past the end of its file");
                    Assert.Equal(piece.Length, piece.File.Read(target, piece.HostOffset));
                }

                pos += piece.Length;
            }

            Assert.Equal(n, pos);
            diff = actual.AsSpan(0, n).CommonPrefixLength(want.AsSpan(0, n));
            if (diff != n)
            {
                Assert.Fail($"MapRange of {length} bytes at {offset}: byte at guest offset {offset + diff} is 0x{actual[diff]:x2}, expected 0x{want[diff]:x2}");
            }
        }
    }
}
