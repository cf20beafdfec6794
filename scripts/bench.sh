#!/usr/bin/env bash
# Benchmarks: builds the data (scripts/bench-data.sh), runs each benchmark, and ends with one summary line per
# figure ("in-process sequential 1 MiB reads: prlfuse X MB/s, raw file Y MB/s, ratio Z", ...).
#   scripts/bench.sh            data in $PRLFUSE_BENCH_DATA (default /tmp/prlfuse-bench), reports in bench/results/
# On a shared machine, PRLFUSE_BENCH_NICE=-10 (needs root) runs the benchmarks at a higher priority, so that other
# processes' builds skew them less; wall-clock figures from a busy 2-CPU machine otherwise swing by +-30%.
set -euo pipefail
cd "$(dirname "$0")/.."
export PRLFUSE_BENCH_DATA=${PRLFUSE_BENCH_DATA:-/tmp/prlfuse-bench}
results=bench/results
mkdir -p "$results"
log="$results/bench.log"
: > "$log"

bash scripts/bench-data.sh "$PRLFUSE_BENCH_DATA"
# Other work on the machine skews the figures: note the load before and after.
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

# 1. In-process: the engine's reads against RandomAccess.Read of qemu's raw conversion (BenchmarkDotNet).
run=()
[ -z "${PRLFUSE_BENCH_NICE:-}" ] || run=(nice -n "$PRLFUSE_BENCH_NICE")
"${run[@]}" dotnet run -c Release --project bench/PrlFuse.Benchmarks -- --filter '*' --artifacts "$results" 2>&1 | tee -a "$log"

# 2. Through FUSE: prlfuse against qemu-storage-daemon's FUSE export and a raw file in the page cache
#    (scripts/bench-fuse.sh: table, $results/fuse.json, $results/fuse.png; summary lines start with "fuse ").
#    PRLFUSE_BENCH_SKIP_FUSE=1 skips it.
if [ -z "${PRLFUSE_BENCH_SKIP_FUSE:-}" ]; then
  "${run[@]}" bash scripts/bench-fuse.sh 2>&1 | tee -a "$log"
fi

load_after=$(cut -d' ' -f1-3 /proc/loadavg)

echo
echo "== summary (reports in $results/results) =="
grep -E '^(in-process|fuse) ' "$log" | awk '!seen[$0]++'
echo "load average before: $load_before, after: $load_after ($(nproc) CPUs)"
