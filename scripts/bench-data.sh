#!/usr/bin/env bash
# Builds the benchmark images: a 3-level, 2 GiB Parallels chain and qemu's raw conversion of it (the oracle and
# the "raw file" side of the benchmarks). Made with qemu-img/qemu-io only. Skips work whose outputs exist.
#   scripts/bench-data.sh [OUTDIR]   (default /tmp/prlfuse-bench; outside the repo: ~5 GiB)
#   OUTDIR/bench.hdd/{DiskDescriptor.xml,base.hds,mid.hds,top.hds}   the bundle
#   OUTDIR/chain.raw                                                  qemu's view of the top snapshot
#   OUTDIR/qcow2/full.qcow2         base.hds's content as a fully allocated qcow2 (64 KiB clusters, qemu-img convert)
#   OUTDIR/qcow2/compressed.qcow2   2 GiB of compressible content (base64 text of random bytes) as qemu-img convert -c
set -euo pipefail
out=${1:-/tmp/prlfuse-bench}
bundle="$out/bench.hdd"
mkdir -p "$bundle"

SIZE_MIB=2048
BASE={3b1c9a6e-0d4f-4e2a-8c11-5a7e9f20b001}
MID={7d2e4f10-93ab-4c6d-b5e8-1f0a2c3d4e02}
TOP={5fbaabe3-6958-40ff-92a7-860e329aab41}

chain_opts() {
  echo "driver=parallels,file.filename=$bundle/top.hds,backing.driver=parallels,backing.file.filename=$bundle/mid.hds,backing.backing.driver=parallels,backing.backing.file.filename=$bundle/base.hds"
}

# Base: 2 GiB of random data converted to an expandable image (1 MiB clusters). Random data has no zero
# cluster, so every cluster is allocated; checked below.
if [ ! -s "$bundle/base.hds" ]; then
  echo "bench-data: base.hds (2 GiB of /dev/urandom)"
  tmp="$out/base.raw.tmp"
  head -c $((SIZE_MIB << 20)) /dev/urandom > "$tmp"
  qemu-img convert -q -f raw -O parallels "$tmp" "$bundle/base.hds.tmp"
  rm -f "$tmp"
  mv "$bundle/base.hds.tmp" "$bundle/base.hds"
fi
unallocated=$(qemu-img map -f parallels --output=json "$bundle/base.hds" | grep -c '"data": false' || true)
if [ "$unallocated" -ne 0 ]; then
  echo "bench-data: base.hds has unallocated ranges; delete $out and rerun" >&2
  exit 1
fi

# Mid: every 4th MiB rewritten (512 whole clusters), written through the chain as Parallels would.
if [ ! -s "$bundle/mid.hds" ]; then
  echo "bench-data: mid.hds (every 4th MiB)"
  qemu-img create -q -f parallels "$bundle/mid.hds.tmp" "${SIZE_MIB}M"
  args=()
  for ((mib = 0; mib < SIZE_MIB; mib += 4)); do
    args+=(-c "write -q -P $(( (mib / 4) % 255 + 1 )) $((mib << 20)) 1M")
  done
  qemu-io --image-opts "driver=parallels,file.filename=$bundle/mid.hds.tmp,backing.driver=parallels,backing.file.filename=$bundle/base.hds" "${args[@]}" >/dev/null
  mv "$bundle/mid.hds.tmp" "$bundle/mid.hds"
fi

# Top: 400 scattered 64 KiB pieces and 400 scattered 4 KiB pieces at fixed pseudo-random offsets, written through
# the chain so qemu fills the rest of each newly allocated 1 MiB cluster from the layers below.
if [ ! -s "$bundle/top.hds" ]; then
  echo "bench-data: top.hds (scattered 64 KiB and 4 KiB pieces)"
  qemu-img create -q -f parallels "$bundle/top.hds.tmp" "${SIZE_MIB}M"
  mapfile -t args < <(awk -v size=$((SIZE_MIB << 20)) 'BEGIN {
    srand(20240611)
    for (i = 0; i < 400; i++) {
      printf "-c\nwrite -q -P %d %d 64k\n", i % 250 + 3, int(rand() * (size / 65536)) * 65536
      printf "-c\nwrite -q -P %d %d 4k\n", (i * 7) % 250 + 3, int(rand() * (size / 4096)) * 4096
    }
  }')
  qemu-io --image-opts "driver=parallels,file.filename=$bundle/top.hds.tmp,backing.driver=parallels,backing.file.filename=$bundle/mid.hds,backing.backing.driver=parallels,backing.backing.file.filename=$bundle/base.hds" "${args[@]}" >/dev/null
  mv "$bundle/top.hds.tmp" "$bundle/top.hds"
