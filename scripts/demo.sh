#!/usr/bin/env bash
# The main job on a demo bundle the project generates itself: show the disk, then read a guest file from every
# snapshot. Run by `make demo` after setup.
set -euo pipefail
cd "$(dirname "$0")/.."
demo=.demo
mkdir -p "$demo"
prlfuse() { dotnet src/PrlFuse.Cli/bin/Release/net10.0/prlfuse.dll "$@"; }

echo "== generating the demo bundle (a 64 MiB ext4 guest disk, three snapshots)"
bundle=$(bash scripts/make-demo-bundle.sh "$demo")
echo "== prlfuse info $bundle"
prlfuse info "$bundle"
for snap in {8c1f5e33-2d0a-4c1b-9a51-3f2e6d7b0a01} {986476cf-d62e-45d1-b355-86feca91376e} {5fbaabe3-6958-40ff-92a7-860e329aab41}; do
  echo "== snapshot $snap"
  prlfuse export "$bundle" --snapshot "$snap" -o "$demo/$snap.raw"
  echo "-- ls /: $(debugfs -R "ls -p /" "$demo/$snap.raw" 2>/dev/null | awk -F/ '$6 != "" && $6 !~ /^\./ {printf "%s ", $6}')"
  echo "-- cat /hello.txt: $(debugfs -R 'cat /hello.txt' "$demo/$snap.raw" 2>/dev/null)"
  rm -f "$demo/$snap.raw"
done
echo "== demo done"
