using PrlFuse.Cli.Arguments;
using static PrlFuse.Cli.Arguments.Spec;

namespace PrlFuse.Cli.Commands;

/// <summary>Every command with its own options, help and examples: the one table the parser, --help and the man page follow.</summary>
internal static class CommandTable
{
    public const int MaxThreads = 64;

    private const string DiskHelp = "A bundle folder (NAME.hdd), its DiskDescriptor.xml, a bare image (.hds, or a raw disk file), or a VM bundle (NAME.pvm, NAME.macvm).";

    public static readonly IReadOnlyList<CommandSpec> Commands =
    [
        new CommandSpec
        {
            Name = "info",
            Summary = "Show a disk's geometry, storages, images, snapshot tree (the top, i.e. the current state, marked) and warnings.",
            Description = ["A damaged image is shown with its problems as warnings. A disk in use is reported with who uses it."],
            Positionals = [Positional<InfoOptions>("disk", DiskHelp, (o, v) => o.Disk = v)],
            Options =
            [
                Flag<InfoOptions>("json", null, "Print the same information as JSON (errors too, as {\"error\": ...}).", o => o.Json = true),
                .. DiskSourceOptions<InfoOptions>(),
                Debug<InfoOptions>(),
            ],
            Examples = ["prlfuse info disk.hdd", "prlfuse info --json disk.hdd/DiskDescriptor.xml"],
            Create = () => new InfoOptions(),
            Run = o => InfoCommand.Run((InfoOptions)o),
        },
        new CommandSpec
        {
            Name = "map",
            Summary = "Show where each range of a snapshot's bytes comes from (which image, at what depth of the chain, at what offset in the file), as 'qemu-img map' does.",
            Description =
            [
                "Made from the images' allocation tables; no data is read. Ranges no image holds read as zeros. A split disk's ranges never cross a storage, and depth counts within the storage's chain (0: the snapshot's own image).",
                "--json prints qemu-img map's JSON (start, length, depth, present, zero, data, and offset for data), so scripts written for it read it, with \"filename\" added for data and \"damaged\": true where a mapping cannot be read. Without --json: the ranges holding data in hex, as qemu-img map prints them, then the allocated bytes.",
            ],
            Positionals = [Positional<MapOptions>("disk", DiskHelp, (o, v) => o.Disk = v)],
            Options =
            [
                Value<MapOptions>("snapshot", 's', "GUID", "The snapshot by GUID, with or without braces, any case; a qcow2 internal snapshot by file name, ID or name (default: the top, the current state).", (o, v) => o.Snapshot = v),
                Flag<MapOptions>("json", null, "Print qemu-img map's JSON, one range a line.", o => o.Json = true),
                .. DiskSourceOptions<MapOptions>(),
                Debug<MapOptions>(),
            ],
            Examples =
            [
                "prlfuse map disk.hdd",
                "prlfuse map --json disk.hdd --snapshot {986476cf-d62e-45d1-b355-86feca91376e}",
            ],
            Create = () => new MapOptions(),
            Run = o => MapCommand.Run((MapOptions)o),
        },
        new CommandSpec
        {
            Name = "export",
            Summary = "Write one snapshot of a disk as a raw disk image.",
            Description =
            [
                "A regular file is written under a temporary name, made durable and renamed (sparse where unallocated). An existing block device, character device or FIFO is written in place (a block device must hold the whole disk); a symlink is followed. '-o -' writes to standard output.",
            ],
            Positionals = [Positional<ExportOptions>("disk", DiskHelp, (o, v) => o.Disk = v)],
            Options =
            [
                Value<ExportOptions>("output", 'o', "FILE", "Where to write: a file, a device, a FIFO, or - for standard output (required).", (o, v) => o.Output = v),
                Value<ExportOptions>("snapshot", 's', "GUID", "The snapshot by GUID, with or without braces, any case; a qcow2 internal snapshot by file name, ID or name (default: the top, the current state).", (o, v) => o.Snapshot = v),
                CacheSize<ExportOptions>((o, v) => o.CacheBytes = v),
                .. DiskSourceOptions<ExportOptions>(),
                Debug<ExportOptions>(),
            ],
            Examples =
            [
                "prlfuse export disk.hdd -o current.raw",
                "prlfuse export disk.hdd --snapshot {986476cf-d62e-45d1-b355-86feca91376e} -o old.raw",
                "prlfuse export disk.hdd -o - | gzip > disk.raw.gz",
            ],
            Create = () => new ExportOptions(),
            Run = o => ExportCommand.Run((ExportOptions)o),
        },
        new CommandSpec
        {
            Name = "convert",
            Summary = "Write one snapshot of a disk, flattened, as a new image (a Parallels bundle, qcow2, QED or raw), or every snapshot.",
            Description =
            [
                "Sparse: only what the snapshot's images hold is read, and clusters that read as zeros are not written. The image is written under a temporary name beside DST, made durable and renamed; an existing DST is refused.",
                "The output format is --format, else DST's name: NAME.hdd a Parallels bundle (expandable unless --plain), .qcow2 a qcow2 image, .qed a QED image, .raw or .img a raw file.",
                "--keep-snapshots keeps every snapshot. To qcow2: a backing chain, one file per snapshot holding only what differs from its parent's snapshot, each naming its parent's file (relative, with its format); DST holds the current state, and the snapshots go to DST's name with a number before the extension (disk.1.qcow2 the root, disk.2.qcow2, ...), parents before children. A tree with branches becomes several chains sharing their common files. To a Parallels bundle: a qcow2 or QED backing chain, and a qcow2 image's internal snapshots (after the chain, in the order of its snapshot table, named as they were), become the bundle's snapshots, one image each, in a line ending in the current state.",
            ],
            Positionals =
            [
                Positional<ConvertOptions>("src", DiskHelp, (o, v) => o.Disk = v),
                Positional<ConvertOptions>("dst", "The new image (it must not exist).", (o, v) => o.Destination = v),
            ],
            Options =
            [
                Value<ConvertOptions>("format", 'f', "FORMAT", "The output format: parallels, qcow2, qed or raw (default: from DST's name).", (o, v) => o.OutputFormat = v switch
                {
                    "parallels" or "qcow2" or "qed" or "raw" => v,
                    _ => throw new FormatException("must be parallels, qcow2, qed or raw"),
                }),
                Value<ConvertOptions>("snapshot", 's', "GUID", "The snapshot by GUID, with or without braces, any case; a qcow2 internal snapshot by file name, ID or name (default: the top, the current state).", (o, v) => o.Snapshot = v),
                Flag<ConvertOptions>("plain", null, "Parallels output: a plain (preallocated raw) image.", o => o.Plain = true),
                Flag<ConvertOptions>("expanding", null, "Parallels output: an expandable image (the default).", o => o.Expanding = true),
                Flag<ConvertOptions>("keep-snapshots", null, "Keep the whole snapshot tree (qcow2: a backing chain; Parallels: the bundle's snapshots) instead of one flattened view.", o => o.KeepSnapshots = true),
                Value<ConvertOptions>("cluster", null, "SIZE", "The output's cluster size (default: 1M for Parallels, 64K for qcow2 and QED).", (o, v) => o.ClusterBytes = Sizes.TryParse(v, out long bytes) && bytes > 0 ? bytes : throw new FormatException("is not a size (examples: 64K, 1M)")),
                .. DiskSourceOptions<ConvertOptions>(format: false),
                Debug<ConvertOptions>(),
            ],
            Examples =
            [
                "prlfuse convert disk.hdd disk.qcow2",
                "prlfuse convert disk.hdd --snapshot {986476cf-d62e-45d1-b355-86feca91376e} old.hdd --plain",
                "prlfuse convert vm.qcow2 --snapshot before-upgrade before.raw",
                "prlfuse convert disk.hdd disk.qcow2 --keep-snapshots",
            ],
            Create = () => new ConvertOptions(),
            Run = o => ConvertCommand.Run((ConvertOptions)o),
        },
        new CommandSpec
        {
            Name = "check",
            Summary = "Check every image of a disk as 'qemu-img check' does, and the descriptor.",
            Description = ["Exit status: 0 clean, 2 corruptions found, 3 only leaked space, 1 the check itself failed. A plain check never writes."],
            Positionals = [Positional<CheckOptions>("disk", DiskHelp, (o, v) => o.Disk = v)],
            Options =
            [
                Flag<CheckOptions>("repair", 'r', "Repair what is found, crash-safely: copy duplicated clusters, clear entries outside the file, trim leaks, mark clean. Refused while the disk is in use.", o => o.Repair = true),
                .. DiskSourceOptions<CheckOptions>(format: false),
                Debug<CheckOptions>(),
            ],
            Examples = ["prlfuse check disk.hdd", "prlfuse check --repair disk.hdd"],
            Create = () => new CheckOptions(),
            Run = o => CheckCommand.Run((CheckOptions)o),
        },
        new CommandSpec
        {
            Name = "resize",
            Summary = "Give a disk a new size, offline: every image of its chain and the descriptor (Disk_size, geometry) get it.",
            Description =
            [
                "Growing: where an image's larger BAT needs the room, the data clusters in its way are moved to the end of the file first, crash-safely (copied and made durable before their BAT entries are repointed); the new space reads as zeros. Grow the filesystem inside afterwards (resize2fs, growpart).",
                "Shrinking needs --shrink and is refused, before anything is written, when any image holds data past the new end: shrink the filesystem and partitions inside first. The size is a whole number of cylinders (256 KiB with Parallels' 16 heads and 32 sectors).",
                "Refused while the disk is mounted or any image is in use (QEMU's image locks). A crash leaves every snapshot as it was or as it is after; running the same command again finishes the job.",
            ],
            Positionals = [Positional<ResizeOptions>("disk", "A bundle folder (NAME.hdd), its DiskDescriptor.xml, or a bare image (.hds, or a raw disk file).", (o, v) => o.Disk = v)],
            Options =
            [
                Value<ResizeOptions>("size", null, "SIZE", "The new size: bytes, or with K, M, G, T (required).", (o, v) => o.Size = v),
                Flag<ResizeOptions>("shrink", null, "Allow a smaller size (refused when data lies past the new end).", o => o.Shrink = true),
                Flag<ResizeOptions>("allow-outside-images", null, "Let relative image paths in DiskDescriptor.xml lead outside the bundle folder.", o => o.AllowOutsideImages = true),
                VmDisk<ResizeOptions>(),
                Debug<ResizeOptions>(),
            ],
            Examples = ["prlfuse resize disk.hdd --size 64G", "prlfuse resize disk.hdd --size 20G --shrink"],
            Create = () => new ResizeOptions(),
            Run = o => ResizeCommand.Run((ResizeOptions)o),
        },
        new CommandSpec
        {
            Name = "compact",
            Summary = "Release the space of clusters that read as zeros and of leaked space, offline; image files shrink and every snapshot reads the same.",
            Description =
            [
                "In the root image every cluster that reads as zeros is released; in a snapshot's image only where the images below read zeros too (elsewhere it keeps hiding their data). The remaining clusters are moved down into the freed places, crash-safely, and each file is cut after its last cluster. Discard (fstrim) inside the mounted disk first, so that deleted files read as zeros.",
                "Refused while the disk is mounted or any image is in use (QEMU's image locks).",
            ],
            Positionals = [Positional<CompactOptions>("disk", "A bundle folder (NAME.hdd), its DiskDescriptor.xml, or a bare image (.hds).", (o, v) => o.Disk = v)],
            Options =
            [
                Flag<CompactOptions>("allow-outside-images", null, "Let relative image paths in DiskDescriptor.xml lead outside the bundle folder.", o => o.AllowOutsideImages = true),
                VmDisk<CompactOptions>(),
                Debug<CompactOptions>(),
            ],
            Examples = ["prlfuse compact disk.hdd"],
            Create = () => new CompactOptions(),
            Run = o => CompactCommand.Run((CompactOptions)o),
        },
        new CommandSpec
        {
            Name = "mount",
            Summary = "Mount a disk: MOUNTPOINT/current.raw is the top snapshot (the current state, read-write), MOUNTPOINT/snapshots/{GUID}.raw every other one (read-only).",
            Description =
            [
                "The command returns once the mount answers; the daemon serves in the background until 'prlfuse unmount'. The mountpoint must be an empty folder that holds neither the disk's files nor the current folder.",
                "The disk's images are locked as QEMU locks them: a disk that another writer (QEMU or prlfuse) holds is refused.",
            ],
            Positionals =
            [
                Positional<MountOptions>("disk", DiskHelp, (o, v) => o.Disk = v),
                Positional<MountOptions>("mountpoint", "An existing empty folder.", (o, v) => o.MountPoint = v),
            ],
            Options =
            [
                Flag<MountOptions>("read-only", 'r', "Serve current.raw read-only too; no image is opened for writing.", o => o.ReadOnly = true),
                Flag<MountOptions>("foreground", 'f', "Stay in the foreground (systemd, debugging) instead of returning once mounted.", o => o.Foreground = true),
                Value<MountOptions>("options", 'o', "OPT[,OPT]", "FUSE mount options (allow_other, default_permissions, nonempty, ...); may be repeated.", (o, v) => o.FuseOptions.AddRange(v.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))),
                Flag<MountOptions>("repair", null, "Repair the images first if needed (after a crash), as 'prlfuse check --repair' does.", o => o.Repair = true),
                CacheSize<MountOptions>((o, v) => o.CacheBytes = v),
                Value<MountOptions>("threads", null, "N", $"FUSE worker threads, 0 to {MaxThreads} (default 0: automatic).", (o, v) => o.Threads = Count(v, 0, MaxThreads)),
                Flag<MountOptions>("page-cache", null, "Let the kernel page cache hold file data (needed for mmap; default: direct I/O, best for loop devices).", o => o.PageCache = true),
                Flag<MountOptions>("buffered-writes", null, "Write space the top image grows through the host page cache too (default: large writes there go direct).", o => o.BufferedWrites = true),
                Flag<MountOptions>("no-splice", null, "Copy read data through the daemon instead of splicing it from the images' page cache.", o => o.NoSplice = true),
                Value<MountOptions>("log", null, "FILE", "Append the background daemon's messages to FILE (default: discarded).", (o, v) => o.Log = v),
                .. DiskSourceOptions<MountOptions>(),
                Flag<MountOptions>("debug", null, "Show stack traces of errors, and with --foreground libfuse's request log.", o => o.Debug = true),
                Flag<MountOptions>("daemon-child", null, "", o => o.DaemonChild = true, hidden: true),
            ],
            Examples =
            [
                "prlfuse mount disk.hdd /mnt/x",
                "mount -o loop,ro /mnt/x/snapshots/{GUID}.raw /mnt/old",
                "prlfuse mount -o allow_other --read-only disk.hdd /mnt/x",
                "prlfuse unmount /mnt/x",
            ],
            Create = () => new MountOptions(),
            Run = o => MountCommand.Run((MountOptions)o),
        },
        new CommandSpec
        {
            Name = "serve",
            Summary = "Serve a disk over NBD (Network Block Device): the export 'current' is the top snapshot (read-write), and each other snapshot is an export named by its {GUID} (read-only).",
            Description =
            [
                "Runs in the foreground until Ctrl-C, SIGTERM or SIGHUP, then answers the requests in flight and closes the images cleanly; -d starts it in the background and returns once it accepts connections. It listens on a Unix socket (mode 0600; default: $XDG_RUNTIME_DIR/prlfuse-NAME.sock, or in the temporary folder), and with --listen on TCP too. An empty export name means 'current'.",
                "Clients: qemu-img and qemu-io (nbd+unix:///current?socket=PATH), nbdinfo, nbdcopy and nbdfuse (libnbd), the kernel's nbd-client. Reads of unallocated ranges are sent as holes; block status answers base:allocation and qemu:allocation-depth from the allocation tables; trim and write-zeroes release space as discard does.",
                "A non-loopback --listen address needs TLS (--tls-cert and --tls-key: clients must then start TLS before anything else) or --insecure. The images are locked as mount locks them: a disk served read-write is not mounted read-write at the same time, nor the other way round.",
            ],
            Positionals = [Positional<ServeOptions>("disk", DiskHelp, (o, v) => o.Disk = v)],
            Options =
            [
                Value<ServeOptions>("socket", null, "PATH", "Listen on a Unix socket at PATH (default when --listen is not given).", (o, v) => o.Socket = v),
                Value<ServeOptions>("listen", null, "ADDR[:PORT]", $"Listen on TCP: 127.0.0.1:10809, [::1]:10809, 0.0.0.0:10809 ... (port {ServeCommand.DefaultPort} by default); may be repeated.", (o, v) => o.Listen.Add(v)),
                Flag<ServeOptions>("read-only", 'r', "Serve current read-only too; no image is opened for writing.", o => o.ReadOnly = true),
                Value<ServeOptions>("tls-cert", null, "FILE", "Require TLS, with this certificate (PEM); goes with --tls-key.", (o, v) => o.TlsCertificate = v),
                Value<ServeOptions>("tls-key", null, "FILE", "The certificate's private key (PEM).", (o, v) => o.TlsKey = v),
                Flag<ServeOptions>("insecure", null, "Allow a non-loopback --listen address without TLS (anyone who reaches it can read and write the disk).", o => o.Insecure = true),
                Flag<ServeOptions>("detach", 'd', "Run in the background; return once the server accepts connections.", o => o.Detach = true),
                Value<ServeOptions>("log", null, "FILE", "Append the background server's messages to FILE (default: discarded).", (o, v) => o.Log = v),
                Value<ServeOptions>("max-connections", null, "N", $"Clients connected at once, 1 to {ServeCommand.MaxConnectionsLimit} (default {ServeCommand.DefaultMaxConnections}); more are closed at once.", (o, v) => o.MaxConnections = Count(v, 1, ServeCommand.MaxConnectionsLimit)),
                CacheSize<ServeOptions>((o, v) => o.CacheBytes = v),
                .. DiskSourceOptions<ServeOptions>(),
                Flag<ServeOptions>("debug", null, "Show stack traces of errors, and every client's connection, handshake and disconnection.", o => o.Debug = true),
                Flag<ServeOptions>("daemon-child", null, "", o => o.DaemonChild = true, hidden: true),
            ],
            Examples =
            [
                "prlfuse serve disk.hdd --socket /run/disk.sock",
                "qemu-img info nbd+unix:///current?socket=/run/disk.sock",
                "nbdinfo --list 'nbd+unix:///?socket=/run/disk.sock'",
                "nbdcopy 'nbd+unix:///{GUID}?socket=/run/disk.sock' old.raw",
                "prlfuse serve -d --read-only --listen 0.0.0.0:10809 --tls-cert cert.pem --tls-key key.pem disk.hdd",
            ],
            Create = () => new ServeOptions(),
            Run = o => ServeCommand.Run((ServeOptions)o),
        },
        new CommandSpec
        {
            Name = "create",
            Summary = "Create a new empty disk bundle as Parallels Desktop writes one: NAME.hdd with DiskDescriptor.xml and one image, expandable by default.",
            Description =
            [
                "The bundle is built in a hidden temporary folder beside the target and renamed into place once complete and durable, so a crash leaves no disk or the whole one. An existing target is never overwritten.",
                "An expandable image (the default) grows as data is written; --plain preallocates the whole size as a raw image, as Parallels does for plain disks.",
            ],
            Positionals = [Positional<CreateOptions>("disk", "The bundle folder to create (NAME.hdd); it must not exist.", (o, v) => o.Disk = v)],
            Options =
            [
                Value<CreateOptions>("size", null, "SIZE", "The disk's size: bytes, or with K, M, G, T; a multiple of 512 bytes (required).", (o, v) => o.SizeBytes = CreateCommand.ParseSize(v)),
                Flag<CreateOptions>("plain", null, "Make a plain (preallocated raw) image instead of an expandable one.", o => o.Plain = true),
                Value<CreateOptions>("cluster", null, "SIZE", "Cluster size of the expandable image, a power of two from 4K to 64M (default 1M, as Parallels).", (o, v) => o.ClusterBytes = CreateCommand.ParseCluster(v)),
                Debug<CreateOptions>(),
            ],
            Examples = ["prlfuse create disk.hdd --size 10G", "prlfuse create --plain --size 512M small.hdd"],
            Create = () => new CreateOptions(),
            Run = o => CreateCommand.Run((CreateOptions)o),
        },
        new CommandSpec
        {
            Name = "snapshot",
            Summary = "List a disk's snapshots, take one, delete one, or switch to one (the disk offline).",
            Options = [],
            Examples = ["prlfuse snapshot list disk.hdd", "prlfuse snapshot create disk.hdd --name \"before upgrade\""],
            Subcommands =
            [
                new CommandSpec
                {
                    Name = "snapshot list",
                    Summary = "Show the snapshot tree: each snapshot's GUID, its name and description where the descriptor has them, and its image files with the data they hold.",
                    Positionals = [Positional<SnapshotListOptions>("disk", DiskHelp, (o, v) => o.Disk = v)],
                    Options =
                    [
                        Flag<SnapshotListOptions>("json", null, "Print the same as JSON.", o => o.Json = true),
                        .. DiskSourceOptions<SnapshotListOptions>(),
                        Debug<SnapshotListOptions>(),
                    ],
                    Examples = ["prlfuse snapshot list disk.hdd", "prlfuse snapshot list --json disk.hdd"],
                    Create = () => new SnapshotListOptions(),
                    Run = o => SnapshotCommands.List((SnapshotListOptions)o),
                },
                new CommandSpec
                {
                    Name = "snapshot create",
                    Summary = "Take a snapshot of a disk: the current state becomes the snapshot, and goes on in a new empty image. Prints the new snapshot's GUID.",
                    Description =
                    [
                        "The new image is made durable before the descriptor is rewritten (atomically, the previous one kept as DiskDescriptor.xml.Backup), so a crash leaves the disk as it was or with the snapshot.",
                        "On a disk mounted read-write by prlfuse, the mount's daemon takes it: writes are paused and flushed, the snapshot is taken, and snapshots/{GUID}.raw appears in the mount at once, while current.raw goes on for every open file and loop device. Freeze a filesystem on it first (fsfreeze -f) for a clean one in the snapshot. Refused on a read-only mount, and while another program writes the disk.",
                    ],
                    Positionals = [Positional<SnapshotCreateOptions>("disk", "A bundle folder (NAME.hdd) or its DiskDescriptor.xml.", (o, v) => o.Disk = v)],
                    Options =
                    [
                        Value<SnapshotCreateOptions>("name", null, "TEXT", "A name for the snapshot, kept in the descriptor.", (o, v) => o.Name = SnapshotCommands.ParseName(v)),
                        Flag<SnapshotCreateOptions>("allow-outside-images", null, "Let relative image paths in DiskDescriptor.xml lead outside the bundle folder.", o => o.AllowOutsideImages = true),
                        VmDisk<SnapshotCreateOptions>(),
                        Debug<SnapshotCreateOptions>(),
                    ],
                    Examples = ["prlfuse snapshot create disk.hdd", "prlfuse snapshot create disk.hdd --name \"before upgrade\""],
                    Create = () => new SnapshotCreateOptions(),
                    Run = o => SnapshotCommands.Create((SnapshotCreateOptions)o),
                },
                new CommandSpec
                {
                    Name = "snapshot delete",
                    Summary = "Delete a snapshot (any but the current state) of a disk that is not in use; every other snapshot reads as before.",
                    Description =
                    [
                        "A snapshot with one child is merged with it (the child's data copied down into the snapshot's image, or the snapshot's data up into the child's, whichever copies less); with several children each child gets the data it read from it; a leaf is dropped.",
                        "The snapshot is first marked <Temporary/> in the descriptor; its data is then merged and made durable, the descriptor rewritten without it, and its image removed last. A crash at any point is finished by the next snapshot command or 'prlfuse check --repair'. Refused while the disk is mounted or another program uses it.",
                    ],
                    Positionals =
                    [
                        Positional<SnapshotDeleteOptions>("disk", "A bundle folder (NAME.hdd) or its DiskDescriptor.xml.", (o, v) => o.Disk = v),
                        Positional<SnapshotDeleteOptions>("guid", "The snapshot, with or without braces, any case ('prlfuse snapshot list' shows them).", (o, v) => o.Guid = v),
                    ],
                    Options = [VmDisk<SnapshotDeleteOptions>(), Debug<SnapshotDeleteOptions>()],
                    Examples = ["prlfuse snapshot delete disk.hdd {986476cf-d62e-45d1-b355-86feca91376e}"],
                    Create = () => new SnapshotDeleteOptions(),
                    Run = o => SnapshotChangeCommands.Delete((SnapshotDeleteOptions)o),
                },
                new CommandSpec
                {
                    Name = "snapshot switch",
                    Summary = "Make a snapshot's content the current state of a disk that is not in use: a new empty image over it. The old current state is dropped, or kept as a snapshot with --keep-current.",
                    Description = ["The new image is durable before the descriptor is rewritten, and the dropped image is removed last: a crash leaves the old disk or the new one. Refused while the disk is mounted or another program uses it."],
                    Positionals =
                    [
                        Positional<SnapshotSwitchOptions>("disk", "A bundle folder (NAME.hdd) or its DiskDescriptor.xml.", (o, v) => o.Disk = v),
                        Positional<SnapshotSwitchOptions>("guid", "The snapshot, with or without braces, any case.", (o, v) => o.Guid = v),
                    ],
                    Options =
                    [
                        Flag<SnapshotSwitchOptions>("keep-current", null, "Keep the current state as a snapshot (a new GUID, printed) instead of dropping it.", o => o.KeepCurrent = true),
                        VmDisk<SnapshotSwitchOptions>(),
                        Debug<SnapshotSwitchOptions>(),
                    ],
                    Examples = ["prlfuse snapshot switch disk.hdd {986476cf-d62e-45d1-b355-86feca91376e}", "prlfuse snapshot switch --keep-current disk.hdd {986476cf-d62e-45d1-b355-86feca91376e}"],
                    Create = () => new SnapshotSwitchOptions(),
                    Run = o => SnapshotChangeCommands.Switch((SnapshotSwitchOptions)o),
                },
            ],
            Create = () => new GroupOptions(),
            Run = _ => Program.ExitUsage,
        },
        new CommandSpec
        {
            Name = "merge",
            Summary = "Merge every snapshot of a disk that is not in use into one image that holds the current state (as 'prl_disk_tool merge').",
            Description = ["Every snapshot but the current state is marked <Temporary/> in the descriptor first, then deleted one by one from the root up (see 'snapshot delete'); a crash is finished by the next snapshot command or 'prlfuse check --repair'. Refused while the disk is mounted or another program uses it."],
            Positionals = [Positional<MergeOptions>("disk", "A bundle folder (NAME.hdd) or its DiskDescriptor.xml.", (o, v) => o.Disk = v)],
            Options = [VmDisk<MergeOptions>(), Debug<MergeOptions>()],
            Examples = ["prlfuse merge disk.hdd"],
            Create = () => new MergeOptions(),
            Run = o => SnapshotChangeCommands.Merge((MergeOptions)o),
        },
        new CommandSpec
        {
            Name = "restore-descriptor",
            Summary = "Write a lost DiskDescriptor.xml back when the bundle's images leave no doubt (exactly one image); otherwise list what was found and write nothing.",
            Positionals = [Positional<RestoreDescriptorOptions>("folder", "The bundle folder (NAME.hdd) whose DiskDescriptor.xml is lost or unreadable.", (o, v) => o.Folder = v)],
            Options = [Debug<RestoreDescriptorOptions>()],
            Examples = ["prlfuse restore-descriptor disk.hdd"],
            Create = () => new RestoreDescriptorOptions(),
            Run = o => RestoreDescriptorCommand.Run((RestoreDescriptorOptions)o),
        },
        new CommandSpec
        {
            Name = "unmount",
            Aliases = ["umount"],
            Summary = "Unmount a prlfuse mount and wait until its images are closed cleanly; refused while a loop device or an open file still uses it.",
            Positionals = [Positional<UnmountOptions>("mountpoint", "The folder the disk is mounted on.", (o, v) => o.MountPoint = v)],
            Options = [Debug<UnmountOptions>()],
            Examples = ["prlfuse unmount /mnt/x"],
            Create = () => new UnmountOptions(),
            Run = o => UnmountCommand.Run((UnmountOptions)o),
        },
        new CommandSpec
        {
            Name = "status",
            Summary = "List the active prlfuse mounts: mountpoint, disk, read-only or not, daemon PID, open files and loop devices using them.",
            Options = [Flag<StatusOptions>("json", null, "Print the same as JSON.", o => o.Json = true), Debug<StatusOptions>()],
            Examples = ["prlfuse status", "prlfuse status --json"],
            Create = () => new StatusOptions(),
            Run = o => StatusCommand.Run(((StatusOptions)o).Json),
        },
    ];

    public static CommandSpec? Find(string verb) => Commands.FirstOrDefault(c => c.Name == verb || c.Aliases.Contains(verb));

    private static OptionSpec[] DiskSourceOptions<T>(bool format = true)
        where T : DiskOptions =>
    [
        Flag<T>("force-share", 'U', "Open images that another process holds for writing, read-only, as 'qemu-img -U' does (the data may be inconsistent).", o => o.ForceShare = true),
        .. format ? new[]
        {
            Value<T>("format", null, "FORMAT", "What a bare image file is: parallels or raw (default: recognised from its content; a file with no known format is raw only if its size is a whole number of sectors).", (o, v) => o.Format = v switch
            {
                "raw" or "parallels" => v,
                _ => throw new FormatException("must be raw or parallels"),
            }),
        } : [],
        Flag<T>("allow-outside-images", null, "Let relative image paths in DiskDescriptor.xml lead outside the bundle folder (device nodes, FIFOs and sockets are always refused).", o => o.AllowOutsideImages = true),
        VmDisk<T>(),
    ];

    /// <summary>--disk N: numbered from 0 in config.pvs order, the numbers 'info' shows for the VM bundle.</summary>
    private static OptionSpec VmDisk<T>()
        where T : DiskArgumentOptions =>
        Value<T>("disk", null, "N", "Which disk of a VM bundle (NAME.pvm) with several: numbered from 0 in config.pvs order, as 'prlfuse info VM.pvm' lists them.", (o, v) => o.DiskNumber = Count(v, 0, int.MaxValue));

    private static OptionSpec CacheSize<T>(Action<T, long> set) =>
        Value<T>("cache-size", null, "SIZE", $"Block cache shared by all snapshot files: bytes, or with K, M, G; 0 turns it off (default 64M, at most {Sizes.Human(Sizes.MaxCacheBytes)}).", (o, v) => set(o, Sizes.ParseCacheSize(v)));

    private static OptionSpec Debug<T>()
        where T : CommonOptions =>
        Flag<T>("debug", null, "Show the stack trace of an error.", o => o.Debug = true);
}