fi

if [ ! -s "$bundle/DiskDescriptor.xml" ]; then
  sectors=$((SIZE_MIB << 11))
  cat > "$bundle/DiskDescriptor.xml" <<XML
<?xml version='1.0' encoding='UTF-8'?>
<Parallels_disk_image Version="1.0">
  <Disk_Parameters><Disk_size>$sectors</Disk_size><Cylinders>$((sectors / 512))</Cylinders><Heads>16</Heads><Sectors>32</Sectors><Padding>0</Padding></Disk_Parameters>
  <StorageData><Storage><Start>0</Start><End>$sectors</End><Blocksize>2048</Blocksize>
    <Image><GUID>$BASE</GUID><Type>Compressed</Type><File>base.hds</File></Image>
    <Image><GUID>$MID</GUID><Type>Compressed</Type><File>mid.hds</File></Image>
    <Image><GUID>$TOP</GUID><Type>Compressed</Type><File>top.hds</File></Image>
  </Storage></StorageData>
  <Snapshots>
    <Shot><GUID>$BASE</GUID><ParentGUID>{00000000-0000-0000-0000-000000000000}</ParentGUID></Shot>
    <Shot><GUID>$MID</GUID><ParentGUID>$BASE</ParentGUID></Shot>
    <Shot><GUID>$TOP</GUID><ParentGUID>$MID</ParentGUID></Shot>
  </Snapshots>
</Parallels_disk_image>
XML
fi

if [ ! -s "$out/chain.raw" ]; then
  echo "bench-data: chain.raw (qemu's conversion of the chain)"
  qemu-img convert -q --image-opts "$(chain_opts)" -O raw "$out/chain.raw.tmp"
  mv "$out/chain.raw.tmp" "$out/chain.raw"
fi

# qcow2: the same 2 GiB as base.hds, every cluster allocated; and a compressed image of content that compresses (random
# bytes would not: qemu-img stores a cluster uncompressed when compressing does not shrink it).
mkdir -p "$out/qcow2"
if [ ! -s "$out/qcow2/full.qcow2" ]; then
  echo "bench-data: qcow2/full.qcow2 (base.hds converted)"
  qemu-img convert -q -f parallels -O qcow2 "$bundle/base.hds" "$out/qcow2/full.qcow2.tmp"
  mv "$out/qcow2/full.qcow2.tmp" "$out/qcow2/full.qcow2"
fi
unallocated=$(qemu-img map -f qcow2 --output=json "$out/qcow2/full.qcow2" | grep -c '"data": false' || true)
if [ "$unallocated" -ne 0 ]; then
  echo "bench-data: qcow2/full.qcow2 has unallocated ranges; delete it and rerun" >&2
  exit 1
fi
if [ ! -s "$out/qcow2/compressed.qcow2" ]; then
  echo "bench-data: qcow2/compressed.qcow2 (2 GiB of base64 text, qemu-img convert -c)"
  tmp="$out/qcow2/compressible.raw.tmp"
  head -c $((SIZE_MIB * 3 << 18)) /dev/urandom | base64 -w 0 > "$tmp"
  truncate -s "${SIZE_MIB}M" "$tmp"
  qemu-img convert -q -c -f raw -O qcow2 "$tmp" "$out/qcow2/compressed.qcow2.tmp"
  rm -f "$tmp"
  mv "$out/qcow2/compressed.qcow2.tmp" "$out/qcow2/compressed.qcow2"
fi
unallocated=$(qemu-img map -f qcow2 --output=json "$out/qcow2/compressed.qcow2" | grep -c '"data": false' || true)
if [ "$unallocated" -ne 0 ]; then
  echo "bench-data: qcow2/compressed.qcow2 has unallocated ranges; delete it and rerun" >&2
  exit 1
fi

echo "bench-data: $bundle ($(du -sh "$bundle" | cut -f1)), $out/chain.raw"
