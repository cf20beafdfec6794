#!/usr/bin/env python3
"""Writes the README's performance table from one run of `make bench` (bench/results/fuse.json, written by
bench/fuse/report.py): the lines between the markers below are replaced, everything else is kept.

  python3 bench/fuse/readme.py [RESULTS_JSON] [README]     (defaults: bench/results/fuse.json, README.md)
  make bench-readme

The table says which run it comes from (date, load average before and after, runs per figure), so a reader can
judge the figures: on a shared machine absolute figures swing, ratios within one run are what to compare.
"""
import json
import sys

BEGIN = "<!-- bench-table:begin (bench/fuse/readme.py writes this part from bench/results/fuse.json) -->"
END = "<!-- bench-table:end -->"

# Short names for the README; a row without one is shown by its name.
LABELS = {
    "ready_sample": "`mount` to a readable file, Parallels Desktop sample",
    "info_sample": "`info`, Parallels Desktop sample (peer: `qemu-img info`)",
    "rss_idle": "daemon RSS idle (limit: cache + 20 MiB)",
    "rss_loaded": "daemon peak RSS under load (limit: cache + 40 MiB)",
    "seq_read_direct": "sequential 1 MiB reads, O_DIRECT",
    "seq_read_buffered": "sequential 1 MiB reads, buffered",
    "rand_read_4k": "random 4 KiB reads, libaio QD32 x 4",
    "peak_rss": "daemon peak RSS after the reads",
    "qcow2_parallels_seq_read": "yardstick for qcow2: the same bytes as a Parallels image, sequential 1 MiB O_DIRECT",
    "qcow2_seq_read_direct": "qcow2, fully allocated: sequential 1 MiB O_DIRECT",
    "qcow2_compressed_seq_read": "qcow2, compressed (zlib): sequential 1 MiB O_DIRECT",
    "seq_write_unallocated": "sequential 1 MiB writes into new clusters",
    "seq_write_allocated": "sequential 1 MiB writes into allocated clusters",
    "rand_write_4k": "random 4 KiB writes, QD32 x 4",
    "rand_read_4k_qd32_base": "random 4 KiB reads, QD32 x 4, 2 GiB image",
    "rand_read_4k_qd1_base": "random 4 KiB reads, QD1, 2 GiB image",
    "rand_read_4k_qd1_p50_base": "the same, p50 latency",
    "rand_read_4k_qd1_p99_base": "the same, p99 latency",
    "rand_read_4k_qd32_sample": "random 4 KiB reads, QD32 x 4, the sample",
    "rand_read_4k_qd1_sample": "random 4 KiB reads, QD1, the sample",
    "rand_read_4k_qd1_p50_sample": "the same, p50 latency",
    "rand_read_4k_qd1_p99_sample": "the same, p99 latency",
    "cache_rand_qd32_base": "block cache on / off: QD32 x 4, 2 GiB image",
    "cache_rand_qd1_base": "block cache on / off: QD1, 2 GiB image",
    "cache_rand_qd32_sample": "block cache on / off: QD32 x 4, the sample",
    "cache_rand_qd1_sample": "block cache on / off: QD1, the sample",
    "rand_write_4k_qd32": "random 4 KiB writes, QD32 x 4 (rand subset)",
    "rand_write_4k_qd1": "random 4 KiB writes, QD1",
    "ext4_loop_buffered": "ext4 in current.raw via a loop device, read a 1 GiB file",
    "ext4_loop_direct": "the same with `losetup --direct-io=on`",
    "chain_top_read": "top of a 3-level chain, sequential O_DIRECT (peer: `qemu-img convert`)",
    "chain_all_data_time": "all 2 GiB of the chain top read (peer: `qemu-img convert`)",
    "mount_2tib_8snap": "`mount` to a readable file, 2 TiB disk with 8 snapshots",
    "mount_2tib_8snap_dll": "the same with `dotnet prlfuse.dll` (JIT)",
    "info_2tib_8snap": "`info` of that disk",
    "info_2tib_8snap_dll": "the same with `dotnet prlfuse.dll` (JIT)",
    "depth_info_1000": "`info` of a chain 1,000 snapshots deep",
    "depth_ready_1000": "`mount` to a readable file, 1,000 deep",
    "depth_rss_1000": "daemon peak RSS, 1,000 deep",
    "depth_read_root": "random 4 KiB reads QD1, 1,000-deep chain's root",
    "depth_read_top": "the same on its top (1,000 layers)",
    "cache_small_reads": "block cache on / off: small repeated reads",
    "cache_shared_base": "block cache on / off: 3 snapshots sharing a base",
    "cache_seq_read": "block cache on / off: sequential 1 MiB reads",
    "sparse_convert_2g": "`qemu-img convert` of a 2 GiB disk, 1 GiB written",
    "sparse_cp_2g": "`cp --sparse=always` of that disk",
    "sparse_convert_64g": "`qemu-img convert` of a 64 GiB disk, the same 1 GiB written",
    "sparse_cp_64g": "`cp --sparse=always` of the 64 GiB disk",
    "sparse_cp_allocated": "what that copy allocates",
    "nbd_seq_read": "`nbdcopy` from `prlfuse serve` (peer: `qemu-nbd`)",
    "nbd_peak_rss": "NBD server peak RSS",
}


