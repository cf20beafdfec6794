using System.Buffers.Binary;

namespace PrlFuse.Nbd.Protocol;

/// <summary>A structured reply chunk's header: magic (32), flags (16), type (16), handle (64), length of its payload (32).</summary>
internal readonly record struct NbdStructuredReplyHeader(ushort Flags, ushort Type, ulong Handle, uint Length)
{
    public const int Size = 20;

    /// <summary>False when <paramref name="source"/> is shorter than a header or does not start with the structured reply magic.</summary>
    public static bool TryRead(ReadOnlySpan<byte> source, out NbdStructuredReplyHeader header)
    {
        if (source.Length < Size || BinaryPrimitives.ReadUInt32BigEndian(source) != NbdMagic.StructuredReply)
        {
            header = default;
            return false;
        }

        header = new NbdStructuredReplyHeader(
            BinaryPrimitives.ReadUInt16BigEndian(source[4..]),
            BinaryPrimitives.ReadUInt16BigEndian(source[6..]),
            BinaryPrimitives.ReadUInt64BigEndian(source[8..]),
            BinaryPrimitives.ReadUInt32BigEndian(source[16..]));
        return true;
    }

    public void Write(Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination, NbdMagic.StructuredReply);
        BinaryPrimitives.WriteUInt16BigEndian(destination[4..], Flags);
        BinaryPrimitives.WriteUInt16BigEndian(destination[6..], Type);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], Handle);
        BinaryPrimitives.WriteUInt32BigEndian(destination[16..Size], Length);
    }
}
