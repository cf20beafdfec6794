using System.Buffers.Binary;

namespace PrlFuse.Nbd.Protocol;

/// <summary>An option's header during the handshake: IHAVEOPT (64), option (32), length of its data (32).</summary>
internal readonly record struct NbdOptionHeader(uint Option, uint Length)
{
    public const int Size = 16;

    /// <summary>False when <paramref name="source"/> is shorter than a header or does not start with IHAVEOPT.</summary>
    public static bool TryRead(ReadOnlySpan<byte> source, out NbdOptionHeader header)
    {
        if (source.Length < Size || BinaryPrimitives.ReadUInt64BigEndian(source) != NbdMagic.Option)
        {
            header = default;
            return false;
        }

        header = new NbdOptionHeader(BinaryPrimitives.ReadUInt32BigEndian(source[8..]), BinaryPrimitives.ReadUInt32BigEndian(source[12..]));
        return true;
    }

    /// <summary>Writes the header's <see cref="Size"/> bytes (what a client sends).</summary>
    public void Write(Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt64BigEndian(destination, NbdMagic.Option);
        BinaryPrimitives.WriteUInt32BigEndian(destination[8..], Option);
        BinaryPrimitives.WriteUInt32BigEndian(destination[12..Size], Length);
    }
}
