using System.Buffers.Binary;

namespace PrlFuse.Nbd.Protocol;

/// <summary>An option reply's header: magic (64), the option answered (32), reply type (32), length of its data (32).</summary>
internal readonly record struct NbdOptionReplyHeader(uint Option, uint Type, uint Length)
{
    public const int Size = 20;

    /// <summary>False when <paramref name="source"/> is shorter than a header or does not start with the reply magic.</summary>
    public static bool TryRead(ReadOnlySpan<byte> source, out NbdOptionReplyHeader header)
    {
        if (source.Length < Size || BinaryPrimitives.ReadUInt64BigEndian(source) != NbdMagic.OptionReply)
        {
            header = default;
            return false;
        }

        header = new NbdOptionReplyHeader(
            BinaryPrimitives.ReadUInt32BigEndian(source[8..]),
            BinaryPrimitives.ReadUInt32BigEndian(source[12..]),
            BinaryPrimitives.ReadUInt32BigEndian(source[16..]));
        return true;
    }

    public void Write(Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt64BigEndian(destination, NbdMagic.OptionReply);
        BinaryPrimitives.WriteUInt32BigEndian(destination[8..], Option);
        BinaryPrimitives.WriteUInt32BigEndian(destination[12..], Type);
        BinaryPrimitives.WriteUInt32BigEndian(destination[16..Size], Length);
    }
}
