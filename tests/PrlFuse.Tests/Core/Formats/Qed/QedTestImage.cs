using System.Buffers.Binary;
using PrlFuse.Core.Formats.Qed;

namespace PrlFuse.Tests.Core.Formats.Qed;

/// <summary>Edits of QED image files in place, for tests: header bits, table entries.</summary>
internal static class QedTestImage
{
    public static void SetFeatures(string path, ulong bits)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.ReadWrite);
        byte[] field = new byte[8];
        stream.Position = FieldLocations.Features;
        stream.ReadExactly(field);
        BinaryPrimitives.WriteUInt64LittleEndian(field, BinaryPrimitives.ReadUInt64LittleEndian(field) | bits);
        stream.Position = FieldLocations.Features;
        stream.Write(field);
    }

    public static QedHeader Header(string path)
    {
        byte[] head = File.ReadAllBytes(path);
        Assert.True(QedHeader.TryRead(head.AsSpan(0, Math.Min(head.Length, QedHeader.MaxHeadBytes)), out var header, out string error), error);
        return header;
    }

    /// <summary>The file offset of the first non-zero L2 entry of the first L2 table.</summary>
    public static long FirstDataEntryOffset(string path)
    {
        var header = Header(path);
        byte[] file = File.ReadAllBytes(path);
        for (long i = 0; i < header.TableEntries; i++)
        {
            long l2 = (long)BinaryPrimitives.ReadUInt64LittleEndian(file.AsSpan((int)(header.L1TableOffset + (8 * i))));
            if (l2 == 0)
            {
                continue;
            }

            for (long j = 0; j < header.TableEntries; j++)
            {
                if (BinaryPrimitives.ReadUInt64LittleEndian(file.AsSpan((int)(l2 + (8 * j)))) > 1)
                {
                    return l2 + (8 * j);
                }
            }
        }

        throw new InvalidOperationException("no data entry");
    }

    public static void WriteUInt64(string path, long offset, ulong value)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.ReadWrite);
        byte[] field = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(field, value);
        stream.Position = offset;
        stream.Write(field);
    }
}
