#!/usr/bin/env bash
# Soak: a long mixed load (fio with verify, random read/write, several jobs) on an ext4 inside current.raw while other
# processes read the snapshot files, for DURATION seconds. Passes only if fio reports no verify error, fsck is clean,
# `prlfuse check` is clean, the snapshot files never change, and the daemon's memory shows no growth trend.
#   scripts/soak.sh [DURATION_SECONDS]      (default 600; CI runs 60)
# PRLFUSE may name the command to run (default: PRLFUSE_BIN, else the binary `make test` installs in artifacts/test-prefix).
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-600}
prlfuse() { ${PRLFUSE:-${PRLFUSE_BIN:-$(pwd)/artifacts/test-prefix/bin/prlfuse}} "$@"; }
work=$(mktemp -d /tmp/prlfuse-soak.XXXXXX)
bundle="$work/soak.hdd"; mnt="$work/mnt"; guest="$work/guest"
mkdir -p "$bundle" "$mnt" "$guest"
loop=""; readers=()
cleanup() {
  for p in "${readers[@]}"; do kill -- "-$p" 2>/dev/null || kill "$p" 2>/dev/null || true; done
  mountpoint -q "$guest" && umount "$guest" || true
  [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null || true
  prlfuse unmount "$mnt" >/dev/null 2>&1 || fusermount3 -uz "$mnt" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# A 1 GiB disk: a base snapshot with data, and an empty top.
BASE={0b5d1c2e-7a31-4f0e-9d55-1c2b3a4d5e6f}; TOP={5fbaabe3-6958-40ff-92a7-860e329aab41}
qemu-img create -q -f parallels "$bundle/base.hds" 1G
qemu-io -f parallels -c "write -P 0x5a 0 256M" -c "write -P 0xa5 512M 128M" "$bundle/base.hds" >/dev/null
qemu-img create -q -f parallels "$bundle/top.hds" 1G
cat > "$bundle/DiskDescriptor.xml" <<XML
<?xml version='1.0' encoding='UTF-8'?>
<Parallels_disk_image Version="1.0">
  <Disk_Parameters><Disk_size>2097152</Disk_size><Cylinders>4096</Cylinders><Heads>16</Heads><Sectors>32</Sectors><Padding>0</Padding></Disk_Parameters>
  <StorageData><Storage><Start>0</Start><End>2097152</End><Blocksize>2048</Blocksize>
    <Image><GUID>$BASE</GUID><Type>Compressed</Type><File>base.hds</File></Image>
    <Image><GUID>$TOP</GUID><Type>Compressed</Type><File>top.hds</File></Image>
  </Storage></StorageData>
  <Snapshots>
    <Shot><GUID>$BASE</GUID><ParentGUID>{00000000-0000-0000-0000-000000000000}</ParentGUID></Shot>
    <Shot><GUID>$TOP</GUID><ParentGUID>$BASE</ParentGUID></Shot>
  </Snapshots>
</Parallels_disk_image>
XML

prlfuse mount "$bundle" "$mnt" --cache-size 64M
pid=$(pgrep -f -- "$mnt --daemon-child" | head -1)
[ -n "$pid" ] || { echo "soak: FAILED: no daemon process found"; exit 1; }
snap="$mnt/snapshots/$BASE.raw"
want=$(sha256sum < "$snap" | cut -d' ' -f1)
loop=$(losetup --find --show "$mnt/current.raw")
mkfs.ext4 -q -F "$loop"
mount "$loop" "$guest"

# Readers of the snapshot file: its content must never change while the top is written.
# Each reader runs in its own process group (setsid) so that stopping it also stops the sha256sum holding the file.
for r in 1 2; do
  setsid bash -c "while :; do
      got=\$(sha256sum < '$snap' | cut -d' ' -f1)
      [ \"\$got\" = '$want' ] || { echo 'soak: snapshot file changed under load' > '$work/reader-failed'; exit 1; }
    done" &
  readers+=($!)
done

# Memory samples of the daemon (VmRSS, KiB) every 5 s.
( while kill -0 "$pid" 2>/dev/null; do grep VmRSS /proc/$pid/status | awk '{print $2}' >> "$work/rss"; sleep 5; done ) &
readers+=($!)

echo "soak: fio for ${duration}s on ext4 inside current.raw, 2 readers of a snapshot file"
fio --name=soak --directory="$guest" --size=96M --numjobs=3 --rw=randrw --rwmixread=50 --bsrange=4k-128k \
    --ioengine=libaio --iodepth=8 --direct=1 --fsync=32 --verify=crc32c --verify_backlog=256 --verify_fatal=1 \
    --verify_state_save=0 --time_based --runtime="$duration" --group_reporting --output-format=json --output="$work/fio.json" && fio_rc=0 || fio_rc=$?

stop_readers() {
  for p in "${readers[@]}"; do kill -- "-$p" 2>/dev/null || kill "$p" 2>/dev/null || true; done
  for p in "${readers[@]}"; do wait "$p" 2>/dev/null || true; done
  readers=()
}
stop_readers
umount "$guest"
fsck_out=$(fsck.ext4 -fn "$loop" 2>&1) && fsck_rc=0 || fsck_rc=$?
losetup -d "$loop" 2>/dev/null || true; loop=""
rss_peak=$(grep VmHWM /proc/$pid/status | awk '{print $2}')
prlfuse unmount "$mnt"
check_out=$(prlfuse check "$bundle" 2>&1) && check_rc=0 || check_rc=$?

bytes=$(grep -oE '"io_bytes" : [0-9]+' "$work/fio.json" | awk '{s+=$3} END {printf "%.0f", s}')
verify_errors=$(grep -oE '"error" : [0-9]+' "$work/fio.json" | awk '{s+=$3} END {printf "%.0f", s}')
# Growth trend: the mean of the last third of the samples against the middle third.
trend=$(awk '{a[NR]=$1} END { n=NR; if (n<6) {print "ok (few samples)"; exit}
  t=int(n/3); for(i=t+1;i<=2*t;i++) m+=a[i]; for(i=n-t+1;i<=n;i++) l+=a[i]; m/=t; l/=t;
  if (l > m*1.10 + 8192) printf "GROWING (%d -> %d KiB)", m, l; else printf "ok (%d -> %d KiB)", m, l }' "$work/rss")

echo "soak: duration ${duration}s, moved $((bytes / 1048576)) MiB through fio, verify errors $verify_errors (fio exit $fio_rc)"
echo "soak: fsck exit $fsck_rc; prlfuse check exit $check_rc; daemon RSS peak $((rss_peak / 1024)) MiB, trend $trend"
failed=0
[ "$fio_rc" -eq 0 ] && [ "$verify_errors" -eq 0 ] || { echo "soak: FAILED: fio reported errors"; failed=1; }
[ "$fsck_rc" -eq 0 ] || { echo "soak: FAILED: fsck: $fsck_out"; failed=1; }
[ "$check_rc" -eq 0 ] || { echo "soak: FAILED: prlfuse check: $check_out"; failed=1; }
[ ! -f "$work/reader-failed" ] || { cat "$work/reader-failed"; failed=1; }
case "$trend" in GROWING*) echo "soak: FAILED: memory grows"; failed=1;; esac
[ "$failed" -eq 0 ] && echo "soak: OK"
exit "$failed"