def figure(v, unit):
    if v is None:
        return ""
    if unit == "s":
        return f"{v:.3f} s"
    text = f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}"
    return f"{text} {unit}"


def times(v):
    return "" if v is None else f"{v:.2f}"


def table(result):
    machine = result["machine"]
    out = [
        f"From one run of the FUSE bench (`make bench`, or scripts/bench-fuse.sh with PRLFUSE_FUSE_ONLY) on "
        f"{machine.get('date', 'an unrecorded date')} (commit "
        f"{machine.get('commit', 'unrecorded')}; {machine.get('nproc', '?')} vCPU "
        f"{machine.get('cpu', '')}, {machine.get('memory', '')}, kernel {machine.get('kernel', '?')}, libfuse "
        f"{machine.get('libfuse', '?')}, QEMU {machine.get('qemu', '?')}); load average "
        f"{machine.get('load_before', '?')} before and {machine.get('load_after', '?')} after (other work on the machine "
        f"skews absolute figures; the ratios compare sides measured in turn within the run); medians of "
        f"{machine.get('runs', '?')} runs. Block-cache rows put cache on in the prlfuse column and `--cache-size 0` "
        "in the qsd column. Ratios are \"times better\" (for seconds and MiB: other / prlfuse)."
        + (f" Subsets run: {machine['subsets']}." if machine.get("subsets") else ""),
        "",
        "| figure | prlfuse | qsd | limit | prlfuse/qsd | target | |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        unit = r["unit"]
        met = "" if r.get("met") is None else ("met" if r["met"] else "**missed**")
        label = LABELS.get(r["name"], r["name"].replace("_", " "))
        out.append(f"| {label} | {figure(r['prlfuse'], unit)} | {figure(r['peer'], unit)} | "
                   f"{figure(r['limit'], unit)} | {times(r.get('ratio_peer'))} | {r.get('target_text') or ''} | {met} |")
    return out


def main():
    results = sys.argv[1] if len(sys.argv) > 1 else "bench/results/fuse.json"
    readme = sys.argv[2] if len(sys.argv) > 2 else "README.md"
    with open(results) as fh:
        result = json.load(fh)
    with open(readme) as fh:
        lines = fh.read().split("\n")
    try:
        begin, end = lines.index(BEGIN), lines.index(END)
    except ValueError:
        sys.exit(f"readme.py: {readme} has no '{BEGIN}' ... '{END}' markers; put them where the table belongs")
    if end < begin:
        sys.exit(f"readme.py: in {readme} the end marker comes before the begin marker")
    lines[begin + 1:end] = table(result)
    with open(readme, "w") as fh:
        fh.write("\n".join(lines))
    print(f"readme.py: {readme}: {len(result['rows'])} rows from {results}")


if __name__ == "__main__":
    main()
