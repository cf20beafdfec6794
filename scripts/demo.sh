#!/usr/bin/env bash
# The main job on a demo bundle the project generates itself: mount it, loop-mount an old snapshot and the current
# state, read a guest file from each, write to the current state, unmount everything. Run by `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
demo=$(pwd)/.demo
# The demo runs what a user runs: the binary `make install` produces (here into a private prefix).
if [ -z "${PRLFUSE_BIN:-}" ]; then
  echo "== 0. make install PREFIX=artifacts/demo-prefix (the single-file prlfuse, its man page and completion)"
  make -s install PREFIX="$(pwd)/artifacts/demo-prefix" >/dev/null
  PRLFUSE_BIN=$(pwd)/artifacts/demo-prefix/bin/prlfuse
fi
prlfuse() { "$PRLFUSE_BIN" "$@"; }
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

mnt="$demo/mnt"; old="$demo/old"; now="$demo/now"
cleanup() {
  $sudo umount "$old" "$now" 2>/dev/null || true
  prlfuse unmount "$mnt" 2>/dev/null || true
}
trap cleanup EXIT
cleanup
rm -rf "$demo"; mkdir -p "$mnt" "$old" "$now"

echo "== 1. generate the demo bundle: a 64 MiB ext4 guest disk with three snapshots"
bundle=$(bash scripts/make-demo-bundle.sh "$demo")
echo "== 2. prlfuse info $bundle"
prlfuse info "$bundle"

echo; echo "== 3. prlfuse mount $bundle $mnt"
prlfuse mount "$bundle" "$mnt" ${sudo:+-o allow_other}
find "$mnt" | sed "s|$demo/||" | sort

snap="$mnt/snapshots/{8c1f5e33-2d0a-4c1b-9a51-3f2e6d7b0a01}.raw"
echo; echo "== 4. mount -o loop,ro the oldest snapshot, and mount -o loop the current state (read-write)"
$sudo mount -o loop,ro "$snap" "$old"
$sudo mount -o loop "$mnt/current.raw" "$now"
echo "-- oldest snapshot: ls /        -> $(ls "$old" | tr '\n' ' ')"
echo "-- oldest snapshot: /hello.txt  -> $(cat "$old/hello.txt")"
echo "-- current state:   ls /        -> $(ls "$now" | tr '\n' ' ')"
echo "-- current state:   /hello.txt  -> $(cat "$now/hello.txt")"
echo "-- current state:   /home       -> $(ls "$now/home" | tr '\n' ' ')"

echo; echo "== 5. write to the current state"
echo "written through prlfuse on $(date -u +%F)" | $sudo tee "$now/home/from-linux.txt" >/dev/null
sync
echo "-- current state:   /home       -> $(ls "$now/home" | tr '\n' ' ')"

echo; echo "== 6. unmount: refused while the loop devices still use the files, then done cleanly"
prlfuse unmount "$mnt" || true
$sudo umount "$old" "$now"
prlfuse unmount "$mnt"
echo "-- unmounted; the top image is consistent for QEMU too:"
qemu-img check -f parallels "$bundle/demo.hdd.0.{5fbaabe3-6958-40ff-92a7-860e329aab41}.hds" | head -1
echo "-- and the oldest snapshot is unchanged; the new file is in the top snapshot:"
prlfuse export "$bundle" -o "$demo/current.raw" 2>/dev/null
debugfs -R "cat /home/from-linux.txt" "$demo/current.raw" 2>/dev/null
rm -f "$demo/current.raw"
echo "== demo done"
