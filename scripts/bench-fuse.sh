#!/usr/bin/env bash
# Through-FUSE benchmark: prlfuse against qemu-storage-daemon's FUSE export of the same image (the peer) and the same
# bytes as a raw file in the page cache (the limit); and the NBD server (prlfuse serve) against qemu-nbd. Needs root,
# /dev/fuse, loop devices, fio, qemu-img, qemu-io, qemu-storage-daemon, mkfs.ext4, python3, and for the nbd subset
# qemu-nbd, nbdcopy and nbdinfo (libnbd-bin) (gnuplot optional, for the chart).
#   scripts/bench-fuse.sh
# Environment:
#   PRLFUSE_BENCH_DATA   bench data from scripts/bench-data.sh (default /tmp/prlfuse-bench); scratch goes in $DATA/fuse
#   PRLFUSE_FUSE_RUNS    runs per figure, the median is reported (default 3)
#   PRLFUSE_BIN          the prlfuse binary (default: `make publish` to artifacts/publish, what `make install` installs)
#   PRLFUSE_FUSE_ONLY    space-separated subset of: start read qcow2 write rand ext4 chain big depth cache sparse nbd
#                        (default: all); qcow2 is sequential reads of a fully allocated and a compressed qcow2 against
#                        qsd's qcow2 driver and our Parallels figure for the same bytes; rand is the small random I/O alone: 4 KiB reads QD32 x 4 and QD1 (p50/p99) on base.hds and
#                        the Parallels Desktop sample, cache on and off, and 4 KiB writes, every side in turn run by run
#   PRLFUSE_SAMPLES      the real bundles (default /work/shared/samples/parallels-desktop; rand skips them if absent)
#   PRLFUSE_SPARSE_TIMEOUT  seconds one copy of the sparse subset may take before it is reported as a timeout (300)
# Writes bench/results/fuse.json, bench/results/fuse.png (if gnuplot is there) and prints a table; the summary lines
# start with "fuse ".
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
DATA=${PRLFUSE_BENCH_DATA:-/tmp/prlfuse-bench}
RUNS=${PRLFUSE_FUSE_RUNS:-3}
ONLY=${PRLFUSE_FUSE_ONLY:-start read qcow2 write rand ext4 chain big depth cache sparse nbd}
RESULTS=$repo/bench/results
W=$DATA/fuse
# tmpfs scratch named after the data folder: two benches with their own data never share (or remove) it
SHM=/dev/shm/prlfuse-bench${DATA//\//_}
BUNDLE=$DATA/bench.hdd
BASE=$BUNDLE/base.hds
CACHE_MIB=64 # prlfuse's default --cache-size
mkdir -p "$RESULTS" "$W" "$SHM"
rows=$W/rows.tsv
: > "$rows"

[ "$(id -u)" = 0 ] || { echo "bench-fuse: needs root (loop devices, drop_caches)" >&2; exit 1; }
for tool in fio qemu-img qemu-io qemu-storage-daemon mkfs.ext4 losetup python3; do
  command -v "$tool" >/dev/null || { echo "bench-fuse: $tool is missing" >&2; exit 1; }
done
[ -s "$BASE" ] || bash scripts/bench-data.sh "$DATA"

# --- the binary: the published native build (what `make install` installs) -----------------------------------------
if [ -n "${PRLFUSE_BIN:-}" ]; then
  PRL=$PRLFUSE_BIN
else
  PRL=$repo/artifacts/publish/prlfuse
  if [ ! -x "$PRL" ] || [ -n "$(find src -name '*.cs' -not -path '*/obj/*' -not -path '*/bin/*' -newer "$PRL" -print -quit)" ]; then
    echo "bench-fuse: publishing $PRL (make publish: Native AOT)"
    make -s publish >/dev/null
  fi
fi
DLL=$repo/src/PrlFuse.Cli/bin/Release/net10.0/prlfuse.dll

# --- helpers -----------------------------------------------------------------------------------------------------------
log() { echo "bench-fuse: $*" >&2; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {if (NR==0) print "null"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.4f", b - a}'; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
warm() { cat "$@" > /dev/null; }
# row NAME UNIT BETTER(higher|lower) PRL PEER LIMIT TARGET NOTE ; TARGET: "peer>=4", "value<1", "row:seq_read_direct>=0.9", "limit<=144", "-"
row() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$rows"; }

# fio_run KIND ARGS... : KIND is rbw/riops/wbw/wiops; prints MB/s (10^6) or IOPS of the whole group.
fio_run() {
  local kind=$1; shift
  fio --output-format=terse --terse-version=3 --group_reporting --name=b "$@" | awk -F';' -v k="$kind" '
    $1 == 3 { if (k == "rbw") printf "%.1f\n", $7 * 1.024 / 1000; else if (k == "riops") printf "%.0f\n", $8;
              else if (k == "wbw") printf "%.1f\n", $48 * 1.024 / 1000; else printf "%.0f\n", $49 }'
}

# fio_lat ARGS... : one job's "IOPS p50 p99" (completion latency in microseconds) from fio's JSON.
fio_lat() {
  fio --output-format=json --group_reporting --name=b "$@" | python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]
side = j["read"] if j["read"]["io_bytes"] else j["write"]
p = side["clat_ns"]["percentile"]
print("%.0f %.1f %.1f" % (side["iops"], p["50.000000"] / 1000, p["99.000000"] / 1000))'
}

PRL_PID=
prl_mount() { # prl_mount DISK MNT [options]: mounts and sets PRL_PID to the daemon
  local disk=$1 mnt=$2; shift 2
  mkdir -p "$mnt"
  "$PRL" mount "$@" "$disk" "$mnt"
  PRL_PID=$(pgrep -f -- "mount .* $mnt --daemon-child" | head -1)
}
prl_unmount() { # prl_unmount MNT: non-lazy unmount; waits for the daemon to close the images
  "$PRL" unmount "$1" >/dev/null
  if [ -n "$PRL_PID" ]; then
    while kill -0 "$PRL_PID" 2>/dev/null; do sleep 0.05; done
  fi
  PRL_PID=
}

QSD_PID=
qsd_start() { # qsd_start EXPORTFILE WRITABLE(on|off) BLOCKDEV-JSON-OF-prl0 [file blockdev]: sets QSD_PID
  local exp=$1 writable=$2; shift 2
  rm -f "$W/qsd.pid"; : > "$exp"
  local args=()
  for b in "$@"; do args+=(--blockdev "$b"); done
  qemu-storage-daemon "${args[@]}" --export "type=fuse,id=exp0,node-name=prl0,mountpoint=$exp,writable=$writable" \
    --daemonize --pidfile "$W/qsd.pid"
  QSD_PID=$(cat "$W/qsd.pid")
}
qsd_image() { # qsd_image IMAGE WRITABLE: blockdevs for one parallels image
  local ro=on; [ "$2" = on ] && ro=off
  echo "driver=file,node-name=file0,filename=$1,read-only=$ro"
  echo "driver=parallels,node-name=prl0,file=file0,read-only=$ro"
}
qsd_stop() {
  [ -n "$QSD_PID" ] || return 0
  kill "$QSD_PID" 2>/dev/null || true
  while kill -0 "$QSD_PID" 2>/dev/null; do sleep 0.05; done
  QSD_PID=
}
NBD_PIDS=()
nbd_start() { # nbd_start SOCKET COMMAND...: starts an NBD server in the background, waits until it serves "current"
  local sock=$1; shift
  rm -f "$sock"
  "$@" > "$sock.log" 2>&1 &
  NBD_PIDS+=($!)
  for ((t = 0; t < 300; t++)); do
    nbdinfo --size "nbd+unix:///current?socket=$sock" >/dev/null 2>&1 && return 0
    kill -0 "${NBD_PIDS[-1]}" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench-fuse: $* did not serve $sock:" >&2; cat "$sock.log" >&2; return 1
}
nbd_stop_all() {
  for p in "${NBD_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${NBD_PIDS[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.05; done; done
  NBD_PIDS=()
}
hwm_mib() { awk '/VmHWM/ {printf "%.0f\n", $2 / 1024}' "/proc/$1/status"; }
rss_mib() { awk '/VmRSS/ {printf "%.1f\n", $2 / 1024}' "/proc/$1/status"; }

LOOPS=()
cleanup() {
  set +e
  for m in $(awk -v w="$W" '$2 ~ "^" w {print $2}' /proc/mounts | sort -r); do umount "$m" 2>/dev/null || umount -l "$m"; done
  for l in "${LOOPS[@]}"; do losetup -d "$l" 2>/dev/null; done
  qsd_stop
  nbd_stop_all
  for m in $(awk -v w="$W" '$2 ~ "^" w {print $2}' /proc/mounts | sort -r); do "$PRL" unmount "$m" 2>/dev/null || umount -l "$m"; done
  rm -rf "$SHM"
}
trap cleanup EXIT

want() { [[ " $ONLY " == *" $1 "* ]]; }
SIZE=2G
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(now)

# --- time to ready, info time and memory: the real Parallels Desktop sample (../shared/samples) ---------------------
# Ready: from the command until 4 KiB of the disk are read through the mount (prlfuse mount returns once the mount
# answers; qsd --daemonize once its export is set up). The sides take turns run by run. Memory: the daemon's VmRSS
# once idle after that first read, and its VmHWM after random and sequential reads of base.hds (2 GiB).
if want start; then
  SAMPLE_SRC=$repo/../shared/samples/parallels-desktop/expanding.hdd
  [ -d "$SAMPLE_SRC" ] || { echo "bench-fuse: $SAMPLE_SRC not found (the samples belong in ../shared/samples)" >&2; exit 1; }
  SAMPLE=$W/sample.hdd; rm -rf "$SAMPLE"; mkdir -p "$SAMPLE"
  for f in "$SAMPLE_SRC"/*; do
    case $f in *.gz) gunzip -c "$f" > "$SAMPLE/$(basename "${f%.gz}")" ;; *) cp "$f" "$SAMPLE/" ;; esac
  done
  SAMPLE_HDS=$(ls "$SAMPLE"/*.hds | awk 'NR == 1')
  warm "$SAMPLE_HDS"
  rt=(); qt=(); it=(); qi=(); ri=(); qri=()
  for ((i = 0; i < RUNS + 2; i++)); do
    t0=$(now); prl_mount "$SAMPLE" "$W/m-start" --read-only; head -c 4096 "$W/m-start/current.raw" > /dev/null; t1=$(now)
    rt+=("$(elapsed "$t0" "$t1")"); sleep 0.5; ri+=("$(rss_mib "$PRL_PID")"); prl_unmount "$W/m-start"
    mapfile -t bd < <(qsd_image "$SAMPLE_HDS" off)
    t0=$(now); qsd_start "$W/qsd-start" off "${bd[@]}"; head -c 4096 "$W/qsd-start" > /dev/null; t1=$(now)
    qt+=("$(elapsed "$t0" "$t1")"); sleep 0.5; qri+=("$(rss_mib "$QSD_PID")"); qsd_stop
    t0=$(now); "$PRL" info "$SAMPLE" > /dev/null; t1=$(now); it+=("$(elapsed "$t0" "$t1")")
    t0=$(now); qemu-img info "$SAMPLE_HDS" > /dev/null; t1=$(now); qi+=("$(elapsed "$t0" "$t1")")
  done
  log "  ready: prlfuse ${rt[*]} s, qsd ${qt[*]} s; info: prlfuse ${it[*]} s, qemu-img info ${qi[*]} s"
  log "  idle RSS: prlfuse ${ri[*]} MiB, qsd ${qri[*]} MiB"
  row ready_sample "s" lower "$(median "${rt[@]}")" "$(median "${qt[@]}")" null "value<0.15" "from 'prlfuse mount --read-only' of the Parallels Desktop sample (expanding.hdd) to 4 KiB read from current.raw; peer: qemu-storage-daemon --daemonize exporting its image, to 4 KiB read"
  row info_sample "s" lower "$(median "${it[@]}")" "$(median "${qi[@]}")" null "value<0.1" "prlfuse info of the sample; peer: qemu-img info of its image"
  row rss_idle "MiB" lower "$(median "${ri[@]}")" "$(median "${qri[@]}")" $((CACHE_MIB + 20)) "limit>=1" "daemon VmRSS idle after the first read of the sample; limit column = cache ($CACHE_MIB MiB) + 20 MiB"
  # Loaded: the same reads on both sides (base.hds), then the high-water mark.
  warm "$BASE"
  declare -A LH
  for side in prl peer; do
    case $side in
      prl) prl_mount "$BASE" "$W/m-load" --read-only; f=$W/m-load/current.raw; pid=$PRL_PID ;;
      peer) mapfile -t bd < <(qsd_image "$BASE" off); qsd_start "$W/qsd-load" off "${bd[@]}"; f=$W/qsd-load; pid=$QSD_PID ;;
    esac
    fio_run riops --filename="$f" --rw=randread --bs=4k --direct=1 --ioengine=libaio --iodepth=32 --numjobs=4 --size=$SIZE --time_based --runtime=5 --randrepeat=0 > /dev/null
    fio_run rbw --filename="$f" --rw=read --bs=1M --direct=1 --ioengine=psync --size=$SIZE > /dev/null
    LH[$side]=$(hwm_mib "$pid")
    case $side in prl) prl_unmount "$W/m-load" ;; peer) qsd_stop ;; esac
  done
  log "  loaded VmHWM: prlfuse ${LH[prl]} MiB, qsd ${LH[peer]} MiB"
  row rss_loaded "MiB" lower "${LH[prl]}" "${LH[peer]}" $((CACHE_MIB + 40)) "limit>=1" "daemon VmHWM after 5 s of random 4 KiB reads (libaio QD32 x 4) and a sequential 1 MiB read of base.hds; limit column = cache ($CACHE_MIB MiB) + 40 MiB"
fi

# --- reads of one image: prlfuse current.raw vs qsd export vs raw in tmpfs ---------------------------------------------
# The image stays in the host page cache (warmed), so the figures are the FUSE stacks, not the disk. fio's default
# invalidate=1 drops the FUSE file's own page cache before each run (the peer would otherwise be served from it).
declare -A R
if want read || want cache; then
  log "raw copy of base.hds in tmpfs (the limit)"
  qemu-img convert -q -f parallels -O raw "$BASE" "$SHM/base.raw"
  warm "$BASE"
fi
if want read; then
  log "reads: prlfuse (read-only mount of base.hds)"
  prl_mount "$BASE" "$W/m-read" --read-only
  f=$W/m-read/current.raw
  for side in prl peer limit; do
    case $side in
      prl) ;;
      peer) prl_hwm=$(hwm_mib "$PRL_PID"); prl_unmount "$W/m-read"; log "reads: qemu-storage-daemon"
            mapfile -t bd < <(qsd_image "$BASE" off); qsd_start "$W/qsd-read" off "${bd[@]}"; f=$W/qsd-read ;;
      limit) qsd_hwm=$(hwm_mib "$QSD_PID"); qsd_stop; log "reads: raw file in tmpfs"; f=$SHM/base.raw ;;
    esac
    a=(); b=(); c=()
    for ((i = 0; i < RUNS; i++)); do
      a+=("$(fio_run rbw --filename="$f" --rw=read --bs=1M --direct=1 --ioengine=psync --size=$SIZE)")
      b+=("$(fio_run rbw --filename="$f" --rw=read --bs=1M --direct=0 --ioengine=psync --size=$SIZE)")
      c+=("$(fio_run riops --filename="$f" --rw=randread --bs=4k --direct=1 --ioengine=libaio --iodepth=32 --numjobs=4 --size=$SIZE --time_based --runtime=8 --randrepeat=0)")
    done
    log "  $side: seq O_DIRECT ${a[*]} MB/s; seq buffered ${b[*]} MB/s; rand 4k ${c[*]} IOPS"
    R[$side.sd]=$(median "${a[@]}"); R[$side.sb]=$(median "${b[@]}"); R[$side.rr]=$(median "${c[@]}")
  done
  row seq_read_direct "MB/s" higher "${R[prl.sd]}" "${R[peer.sd]}" "${R[limit.sd]}" "peer>=4" "sequential 1 MiB reads, O_DIRECT, QD1"
  row seq_read_buffered "MB/s" higher "${R[prl.sb]}" "${R[peer.sb]}" "${R[limit.sb]}" "peer>=2.5" "sequential 1 MiB reads, buffered, QD1"
  row rand_read_4k "IOPS" higher "${R[prl.rr]}" "${R[peer.rr]}" "${R[limit.rr]}" "peer>=2" "random 4 KiB reads, O_DIRECT, libaio QD32 x 4 jobs"
  row peak_rss "MiB" lower "$prl_hwm" "$qsd_hwm" $((CACHE_MIB + 80)) "limit>=1" "daemon VmHWM after the read benchmarks; limit column = cache ($CACHE_MIB MiB) + 80 MiB"
fi

# --- qcow2: sequential 1 MiB O_DIRECT reads of a fully allocated and of a compressed 2 GiB qcow2 --------------------
# Every side stays mounted and the sides take turns run by run: prlfuse and qsd on the same qcow2 file, prlfuse on
# base.hds (the same bytes as a Parallels image: the qcow2 figure should not fall behind it) and the raw bytes in tmpfs.
qsd_qcow2() { # qsd_qcow2 IMAGE: blockdevs for one read-only qcow2 image
  echo "driver=file,node-name=file0,filename=$1,read-only=on"
  echo "driver=qcow2,node-name=prl0,file=file0,read-only=on"
}
if want qcow2; then
  QC=$DATA/qcow2
  [ -s "$QC/full.qcow2" ] && [ -s "$QC/compressed.qcow2" ] || bash scripts/bench-data.sh "$DATA"
  [ -s "$SHM/base.raw" ] || qemu-img convert -q -f parallels -O raw "$BASE" "$SHM/base.raw"
  warm "$BASE" "$QC/full.qcow2" "$QC/compressed.qcow2"
  declare -A QR
  for kind in full compressed; do
    img=$QC/$kind.qcow2
    log "qcow2 $kind: prlfuse, qemu-storage-daemon (qcow2 driver)$([ $kind = full ] && echo ", prlfuse on base.hds, raw file in tmpfs")"
    prl_mount "$img" "$W/m-qcow2" --read-only; pid_q=$PRL_PID
    mapfile -t bd < <(qsd_qcow2 "$img"); qsd_start "$W/qsd-qcow2" off "${bd[@]}"
    declare -A F=([prl]=$W/m-qcow2/current.raw [peer]=$W/qsd-qcow2)
    sides=(prl peer)
    if [ $kind = full ]; then
      prl_mount "$BASE" "$W/m-qcow2-prl" --read-only; pid_p=$PRL_PID
      F[parallels]=$W/m-qcow2-prl/current.raw; F[limit]=$SHM/base.raw
      sides+=(parallels limit)
    fi
    declare -A QS=()
    for ((i = 0; i < RUNS; i++)); do
      for side in "${sides[@]}"; do
        QS[$side]+="$(fio_run rbw --filename="${F[$side]}" --rw=read --bs=1M --direct=1 --ioengine=psync --size=$SIZE) "
      done
    done
    PRL_PID=$pid_q; prl_unmount "$W/m-qcow2"; qsd_stop
    [ $kind = full ] && { PRL_PID=$pid_p; prl_unmount "$W/m-qcow2-prl"; }
    for side in "${sides[@]}"; do
      read -r -a a <<< "${QS[$side]}"
      log "  qcow2 $kind $side: seq O_DIRECT ${a[*]} MB/s (load $(cut -d' ' -f1 /proc/loadavg))"
      QR[$kind.$side]=$(median "${a[@]}")
    done
  done
  row qcow2_parallels_seq_read "MB/s" higher "${QR[full.parallels]}" null "${QR[full.limit]}" "-" "yardstick for the qcow2 rows: base.hds (Parallels, 1 MiB clusters) through prlfuse, sequential 1 MiB O_DIRECT, in turn with them"
  row qcow2_seq_read_direct "MB/s" higher "${QR[full.prl]}" "${QR[full.peer]}" "${QR[full.limit]}" "peer>=3&row:qcow2_parallels_seq_read>=0.9" "the same bytes as a fully allocated qcow2 (64 KiB clusters): sequential 1 MiB O_DIRECT, read-only mount; peer: qsd's FUSE export with the qcow2 driver"
  row qcow2_compressed_seq_read "MB/s" higher "${QR[compressed.prl]}" "${QR[compressed.peer]}" null "peer>=1" "a compressed qcow2 (qemu-img convert -c, zlib, 2 GiB of base64 text): sequential 1 MiB O_DIRECT"
fi

# --- writes: fresh empty 2 GiB images (unallocated clusters) and copies of base.hds (allocated clusters) ------------
if want write; then
  declare -A WR
  # Unallocated: the sides take turns run by run. Writing new clusters means new page-cache memory, and what that costs
  # here swings with the machine's memory state (in a VM that returns freed pages to the host, 0.3-7 GB/s for the same
  # raw-file write minutes apart); turns expose every side to the same swings.
  declare -A SU
  for ((i = 0; i < RUNS; i++)); do
    for side in prl peer limit; do
      img=$W/w-$side-empty.hds; rm -f "$img"; sync # no dirty pages of the last run throttle this one
      case $side in
        prl) qemu-img create -q -f parallels "$img" $SIZE; prl_mount "$img" "$W/m-write"; f=$W/m-write/current.raw ;;
        peer) qemu-img create -q -f parallels "$img" $SIZE; mapfile -t bd < <(qsd_image "$img" on); qsd_start "$W/qsd-write" on "${bd[@]}"; f=$W/qsd-write ;;
        limit) rm -f "$SHM/w.raw"; truncate -s $SIZE "$SHM/w.raw"; f=$SHM/w.raw ;;
      esac
      SU[$side]+="$(fio_run wbw --filename="$f" --rw=write --bs=1M --direct=1 --ioengine=psync --size=$SIZE) "
      case $side in prl) prl_unmount "$W/m-write" ;; peer) qsd_stop ;; esac
      rm -f "$img" "$SHM/w.raw"
    done
  done
  for side in prl peer limit; do
    read -r -a su <<< "${SU[$side]}"
    sa=(); rw=()
    log "writes: $side"
    img=$W/w-$side-copy.hds
    case $side in
      prl) cp "$BASE" "$img"; prl_mount "$img" "$W/m-write"; f=$W/m-write/current.raw ;;
      peer) cp "$BASE" "$img"; mapfile -t bd < <(qsd_image "$img" on); qsd_start "$W/qsd-write" on "${bd[@]}"; f=$W/qsd-write ;;
      limit) cp "$SHM/base.raw" "$SHM/w.raw" 2>/dev/null || { rm -f "$SHM/w.raw"; qemu-img convert -q -f parallels -O raw "$BASE" "$SHM/w.raw"; }; f=$SHM/w.raw ;;
    esac
    for ((i = 0; i < RUNS; i++)); do
      sync
      sa+=("$(fio_run wbw --filename="$f" --rw=write --bs=1M --direct=1 --ioengine=psync --size=$SIZE)")
      rw+=("$(fio_run wiops --filename="$f" --rw=randwrite --bs=4k --direct=1 --ioengine=libaio --iodepth=32 --numjobs=4 --size=$SIZE --time_based --runtime=8 --randrepeat=0)")
    done
    case $side in prl) prl_unmount "$W/m-write" ;; peer) qsd_stop ;; esac
    rm -f "$img" "$SHM/w.raw"
    log "  $side: seq unallocated ${su[*]} MB/s; seq allocated ${sa[*]} MB/s; rand 4k ${rw[*]} IOPS"
    WR[$side.su]=$(median "${su[@]}"); WR[$side.sa]=$(median "${sa[@]}"); WR[$side.rw]=$(median "${rw[@]}")
  done
  row seq_write_unallocated "MB/s" higher "${WR[prl.su]}" "${WR[peer.su]}" "${WR[limit.su]}" "peer>=1.5" "sequential 1 MiB writes, O_DIRECT, into a fresh empty image"
  row seq_write_allocated "MB/s" higher "${WR[prl.sa]}" "${WR[peer.sa]}" "${WR[limit.sa]}" "peer>=1.5" "sequential 1 MiB writes, O_DIRECT, into a copy of base.hds"
  row rand_write_4k "IOPS" higher "${WR[prl.rw]}" "${WR[peer.rw]}" "${WR[limit.rw]}" "peer>=1.5" "random 4 KiB writes, O_DIRECT, libaio QD32 x 4 jobs, allocated clusters"
fi

# --- small random I/O: reads QD32 x 4 and QD1 (latency), cache on and off, and writes; sides in turn run by run -------
# Every side stays mounted for the whole subset and the sides take turns run by run, so a burst of load from other
# work on the machine hits all of them alike. prl is the default 64 MiB block cache, prl0 --cache-size 0.
if want rand; then
  SAMPLES=${PRLFUSE_SAMPLES:-/work/shared/samples/parallels-desktop}
  [ -s "$SHM/base.raw" ] || qemu-img convert -q -f parallels -O raw "$BASE" "$SHM/base.raw"
  warm "$BASE"
  sets=(base)
  if [ -d "$SAMPLES/expanding.hdd" ]; then
    rm -rf "$W/sample.hdd"; cp -r "$SAMPLES/expanding.hdd" "$W/sample.hdd"; gunzip -f "$W/sample.hdd"/*.hds.gz
    qemu-img convert -q -f parallels -O raw "$W/sample.hdd"/*.hds "$SHM/sample.raw"
    sets+=(sample)
  fi
  declare -A RS RQ RP RL
  for set in "${sets[@]}"; do
    case $set in
      base) src=$BASE; img=$BASE; raw=$SHM/base.raw; size=$SIZE ;;
      sample) src=$W/sample.hdd; img=$(echo "$W/sample.hdd"/*.hds); raw=$SHM/sample.raw; size=100M ;;
    esac
    log "rand $set: prlfuse (cache on, cache off), qemu-storage-daemon, raw file in tmpfs"
    prl_mount "$src" "$W/m-rand" --read-only; pid_on=$PRL_PID
    prl_mount "$src" "$W/m-rand0" --read-only --cache-size 0; pid_off=$PRL_PID
    mapfile -t bd < <(qsd_image "$img" off); qsd_start "$W/qsd-rand" off "${bd[@]}"
    declare -A F=([prl]=$W/m-rand/current.raw [prl0]=$W/m-rand0/current.raw [peer]=$W/qsd-rand [limit]=$raw)
    declare -A QS=() QQ=() QP=() QL=()
    for ((i = 0; i < RUNS; i++)); do
      for side in prl prl0 peer limit; do
        QS[$side]+="$(fio_run riops --filename="${F[$side]}" --rw=randread --bs=4k --direct=1 --ioengine=libaio --iodepth=32 --numjobs=4 --size=$size --time_based --runtime=6 --randrepeat=0) "
        read -r iops p50 p99 < <(fio_lat --filename="${F[$side]}" --rw=randread --bs=4k --direct=1 --ioengine=libaio --iodepth=1 --size=$size --time_based --runtime=4 --randrepeat=0)
        QQ[$side]+="$iops "; QP[$side]+="$p50 "; QL[$side]+="$p99 "
      done
    done
    PRL_PID=$pid_on; prl_unmount "$W/m-rand"; PRL_PID=$pid_off; prl_unmount "$W/m-rand0"; qsd_stop
    for side in prl prl0 peer limit; do
      read -r -a a <<< "${QS[$side]}"; read -r -a b <<< "${QQ[$side]}"; read -r -a c <<< "${QP[$side]}"; read -r -a d <<< "${QL[$side]}"
      log "  $set $side: QD32x4 ${a[*]} IOPS; QD1 ${b[*]} IOPS, p50 ${c[*]} us, p99 ${d[*]} us (load $(cut -d' ' -f1 /proc/loadavg))"
      RS[$set.$side]=$(median "${a[@]}"); RQ[$set.$side]=$(median "${b[@]}"); RP[$set.$side]=$(median "${c[@]}"); RL[$set.$side]=$(median "${d[@]}")
    done
  done
  for set in "${sets[@]}"; do
    what="base.hds (2 GiB, 1 MiB clusters, host file in the page cache)"; [ $set = sample ] && what="the Parallels Desktop sample expanding.hdd (100 MiB)"
    row rand_read_4k_qd32_$set "IOPS" higher "${RS[$set.prl]}" "${RS[$set.peer]}" "${RS[$set.limit]}" "peer>=6&limit>=0.25" "random 4 KiB reads, O_DIRECT, libaio QD32 x 4 jobs, $what, read-only mount"
    row rand_read_4k_qd1_$set "IOPS" higher "${RQ[$set.prl]}" "${RQ[$set.peer]}" "${RQ[$set.limit]}" "peer>=6&limit>=0.25" "random 4 KiB reads, O_DIRECT, libaio QD1, $what"
    row rand_read_4k_qd1_p50_$set "us" lower "${RP[$set.prl]}" "${RP[$set.peer]}" "${RP[$set.limit]}" "-" "QD1 completion latency, median"
    row rand_read_4k_qd1_p99_$set "us" lower "${RL[$set.prl]}" "${RL[$set.peer]}" "${RL[$set.limit]}" "-" "QD1 completion latency, 99th percentile"
    row cache_rand_qd32_$set "IOPS" higher "${RS[$set.prl]}" "${RS[$set.prl0]}" null "cache>=0.95" "the QD32 x 4 row: cache on (64 MiB) vs --cache-size 0, $set (must not cost; 0.95 leaves room for noise)"
    row cache_rand_qd1_$set "IOPS" higher "${RQ[$set.prl]}" "${RQ[$set.prl0]}" null "cache>=0.95" "the QD1 row: cache on vs off, $set"
  done

  # Writes: copies of base.hds (allocated clusters), all three open at once, in turn run by run.
  log "rand writes: copies of base.hds through prlfuse and qsd, raw file in tmpfs"
  cp "$BASE" "$W/rw-prl.hds"; cp "$BASE" "$W/rw-peer.hds"; cp "$SHM/base.raw" "$SHM/rw.raw"
  prl_mount "$W/rw-prl.hds" "$W/m-randw"; pid_w=$PRL_PID
  mapfile -t bd < <(qsd_image "$W/rw-peer.hds" on); qsd_start "$W/qsd-randw" on "${bd[@]}"
  declare -A F=([prl]=$W/m-randw/current.raw [peer]=$W/qsd-randw [limit]=$SHM/rw.raw)
  declare -A WS=() WQ=()
  for ((i = 0; i < RUNS; i++)); do
    for side in prl peer limit; do
      WS[$side]+="$(fio_run wiops --filename="${F[$side]}" --rw=randwrite --bs=4k --direct=1 --ioengine=libaio --iodepth=32 --numjobs=4 --size=$SIZE --time_based --runtime=6 --randrepeat=0) "
      read -r iops p50 p99 < <(fio_lat --filename="${F[$side]}" --rw=randwrite --bs=4k --direct=1 --ioengine=libaio --iodepth=1 --size=$SIZE --time_based --runtime=4 --randrepeat=0)
      WQ[$side]+="$iops "
    done
  done
  PRL_PID=$pid_w; prl_unmount "$W/m-randw"; qsd_stop
  rm -f "$W/rw-prl.hds" "$W/rw-peer.hds" "$SHM/rw.raw"
  declare -A RW
  for side in prl peer limit; do
    read -r -a a <<< "${WS[$side]}"; read -r -a b <<< "${WQ[$side]}"
    log "  writes $side: QD32x4 ${a[*]} IOPS; QD1 ${b[*]} IOPS (load $(cut -d' ' -f1 /proc/loadavg))"
    RW[$side.s]=$(median "${a[@]}"); RW[$side.q]=$(median "${b[@]}")
  done
  row rand_write_4k_qd32 "IOPS" higher "${RW[prl.s]}" "${RW[peer.s]}" "${RW[limit.s]}" "peer>=3" "random 4 KiB writes, O_DIRECT, libaio QD32 x 4 jobs, a copy of base.hds (allocated clusters)"
  row rand_write_4k_qd1 "IOPS" higher "${RW[prl.q]}" "${RW[peer.q]}" "${RW[limit.q]}" "peer>=3" "random 4 KiB writes, O_DIRECT, libaio QD1, the same copy"
fi

# --- ext4 in a loop device inside the disk: cat a 1 GiB file ------------------------------------------------------------
if want ext4; then
  log "ext4: building the image through prlfuse (mkfs.ext4 on current.raw, copy 1 GiB in)"
  img=$W/ext4.hds; rm -f "$img"
  qemu-img create -q -f parallels "$img" $SIZE
  head -c 1G "$DATA/chain.raw" > "$W/file1g"
  prl_mount "$img" "$W/m-ext4"
  mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0,nodiscard "$W/m-ext4/current.raw"
  loop=$(losetup -f --show "$W/m-ext4/current.raw"); LOOPS+=("$loop")
  mkdir -p "$W/e"; mount "$loop" "$W/e"; cp "$W/file1g" "$W/e/file"; umount "$W/e"
  losetup -d "$loop"; prl_unmount "$W/m-ext4"; rm -f "$W/file1g"
  cp "$img" "$W/ext4-peer.hds"
  qemu-img convert -q -f parallels -O raw "$img" "$SHM/ext4.raw"
  declare -A EX
  for dio in off on; do
    for side in prl peer limit; do
      t=()
      for ((i = 0; i < RUNS; i++)); do
        drop_caches
        case $side in
          prl) warm "$img"; prl_mount "$img" "$W/m-ext4"; f=$W/m-ext4/current.raw ;;
          peer) warm "$W/ext4-peer.hds"; mapfile -t bd < <(qsd_image "$W/ext4-peer.hds" on); qsd_start "$W/qsd-ext4" on "${bd[@]}"; f=$W/qsd-ext4 ;;
          limit) f=$SHM/ext4.raw ;;
        esac
        loop=$(losetup -f --show --direct-io=$dio "$f"); LOOPS+=("$loop")
        mount -o ro "$loop" "$W/e"
        t0=$(now); cat "$W/e/file" > /dev/null; t1=$(now)
        umount "$W/e"; losetup -d "$loop"
        case $side in prl) prl_unmount "$W/m-ext4" ;; peer) qsd_stop ;; esac
        t+=("$(awk -v s="$(elapsed "$t0" "$t1")" 'BEGIN {printf "%.1f", 1073.741824 / s}')")
      done
      log "  ext4 loop direct-io=$dio $side: ${t[*]} MB/s"
      EX[$dio.$side]=$(median "${t[@]}")
    done
  done
  rm -f "$img" "$W/ext4-peer.hds" "$SHM/ext4.raw"
  row ext4_loop_buffered "MB/s" higher "${EX[off.prl]}" "${EX[off.peer]}" "${EX[off.limit]}" "-" "cat a 1 GiB file from ext4 on losetup (buffered loop, as mount -o loop), caches dropped, image re-warmed"
  row ext4_loop_direct "MB/s" higher "${EX[on.prl]}" "${EX[on.peer]}" "${EX[on.limit]}" "-" "the same with losetup --direct-io=on"
fi

# --- the top of the 3-level chain -------------------------------------------------------------------------------------
if want chain; then
  warm "$BUNDLE"/*.hds "$DATA/chain.raw"
  # The peer cannot serve the chain: QEMU's --blockdev schema has no "backing" for the parallels driver (only
  # qemu-img/qemu-io's --image-opts takes one), so its chain column is qemu-img convert, what users do today.
  declare -A CH
  for side in prl peer limit; do
    a=(); t=()
    for ((i = 0; i < RUNS; i++)); do
      case $side in
        prl) t0=$(now); prl_mount "$BUNDLE" "$W/m-chain" --read-only
             dd if="$W/m-chain/current.raw" of=/dev/null bs=1M iflag=direct status=none; t1=$(now)
             a+=("$(fio_run rbw --filename="$W/m-chain/current.raw" --rw=read --bs=1M --direct=1 --ioengine=psync --size=$SIZE)")
             prl_unmount "$W/m-chain" ;;
        peer) t0=$(now); qemu-img convert -q --image-opts "driver=parallels,file.filename=$BUNDLE/top.hds,backing.driver=parallels,backing.file.filename=$BUNDLE/mid.hds,backing.backing.driver=parallels,backing.backing.file.filename=$BUNDLE/base.hds" -O raw "$W/convert.raw"; t1=$(now)
              rm -f "$W/convert.raw"
              a+=("$(awk -v s="$(elapsed "$t0" "$t1")" 'BEGIN {printf "%.1f", 2147.483648 / s}')") ;;
        limit) t0=$(now); dd if="$DATA/chain.raw" of=/dev/null bs=1M status=none; t1=$(now)
               a+=("$(fio_run rbw --filename="$DATA/chain.raw" --rw=read --bs=1M --direct=0 --invalidate=0 --ioengine=psync --size=$SIZE)") ;;
      esac
      t+=("$(elapsed "$t0" "$t1")")
    done
    log "  chain $side: seq O_DIRECT ${a[*]} MB/s; time to all data ${t[*]} s"
    CH[$side.sd]=$(median "${a[@]}"); CH[$side.t]=$(median "${t[@]}")
  done
  row chain_top_read "MB/s" higher "${CH[prl.sd]}" "${CH[peer.sd]}" "${CH[limit.sd]}" "row:seq_read_direct>=0.9" "current.raw of the 3-level chain, sequential 1 MiB O_DIRECT (peer: qemu-img convert of the chain to raw, 2 GiB / its time; limit: chain.raw buffered)"
  row chain_all_data_time "s" lower "${CH[prl.t]}" "${CH[peer.t]}" "${CH[limit.t]}" "-" "time until all 2 GiB of the chain top were read: prlfuse mount + dd; peer: qemu-img convert to raw (what users do today); limit: dd of chain.raw"
fi

# --- a 2 TiB disk with 8 snapshots: mount and info time --------------------------------------------------------------
if want big; then
  big=$W/big.hdd
  if [ ! -s "$big/DiskDescriptor.xml" ]; then
    log "big: 9 images of 2 TiB (a few writes each) and a chain descriptor"
    rm -rf "$big"; mkdir -p "$big"
    sectors=$((2 << 40 >> 9))
    images=""; shots=""; parent="{00000000-0000-0000-0000-000000000000}"
    for i in 0 1 2 3 4 5 6 7 8; do
      guid=$(printf '{%08x-0000-4000-8000-%012x}' $((0x5a5a0000 + i)) $((i + 1)))
      qemu-img create -q -f parallels "$big/s$i.hds" 2T
      qemu-io -f parallels -c "write -q -P $((i + 1)) $((i * 200 + 3))G 1M" -c "write -q -P $((i + 1)) $((i * 13 + 1))G 64k" -c "write -q -P $((i + 7)) 0 4k" "$big/s$i.hds" >/dev/null
      images+="    <Image><GUID>$guid</GUID><Type>Compressed</Type><File>s$i.hds</File></Image>"$'\n'
      shots+="    <Shot><GUID>$guid</GUID><ParentGUID>$parent</ParentGUID></Shot>"$'\n'
      parent=$guid
    done
    cat > "$big/DiskDescriptor.xml" <<XML
<?xml version='1.0' encoding='UTF-8'?>
<Parallels_disk_image Version="1.0">
  <Disk_Parameters><Disk_size>$sectors</Disk_size><Cylinders>$((sectors / 512))</Cylinders><Heads>16</Heads><Sectors>32</Sectors><Padding>0</Padding></Disk_Parameters>
  <StorageData><Storage><Start>0</Start><End>$sectors</End><Blocksize>2048</Blocksize>
$images  </Storage></StorageData>
  <Snapshots>
$shots  </Snapshots>
</Parallels_disk_image>
XML
  fi
  warm "$big"/*.hds
  mt=(); mtd=(); it=(); itd=(); qm=(); qi=()
  for ((i = 0; i < RUNS + 2; i++)); do
    t0=$(now); prl_mount "$big" "$W/m-big"; head -c 4096 "$W/m-big/current.raw" > /dev/null; t1=$(now); mt+=("$(elapsed "$t0" "$t1")"); prl_unmount "$W/m-big"
    t0=$(now); dotnet "$DLL" mount "$big" "$W/m-big"; head -c 4096 "$W/m-big/current.raw" > /dev/null; t1=$(now); mtd+=("$(elapsed "$t0" "$t1")")
    PRL_PID=$(pgrep -f -- "mount .* $W/m-big --daemon-child" | head -1); prl_unmount "$W/m-big"
    t0=$(now); "$PRL" info "$big" > /dev/null; t1=$(now); it+=("$(elapsed "$t0" "$t1")")
    t0=$(now); dotnet "$DLL" info "$big" > /dev/null; t1=$(now); itd+=("$(elapsed "$t0" "$t1")")
    mapfile -t bd < <(qsd_image "$big/s8.hds" off); t0=$(now); qsd_start "$W/qsd-big" off "${bd[@]}"; head -c 4096 "$W/qsd-big" > /dev/null; t1=$(now); qm+=("$(elapsed "$t0" "$t1")"); qsd_stop
    t0=$(now); qemu-img info "$big/s8.hds" > /dev/null; t1=$(now); qi+=("$(elapsed "$t0" "$t1")")
  done
  log "  mount: prlfuse ${mt[*]} s, dotnet prlfuse.dll ${mtd[*]} s, qsd ${qm[*]} s"
  log "  info: prlfuse ${it[*]} s, dotnet prlfuse.dll ${itd[*]} s, qemu-img info ${qi[*]} s"
  row mount_2tib_8snap "s" lower "$(median "${mt[@]}")" "$(median "${qm[@]}")" null "value<0.3" "from prlfuse mount of a 2 TiB disk with 8 snapshots (9 images of 1 MiB clusters) to 4 KiB read from current.raw (published binary, warm cache); peer: qemu-storage-daemon --daemonize exporting the top 2 TiB image alone (it cannot take a parallels chain), to 4 KiB read"
  row mount_2tib_8snap_dll "s" lower "$(median "${mtd[@]}")" "$(median "${qm[@]}")" null "-" "the same with 'dotnet prlfuse.dll' (JIT)"
  row info_2tib_8snap "s" lower "$(median "${it[@]}")" "$(median "${qi[@]}")" null "value<0.1" "prlfuse info (published binary); peer: qemu-img info of the top image alone"
  row info_2tib_8snap_dll "s" lower "$(median "${itd[@]}")" "$(median "${qi[@]}")" null "-" "the same with 'dotnet prlfuse.dll' (JIT)"
fi

# --- cost by depth: a chain 1,000 snapshots deep (scripts/make-deep-chain.py: 2 GiB, 1 MiB clusters) -------------------
# No peer: qemu-storage-daemon's --blockdev cannot chain parallels images. The read rows compare the top (1,000 layers)
# with the root snapshot of the same mount (1 layer): per-cluster cost must not grow with depth.
if want depth; then
  deep=$W/deep.hdd
  [ -s "$deep/DiskDescriptor.xml" ] || { log "depth: writing a 1,000-deep chain"; rm -rf "$deep"; python3 scripts/make-deep-chain.py "$deep" 1000 2048; }
  warm "$deep"/*.hds
  root=$(grep -o '{[0-9a-f-]*}' "$deep/DiskDescriptor.xml" | awk 'NR == 1')
  dt=(); di=(); dr=(); top=(); rootv=()
  for ((i = 0; i < RUNS; i++)); do
    t0=$(now); "$PRL" info "$deep" > /dev/null; t1=$(now); di+=("$(elapsed "$t0" "$t1")")
    t0=$(now); prl_mount "$deep" "$W/m-deep" --read-only; head -c 4096 "$W/m-deep/current.raw" > /dev/null; t1=$(now); dt+=("$(elapsed "$t0" "$t1")")
    top+=("$(fio_run riops --filename="$W/m-deep/current.raw" --rw=randread --bs=4k --direct=1 --ioengine=psync --size=$SIZE --time_based --runtime=5 --randrepeat=0)")
    rootv+=("$(fio_run riops --filename="$W/m-deep/snapshots/$root.raw" --rw=randread --bs=4k --direct=1 --ioengine=psync --size=$SIZE --time_based --runtime=5 --randrepeat=0)")
    dr+=("$(hwm_mib "$PRL_PID")"); prl_unmount "$W/m-deep"
  done
  log "  1,000 deep: info ${di[*]} s; ready ${dt[*]} s; VmHWM ${dr[*]} MiB; 4k QD1 top ${top[*]} IOPS, root ${rootv[*]} IOPS"
  row depth_info_1000 "s" lower "$(median "${di[@]}")" null null "value<1" "prlfuse info of a chain 1,000 snapshots deep (draws the whole tree)"
  row depth_ready_1000 "s" lower "$(median "${dt[@]}")" null null "value<1" "prlfuse mount --read-only of the 1,000-deep chain to 4 KiB read from current.raw"
  row depth_rss_1000 "MiB" lower "$(median "${dr[@]}")" null null "value<100" "daemon VmHWM of the 1,000-deep mount after the read rows"
  row depth_read_root "IOPS" higher "$(median "${rootv[@]}")" null null "-" "random 4 KiB reads, O_DIRECT QD1, of the 1,000-deep chain's root snapshot (1 layer)"
  row depth_read_top "IOPS" higher "$(median "${top[@]}")" null null "row:depth_read_root>=0.9" "the same on current.raw, the top (1,000 layers): per cluster the same cost whatever the depth"
fi

# --- block cache on (default 64 MiB) vs off (--cache-size 0) ------------------------------------------------------------
if want cache; then
  warm "$BUNDLE"/*.hds
  mapfile -t snaps < <(grep -o '{[0-9a-f-]*}' "$BUNDLE/DiskDescriptor.xml" | awk '!s[$0]++' | head -2)
  declare -A CA
  for cache in 64M 0; do
    small=(); shared=(); seq=()
    prl_mount "$BASE" "$W/m-cache" --read-only --cache-size $cache
    prl_mount "$BUNDLE" "$W/m-cache3" --read-only --cache-size $cache
    files="$W/m-cache3/current.raw:$W/m-cache3/snapshots/${snaps[0]}.raw:$W/m-cache3/snapshots/${snaps[1]}.raw"
    for ((i = 0; i < RUNS; i++)); do
      small+=("$(fio_run riops --filename="$W/m-cache/current.raw" --rw=randread --bs=4k --direct=1 --ioengine=psync --size=32M --time_based --runtime=5 --randrepeat=0)")
      shared+=("$(fio_run riops --filename="$files" --file_service_type=random --rw=randread --bs=4k --direct=1 --ioengine=libaio --iodepth=8 --numjobs=3 --size=48M --time_based --runtime=5 --randrepeat=0)")
      seq+=("$(fio_run rbw --filename="$W/m-cache/current.raw" --rw=read --bs=1M --direct=1 --ioengine=psync --size=$SIZE)")
    done
    PRL_PID=$(pgrep -f -- "mount .* $W/m-cache --daemon-child" | head -1); prl_unmount "$W/m-cache"
    PRL_PID=$(pgrep -f -- "mount .* $W/m-cache3 --daemon-child" | head -1); prl_unmount "$W/m-cache3"
    log "  cache $cache: small repeated ${small[*]} IOPS; 3 snapshot files ${shared[*]} IOPS; seq 1M ${seq[*]} MB/s"
    CA[$cache.small]=$(median "${small[@]}"); CA[$cache.shared]=$(median "${shared[@]}"); CA[$cache.seq]=$(median "${seq[@]}")
  done
  # Cache rows: the prlfuse column is cache on, the peer column is cache off.
  row cache_small_reads "IOPS" higher "${CA[64M.small]}" "${CA[0.small]}" null "cache" "4 KiB random reads over 32 MiB, QD1 O_DIRECT: cache on vs --cache-size 0"
  row cache_shared_base "IOPS" higher "${CA[64M.shared]}" "${CA[0.shared]}" null "cache" "4 KiB random reads over the first 48 MiB of 3 snapshot files sharing base clusters, QD8 x 3: cache on vs off"
  row cache_seq_read "MB/s" higher "${CA[64M.seq]}" "${CA[0.seq]}" null "cache>=0.95" "sequential 1 MiB O_DIRECT reads: cache on vs off (must not slow down)"
fi

# --- holes are holes: a 64 GiB disk with 1 GiB written, copied by tools that ask SEEK_DATA/SEEK_HOLE ----------------
# qemu-img convert -f raw and cp --sparse=always of current.raw should cost what the written 1 GiB costs, not what
# 64 GiB of zeros cost. The yardstick is a 2 GiB disk with the same 1 GiB written; the limit is the same content as a
# sparse raw file in tmpfs (the host filesystem's SEEK_DATA). Every copy is compared with QEMU's view of the image.
SP_T= SP_DU=
sparse_copy() { # sparse_copy KIND(convert|cp) SOURCE IMAGE: one timed copy into $SHM, checked; sets SP_T (s or timeout), SP_DU
  local kind=$1 src=$2 img=$3 out fmt rc=0 t0 t1
  dd if="$src" iflag=nocache count=0 status=none # the peer's export keeps a page cache: each run starts without it
  case $kind in
    convert) out=$SHM/sparse-out.qcow2; fmt=qcow2 ;;
    cp) out=$SHM/sparse-out.raw; fmt=raw ;;
  esac
  rm -f "$out"
  t0=$(now)
  case $kind in
    convert) timeout "$SPARSE_TIMEOUT" qemu-img convert -q -f raw "$src" -O qcow2 "$out" || rc=$? ;;
    cp) timeout "$SPARSE_TIMEOUT" cp --sparse=always "$src" "$out" || rc=$? ;;
  esac
  t1=$(now)
  if [ "$rc" = 124 ]; then rm -f "$out"; SP_T=timeout; SP_DU=; return; fi
  [ "$rc" = 0 ] || { log "sparse: FAILED: $kind of $src exited with $rc"; exit 1; }
  if ! qemu-img compare -q -f parallels "$img" -F "$fmt" "$out"; then
    log "sparse: MISMATCH: the $kind of $src differs from QEMU's view of $img"
    exit 1
  fi
  SP_T=$(elapsed "$t0" "$t1")
  SP_DU=$(du -k "$out" | awk '{printf "%.1f", $1 / 1024}')
  rm -f "$out"
}
sparse_image() { # sparse_image GIB: a GIB GiB image (1 MiB clusters) with 1024 distinct 1 MiB clusters written, seeded
  local gib=$1 img=$W/sparse-$1.hds
  [ -s "$img" ] && return 0
  log "sparse: $gib GiB image, 1 GiB written as 1 MiB pieces at seeded random clusters"
  rm -f "$img.tmp"
  qemu-img create -q -f parallels -o cluster_size=1M "$img.tmp" "${gib}G"
  mapfile -t args < <(awk -v clusters=$((gib << 10)) -v seed=$((20250700 + gib)) 'BEGIN {
    srand(seed)
    for (i = 0; i < clusters; i++) c[i] = i
    for (i = 0; i < 1024; i++) {
      j = i + int(rand() * (clusters - i)); t = c[i]; c[i] = c[j]; c[j] = t
      printf "-c\nwrite -q -P %d %dM 1M\n", i % 255 + 1, c[i]
    }
  }')
  qemu-io -f parallels "${args[@]}" "$img.tmp" >/dev/null
  local written
  written=$(qemu-img map -f parallels --output=json "$img.tmp" | python3 -c 'import json, sys; print(sum(e["length"] for e in json.load(sys.stdin) if e["data"]))')
  [ "$written" = 1073741824 ] || { log "sparse: $img.tmp holds $written bytes, not 1 GiB"; exit 1; }
  mv "$img.tmp" "$img"
}
if want sparse; then
  SPARSE_TIMEOUT=${PRLFUSE_SPARSE_TIMEOUT:-300}
  declare -A SP
  for gib in 2 64; do
    sparse_image "$gib"
    img=$W/sparse-$gib.hds
    qemu-img convert -q -f parallels -O raw "$img" "$SHM/sparse-$gib.raw"
    warm "$img"
    prl_mount "$img" "$W/m-sparse" --read-only
    mapfile -t bd < <(qsd_image "$img" off); qsd_start "$W/qsd-sparse" off "${bd[@]}"
    declare -A ST=()
    for ((i = 0; i < RUNS; i++)); do
      for side in prl peer limit; do
        case $side in
          prl) f=$W/m-sparse/current.raw ;;
          peer) f=$W/qsd-sparse ;;
          limit) f=$SHM/sparse-$gib.raw ;;
        esac
        for kind in convert cp; do
          if [ "${ST[$side.$kind.timeout]:-}" = 1 ]; then continue; fi # one timeout is the figure; the next would be too
          sparse_copy "$kind" "$f" "$img"
          if [ "$SP_T" = timeout ]; then
            log "  $gib GiB $kind $side: TIMEOUT after $SPARSE_TIMEOUT s"
            ST[$side.$kind.timeout]=1; ST[$side.$kind]="$SPARSE_TIMEOUT"
            SP[$gib.$kind.timeout]+="${SP[$gib.$kind.timeout]:+, }$side"
            continue
          fi
          ST[$side.$kind]+="$SP_T "
          [ "$kind" = cp ] && ST[$side.du]+="$SP_DU "
        done
      done
    done
    qsd_stop; prl_unmount "$W/m-sparse"; rm -f "$SHM/sparse-$gib.raw"
    for side in prl peer limit; do
      for kind in convert cp du; do
        read -r -a v <<< "${ST[$side.$kind]:-}"
        log "  $gib GiB $side $kind: ${v[*]:-none}"
        SP[$gib.$side.$kind]=$(median "${v[@]}")
      done
    done
  done
  timed_out() { [ -z "${SP[$1.$2.timeout]:-}" ] || echo "; TIMEOUT after $SPARSE_TIMEOUT s (the figure is that cap): ${SP[$1.$2.timeout]}"; }
  what="1 GiB written as 1024 x 1 MiB at random clusters, read-only mount; limit: the content as a sparse raw file in tmpfs"
  row sparse_convert_2g "s" lower "${SP[2.prl.convert]}" "${SP[2.peer.convert]}" "${SP[2.limit.convert]}" "-" "yardstick: qemu-img convert -f raw VIEW -O qcow2 of a 2 GiB disk ($what)$(timed_out 2 convert)"
  row sparse_cp_2g "s" lower "${SP[2.prl.cp]}" "${SP[2.peer.cp]}" "${SP[2.limit.cp]}" "-" "yardstick: cp --sparse=always VIEW of the same 2 GiB disk$(timed_out 2 cp)"
  row sparse_convert_64g "s" lower "${SP[64.prl.convert]}" "${SP[64.peer.convert]}" "${SP[64.limit.convert]}" "row:sparse_convert_2g<=2" "the same qemu-img convert of a 64 GiB disk with the same 1 GiB written: proportional to the 1 GiB is at most twice the yardstick$(timed_out 64 convert)"
  row sparse_cp_64g "s" lower "${SP[64.prl.cp]}" "${SP[64.peer.cp]}" "${SP[64.limit.cp]}" "row:sparse_cp_2g<=2" "the same cp --sparse=always of the 64 GiB disk$(timed_out 64 cp)"
  row sparse_cp_allocated "MiB" lower "${SP[64.prl.du]}" "${SP[64.peer.du]}" "${SP[64.limit.du]}" "value<1100" "du of the cp --sparse=always copy of the 64 GiB disk (1024 MiB written)"
fi

# --- NBD: nbdcopy of base.hds from prlfuse serve vs qemu-nbd vs qemu-nbd of the raw bytes in tmpfs ---------------------
# nbdcopy with its defaults (4 connections when the server allows multi-conn, 64 requests of 256 KiB in flight) to
# null:, so the figure is the server and the socket, not a destination. The servers stay up; the sides take turns run
# by run. Once per server the copy goes to a file in tmpfs and is compared with the image.
if want nbd; then
  for tool in qemu-nbd nbdcopy nbdinfo; do
    command -v "$tool" >/dev/null || { echo "bench-fuse: $tool is missing (apt-get install qemu-utils libnbd-bin)" >&2; exit 1; }
  done
  warm "$BASE"
  [ -s "$SHM/base.raw" ] || qemu-img convert -q -f parallels -O raw "$BASE" "$SHM/base.raw"
  declare -A NS=([prl]=$W/nbd-prl.sock [peer]=$W/nbd-peer.sock [limit]=$W/nbd-limit.sock)
  declare -A NP
  log "nbd: prlfuse serve --read-only, qemu-nbd -f parallels --read-only --shared=8, qemu-nbd -f raw of base.raw in tmpfs"
  nbd_start "${NS[prl]}" "$PRL" serve "$BASE" --read-only --socket "${NS[prl]}"; NP[prl]=${NBD_PIDS[-1]}
  nbd_start "${NS[peer]}" qemu-nbd -f parallels --read-only --shared=8 --persistent --socket "${NS[peer]}" -x current "$BASE"; NP[peer]=${NBD_PIDS[-1]}
  nbd_start "${NS[limit]}" qemu-nbd -f raw --read-only --shared=8 --persistent --socket "${NS[limit]}" -x current "$SHM/base.raw"; NP[limit]=${NBD_PIDS[-1]}
  for side in prl peer; do
    nbdcopy "nbd+unix:///current?socket=${NS[$side]}" "$SHM/nbd-copy.raw"
    if ! qemu-img compare -q -f raw -F parallels "$SHM/nbd-copy.raw" "$BASE"; then
      echo "bench-fuse: the nbdcopy from $side differs from base.hds" >&2; exit 1
    fi
    rm -f "$SHM/nbd-copy.raw"
  done
  declare -A NC
  for ((i = 0; i < RUNS; i++)); do
    for side in prl peer limit; do
      t0=$(now); nbdcopy "nbd+unix:///current?socket=${NS[$side]}" null:; t1=$(now)
      NC[$side]+="$(awk -v s="$(elapsed "$t0" "$t1")" 'BEGIN {printf "%.1f", 2147.483648 / s}') "
    done
  done
  nbd_hwm_prl=$(hwm_mib "${NP[prl]}"); nbd_hwm_peer=$(hwm_mib "${NP[peer]}")
  nbd_stop_all
  read -r -a np <<< "${NC[prl]}"; read -r -a nq <<< "${NC[peer]}"; read -r -a nl <<< "${NC[limit]}"
  log "  nbdcopy to null: prlfuse ${np[*]} MB/s; qemu-nbd ${nq[*]} MB/s; qemu-nbd of raw in tmpfs ${nl[*]} MB/s"
  NBD_PRL=$(median "${np[@]}"); NBD_PEER=$(median "${nq[@]}"); NBD_LIMIT=$(median "${nl[@]}")
  row nbd_seq_read "MB/s" higher "$NBD_PRL" "$NBD_PEER" "$NBD_LIMIT" "peer>=1.5" "nbdcopy of base.hds (2 GiB) to null: from prlfuse serve --read-only; peer: qemu-nbd -f parallels --read-only --shared=8 of the same image; limit: qemu-nbd -f raw of the same bytes in tmpfs"
  row nbd_peak_rss "MiB" lower "$nbd_hwm_prl" "$nbd_hwm_peer" null "-" "server VmHWM after the nbdcopy runs"
fi

load_after=$(cut -d' ' -f1-3 /proc/loadavg)
total=$(elapsed "$started" "$(now)")
python3 bench/fuse/report.py "$rows" "$RESULTS" \
  --machine "nproc=$(nproc)" \
  --machine "cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)" \
  --machine "memory=$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)" \
  --machine "kernel=$(uname -r)" \
  --machine "libfuse=$(fusermount3 -V 2>&1 | awk '{print $NF}')" \
  --machine "qemu=$(qemu-storage-daemon --version | head -1 | awk '{print $3}')" \
  --machine "load_before=$load_before" --machine "load_after=$load_after" \
  --machine "runs=$RUNS" --machine "seconds=$total" --machine "prlfuse=$PRL" \
  --machine "date=$(date -u '+%Y-%m-%d %H:%M UTC')" --machine "subsets=$ONLY" \
  --machine "commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src 2>/dev/null || echo ' (+ uncommitted changes in src)')"
if want nbd; then
  echo "fuse nbd: nbdcopy of the 2 GiB base.hds to null: prlfuse serve $NBD_PRL MB/s, qemu-nbd $NBD_PEER MB/s, prlfuse/qemu-nbd $(awk -v a="$NBD_PRL" -v b="$NBD_PEER" 'BEGIN {printf "%.2f", a / b}') (target >= 1.5: $(awk -v a="$NBD_PRL" -v b="$NBD_PEER" 'BEGIN {print (a >= 1.5 * b) ? "MET" : "MISSED"}')); qemu-nbd of the raw bytes in tmpfs $NBD_LIMIT MB/s; medians of $RUNS runs; one copy from each server equal to the image"
fi
if want sparse; then
  # One line for the claim: the 64 GiB disk costs about what its 1 GiB of data costs (64 GiB time / 2 GiB yardstick).
  sp_ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "" || b == "" || b == 0) print "-"; else printf "%.2f", a / b}'; }
  sp_s() { awk -v a="$1" 'BEGIN {if (a == "") print "-"; else printf "%.2f s", a}'; }
  line="fuse sparse: 64 GiB disk with 1 GiB written"
  for kind in convert cp; do
    line+="; $([ $kind = convert ] && echo "qemu-img convert to qcow2" || echo "cp --sparse=always")"
    line+=" prlfuse $(sp_s "${SP[64.prl.$kind]}")${SP[64.$kind.timeout]:+ (TIMEOUT after $SPARSE_TIMEOUT s: ${SP[64.$kind.timeout]})}, qsd $(sp_s "${SP[64.peer.$kind]}")"
    line+=", time prlfuse/qsd $(sp_ratio "${SP[64.prl.$kind]}" "${SP[64.peer.$kind]}")"
    line+=", 64 GiB / 2 GiB yardstick: prlfuse $(sp_ratio "${SP[64.prl.$kind]}" "${SP[2.prl.$kind]}"), qsd $(sp_ratio "${SP[64.peer.$kind]}" "${SP[2.peer.$kind]}")"
  done
  line+="; the cp copy allocates prlfuse ${SP[64.prl.du]} MiB, qsd ${SP[64.peer.du]} MiB; every finished copy equal to QEMU's view"
  echo "$line"
fi
