using System.Buffers.Binary;

namespace PrlFuse.Nbd.Protocol;

/// <summary>
/// A transmission request's header: magic (32), command flags (16), type (16), handle (64), offset (64), length (32);
/// a WRITE's data follows it.
/// </summary>
internal readonly record struct NbdRequestHeader(ushort Flags, ushort Type, ulong Handle, ulong Offset, uint Length)
{
    public const int Size = 28;

    /// <summary>False when <paramref name="source"/> is shorter than a header or does not start with the request magic.</summary>
    public static bool TryRead(ReadOnlySpan<byte> source, out NbdRequestHeader header)
    {
        if (source.Length < Size || BinaryPrimitives.ReadUInt32BigEndian(source) != NbdMagic.Request)
        {
            header = default;
            return false;
        }

        header = new NbdRequestHeader(
            BinaryPrimitives.ReadUInt16BigEndian(source[4..]),
            BinaryPrimitives.ReadUInt16BigEndian(source[6..]),
            BinaryPrimitives.ReadUInt64BigEndian(source[8..]),
            BinaryPrimitives.ReadUInt64BigEndian(source[16..]),
            BinaryPrimitives.ReadUInt32BigEndian(source[24..]));
        return true;
    }

    /// <summary>Writes the header's <see cref="Size"/> bytes (what a client sends).</summary>
    public void Write(Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination, NbdMagic.Request);
        BinaryPrimitives.WriteUInt16BigEndian(destination[4..], Flags);
        BinaryPrimitives.WriteUInt16BigEndian(destination[6..], Type);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], Handle);
        BinaryPrimitives.WriteUInt64BigEndian(destination[16..], Offset);
        BinaryPrimitives.WriteUInt32BigEndian(destination[24..Size], Length);
    }
}
