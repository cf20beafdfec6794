#!/usr/bin/env bash
# Builds the demo bundle: a 64 MiB guest ext4 disk in a three-level Parallels chain (base, a snapshot, the top),
# made with e2fsprogs and qemu-img/qemu-io only, so it needs no root and no mount.
#   scripts/make-demo-bundle.sh OUTDIR   ->  OUTDIR/demo.hdd/{DiskDescriptor.xml,*.hds}
set -euo pipefail
out=${1:?usage: make-demo-bundle.sh OUTDIR}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bundle="$out/demo.hdd"
rm -rf "$bundle"; mkdir -p "$bundle"

BASE={8c1f5e33-2d0a-4c1b-9a51-3f2e6d7b0a01}
SNAP={986476cf-d62e-45d1-b355-86feca91376e}
TOP={5fbaabe3-6958-40ff-92a7-860e329aab41}

# Version 1 of the guest: what the base snapshot holds.
mkdir -p "$work/root/etc" "$work/root/docs"
echo "hello from the base snapshot" > "$work/root/hello.txt"
printf '127.0.0.1 localhost\n10.0.0.5 build-server\n' > "$work/root/etc/hosts"
for i in 1 2 3; do head -c 300000 /dev/zero | tr '\0' "$i" > "$work/root/docs/report-$i.bin"; done
mkfs.ext4 -q -F -L demo -b 4096 -d "$work/root" "$work/v1.raw" 64M >/dev/null

# Version 2: the snapshot. Version 3: the current state.
cp "$work/v1.raw" "$work/v2.raw"
echo "hello from the second snapshot" > "$work/hello2.txt"
echo "written after the first snapshot" > "$work/notes.txt"
debugfs -w -f - "$work/v2.raw" >/dev/null 2>&1 <<CMDS
rm /hello.txt
write $work/hello2.txt /hello.txt
write $work/notes.txt /notes.txt
rm /docs/report-2.bin
CMDS
cp "$work/v2.raw" "$work/v3.raw"
echo "hello from the current state" > "$work/hello3.txt"
echo "buy milk" > "$work/todo.txt"
debugfs -w -f - "$work/v3.raw" >/dev/null 2>&1 <<CMDS
rm /hello.txt
write $work/hello3.txt /hello.txt
mkdir /home
write $work/todo.txt /home/todo.txt
CMDS

name() { echo "demo.hdd.0.$1.hds"; }
qemu-img convert -q -f raw -O parallels "$work/v1.raw" "$bundle/$(name $BASE)"

# An overlay holds the 1 MiB clusters in which the newer version differs from the older one.
overlay() {
  local older=$1 newer=$2 image=$3
  qemu-img create -q -f parallels "$image" 64M
  local args=()
  for i in $(seq 0 63); do
    if ! cmp -s <(dd if="$older" bs=1M skip="$i" count=1 status=none) <(dd if="$newer" bs=1M skip="$i" count=1 status=none); then
      dd if="$newer" of="$work/chunk$i" bs=1M skip="$i" count=1 status=none
      args+=(-c "write -q -s $work/chunk$i $((i << 20)) 1M")
    fi
  done
  [ ${#args[@]} -eq 0 ] || qemu-io -f parallels "${args[@]}" "$image" >/dev/null
}
overlay "$work/v1.raw" "$work/v2.raw" "$bundle/$(name $SNAP)"
overlay "$work/v2.raw" "$work/v3.raw" "$bundle/$(name $TOP)"

cat > "$bundle/DiskDescriptor.xml" <<XML
<?xml version='1.0' encoding='UTF-8'?>
<Parallels_disk_image Version="1.0">
    <Disk_Parameters>
        <Disk_size>131072</Disk_size>
        <Cylinders>256</Cylinders>
        <Heads>16</Heads>
        <Sectors>32</Sectors>
        <Padding>0</Padding>
        <Name>demo</Name>
    </Disk_Parameters>
    <StorageData>
        <Storage>
            <Start>0</Start>
            <End>131072</End>
            <Blocksize>2048</Blocksize>
            <Image>
                <GUID>$BASE</GUID>
                <Type>Compressed</Type>
                <File>$(name $BASE)</File>
            </Image>
            <Image>
                <GUID>$SNAP</GUID>
                <Type>Compressed</Type>
                <File>$(name $SNAP)</File>
            </Image>
            <Image>
                <GUID>$TOP</GUID>
                <Type>Compressed</Type>
                <File>$(name $TOP)</File>
            </Image>
        </Storage>
    </StorageData>
    <Snapshots>
        <Shot>
            <GUID>$TOP</GUID>
            <ParentGUID>$SNAP</ParentGUID>
        </Shot>
        <Shot>
            <GUID>$BASE</GUID>
            <ParentGUID>{00000000-0000-0000-0000-000000000000}</ParentGUID>
        </Shot>
        <Shot>
            <GUID>$SNAP</GUID>
            <ParentGUID>$BASE</ParentGUID>
        </Shot>
    </Snapshots>
</Parallels_disk_image>
XML
: > "$bundle/demo.hdd"
echo "$bundle"
