using PrlFuse.Core;
using PrlFuse.Core.Checking;
using PrlFuse.Core.Engine;
using PrlFuse.Core.Formats.Parallels;
using PrlFuse.Tests.Support;

namespace PrlFuse.Tests.Core.Checking;

/// <summary>
/// The reader and the checker judge a header by one set of rules: whatever the reader refuses, the checker reports as
/// an error or a corruption (never "clean"), and whatever it only warns about, the checker reports too. Hostile values
/// included: an nb_sectors whose byte count wraps 64 bits once slipped past the checker while the reader refused it.
/// </summary>
public sealed class RuleAgreementTests : IDisposable
{
    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    public static TheoryData<string> Cases() =>
    [
        "sectors-wrap", "bat-too-small", "bat-past-eof", "data-off-inside-bat", "data-off-past-eof",
        "data-off-zero-ext", "data-off-misaligned", "ext-off-past-eof", "ext-off-inside-bat", "clean",
    ];

    private BuiltImage Build(string name)
    {
        var b = new ParallelsImageBuilder(63 * 10, 63, ParallelsMagic.WithouFreSpacExt) { BatEntries = 300 };
        b.Allocate([0, 1, 3, 5, 6, 9]);
        var image = b.Build(_temp.Combine(name + ".hds"));
        return name switch
        {
            // 2^55 + 630 sectors: times 512 it wraps to 630 * 512 bytes, which the BAT seems to cover.
            "sectors-wrap" => image.SetSectorCountField((1UL << 55) + 630),
            "bat-too-small" => image.SetBatEntriesField(9),
            "bat-past-eof" => image.SetBatEntriesField((uint)(image.FileLength / 4)),
            "data-off-inside-bat" => image.SetDataOffsetField(2),
            "data-off-past-eof" => image.SetDataOffsetField((uint)(image.FileLength / 512) + 63),
            "data-off-zero-ext" => image.SetDataOffsetField(0),
            "data-off-misaligned" => image.SetDataOffsetField((uint)(image.DataOffsetBytes / 512) + 1),
            "ext-off-past-eof" => image.SetExtensionOffsetField((ulong)(image.FileLength / 512) + 1),
            "ext-off-inside-bat" => image.SetExtensionOffsetField(1),
            _ => image,
        };
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void TheCheckerReportsWhatTheReaderRefusesOrWarnsAbout(string name)
    {
        var image = Build(name);
        string? refusal = null;
        IReadOnlyList<string> warnings = [];
        try
        {
            using var disk = VirtualDisk.Open(image.Path, new DiskOpenOptions { ReadOnly = true });
            warnings = disk.Warnings;
        }
        catch (ImageFormatException e)
        {
            refusal = e.Problem;
        }

        var report = ImageChecker.Check(image.Path);
        string found = string.Join(" | ", report.Problems.Select(p => p.ToLine()));
        if (refusal is not null)
        {
            Assert.True(report.Errors + report.Corruptions > 0, $"the reader refuses ({refusal}) but the checker finds it clean: {found}");
        }
        else if (warnings.Count > 0)
        {
            Assert.True(report.Problems.Count > 0, $"the reader warns ({string.Join(" | ", warnings)}) but the checker finds nothing");
        }
        else
        {
            Assert.True(report.Problems.Count == 0, $"the reader opens it without a word but the checker finds: {found}");
        }

        // Each case is one of the three outcomes on purpose (a case that opens clean by accident proves nothing).
        string expected = name switch
        {
            "clean" => "clean",
            "data-off-past-eof" or "ext-off-past-eof" or "ext-off-inside-bat" => "warned",
            _ => "refused",
        };
        Assert.Equal(expected, refusal is not null ? "refused" : warnings.Count > 0 ? "warned" : "clean");
    }
}
