using System.Buffers.Binary;

namespace PrlFuse.Nbd.Protocol;

/// <summary>A simple reply: magic (32), error (32), handle (64); a successful READ's data follows.</summary>
internal readonly record struct NbdSimpleReplyHeader(uint Error, ulong Handle)
{
    public const int Size = 16;

    /// <summary>False when <paramref name="source"/> is shorter than a header or does not start with the simple reply magic.</summary>
    public static bool TryRead(ReadOnlySpan<byte> source, out NbdSimpleReplyHeader header)
    {
        if (source.Length < Size || BinaryPrimitives.ReadUInt32BigEndian(source) != NbdMagic.SimpleReply)
        {
            header = default;
            return false;
        }

        header = new NbdSimpleReplyHeader(BinaryPrimitives.ReadUInt32BigEndian(source[4..]), BinaryPrimitives.ReadUInt64BigEndian(source[8..]));
        return true;
    }

    public void Write(Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination, NbdMagic.SimpleReply);
        BinaryPrimitives.WriteUInt32BigEndian(destination[4..], Error);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..Size], Handle);
    }
}
