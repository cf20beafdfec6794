using System.Globalization;
using System.Text;

namespace PrlFuse.Tests.Support;

/// <summary>
/// qemu-img and qemu-io: QEMU's parallels driver, the implementation independent of ours that tests build images with
/// and compare against. The one place that knows their command lines. Create, Write and the conversions fail the test
/// when the tool fails; Check, Info, Img and Io return the exit code and output for the test to judge (a refusal is
/// often what it looks for). <see cref="QemuHolder"/> keeps a qemu-io running.
/// </summary>
public static class Qemu
{
    /// <summary>qemu-img create -q -f FORMAT [-o cluster_size=CLUSTER] IMAGE SIZE.</summary>
    public static void Create(string image, string size, string? clusterSize = null, string format = "parallels")
    {
        var args = new List<string> { "create", "-q", "-f", format };
        if (clusterSize is not null)
        {
            args.AddRange(["-o", "cluster_size=" + clusterSize]);
        }

        args.AddRange([image, size]);
        ProcessRunner.Run("qemu-img", args);
    }

    /// <summary>qemu-io -f parallels -c COMMAND... IMAGE, e.g. "write -P 7 0 64k"; nothing to do without commands.</summary>
    public static void Write(string image, IEnumerable<string> commands)
    {
        var args = new List<string> { "-f", "parallels" };
        foreach (string command in commands)
        {
            args.AddRange(["-c", command]);
        }

        if (args.Count > 2)
        {
            args.Add(image);
            ProcessRunner.Run("qemu-io", args);
        }
    }

    /// <inheritdoc cref="Write(string, IEnumerable{string})"/>
    public static void Write(string image, params string[] commands) => Write(image, (IEnumerable<string>)commands);

    /// <summary>qemu-img check -f parallels IMAGE: exit 0 clean, 2 corruptions, 3 leaked clusters only.</summary>
    public static ProcessRunner.Result Check(string image) => Img("check", "-f", "parallels", image);

    /// <summary>qemu-img check of <paramref name="image"/> finds nothing (no corruption, no leak).</summary>
    public static void AssertClean(string image)
    {
        var r = Check(image);
        Assert.True(r.ExitCode == 0, $"qemu-img check {image}: exit {r.ExitCode}\n{r.Stdout}{r.Stderr}");
    }

    /// <summary>qemu-img info with these options and image.</summary>
    public static ProcessRunner.Result Info(params string[] args) => Img(["info", .. args]);

    /// <summary>qemu-img convert -f parallels -O raw IMAGE RAW: qemu's view of one image (its backing files not included).</summary>
    public static void Convert(string image, string raw) =>
        ProcessRunner.Run("qemu-img", "convert", "-f", "parallels", "-O", "raw", image, raw);

    /// <summary>qemu's view of the top of a chain of parallels images (top first) written to RAW.</summary>
    public static void ConvertChain(IReadOnlyList<string> topFirst, string raw) =>
        ProcessRunner.Run("qemu-img", "convert", "--image-opts", ChainOptions(topFirst), "-O", "raw", raw);

    /// <summary>The --image-opts text of a chain of parallels images, top first: each next one the backing of the one before.</summary>
    public static string ChainOptions(IReadOnlyList<string> topFirst)
    {
        var opts = new StringBuilder();
        string prefix = "";
        foreach (string image in topFirst)
        {
            if (opts.Length > 0)
            {
                opts.Append(',');
            }

            opts.Append(CultureInfo.InvariantCulture, $"{prefix}driver=parallels,{prefix}file.filename={image.Replace(",", ",,", StringComparison.Ordinal)}");
            prefix += "backing.";
        }

        return opts.ToString();
    }

    /// <summary>qemu-img with exactly these arguments.</summary>
    public static ProcessRunner.Result Img(params string[] args) => ProcessRunner.Run("qemu-img", args, check: false);

    /// <summary>qemu-io with exactly these arguments.</summary>
    public static ProcessRunner.Result Io(params string[] args) => ProcessRunner.Run("qemu-io", args, check: false);
}
