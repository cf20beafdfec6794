using System.Text.Json;
using System.Text.Json.Nodes;
using PrlFuse.Fuse;

namespace PrlFuse.Cli.Commands;

/// <summary>
/// 'prlfuse status [--json]': the active prlfuse mounts (mountpoint, disk, read-only or read-write, daemon PID) and
/// what keeps each busy (processes with open files under it, loop devices on its files). Presents
/// <see cref="MountRegistry"/>.
/// </summary>
internal static class StatusCommand
{
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    public static int Run(bool json) => Run(json, Console.Out);

    public static int Run(bool json, TextWriter output)
    {
        var mounts = MountRegistry.List();
        if (json)
        {
            output.WriteLine(ToJson(mounts).ToJsonString(Indented));
            return Program.ExitOk;
        }

        if (mounts.Count == 0)
        {
            output.WriteLine("no prlfuse mounts");
            return Program.ExitOk;
        }

        foreach (var m in mounts)
        {
            string state = m.Stale ? "stale: its daemon is gone; 'prlfuse unmount' clears it" : m.ReadOnly ? "read-only" : "read-write";
            output.WriteLine($"{m.Mountpoint}  ({state})");
            output.WriteLine($"  disk    {m.Disk}");
            output.WriteLine($"  daemon  {(m.DaemonPid is { } pid ? $"pid {pid}" : "not found")}");
            foreach (var f in m.OpenFiles)
            {
                string what = f.Fd == "cwd" ? "working folder" : $"fd {f.Fd}";
                output.WriteLine($"  in use  pid {f.Pid} ({f.Command}), {what}: {f.Path}");
            }

            foreach (var l in m.LoopDevices)
            {
                output.WriteLine($"  loop    {l.Device}: {l.BackingFile}");
            }
        }

        return Program.ExitOk;
    }

    private static JsonObject ToJson(IReadOnlyList<PrlFuseMountInfo> mounts) => new()
    {
        ["mounts"] = new JsonArray([.. mounts.Select(m => (JsonNode?)new JsonObject
        {
            ["mountpoint"] = m.Mountpoint,
            ["disk"] = m.Disk,
            ["readOnly"] = m.ReadOnly,
            ["daemonPid"] = m.DaemonPid,
            ["stale"] = m.Stale,
            ["openFiles"] = new JsonArray([.. m.OpenFiles.Select(f => (JsonNode?)new JsonObject
            {
                ["pid"] = f.Pid,
                ["command"] = f.Command,
                ["fd"] = f.Fd,
                ["path"] = f.Path,
            })]),
            ["loopDevices"] = new JsonArray([.. m.LoopDevices.Select(l => (JsonNode?)new JsonObject
            {
                ["device"] = l.Device,
                ["backingFile"] = l.BackingFile,
            })]),
        })]),
    };
}
