#!/usr/bin/env python3
"""Writes a Parallels bundle whose snapshots form one chain DEPTH images deep, fast (qemu-img create -b per level is
slow): expandable images (magic WithoutFreeSpace, 1 MiB clusters as Parallels Desktop makes them) written directly as
the format specification (shared/specs/parallels.rst) lays them out, and a DiskDescriptor.xml naming them.
  scripts/make-deep-chain.py BUNDLE DEPTH [SIZE_MIB]
Level i (0 = root) allocates two clusters, (37 i + 11) and (101 i) modulo the disk's cluster count, and writes the byte
(i % 250) + 1 into their first 4 KiB (the rest is a hole of the image file: zeros, no disk space). So the view of level
L holds, in each cluster, what the last level up to L that allocated it wrote.
"""
import os
import struct
import sys
import uuid

CLUSTER_SECTORS = 2048
WRITTEN = 4096
CLUSTER = CLUSTER_SECTORS * 512


def clusters_of(level, count):
    return sorted({(37 * level + 11) % count, (101 * level) % count})


def write_image(path, size_bytes, level):
    count = (size_bytes + CLUSTER - 1) // CLUSTER
    header_bytes = 64 + 4 * count
    data_off = (header_bytes + CLUSTER - 1) // CLUSTER * CLUSTER_SECTORS  # data area starts on a cluster
    bat = [0] * count
    owned = clusters_of(level, count)
    for slot, cluster in enumerate(owned):
        bat[cluster] = data_off + slot * CLUSTER_SECTORS  # in sectors for WithoutFreeSpace
    header = b"WithoutFreeSpace" + struct.pack("<IIIIIQIIIQ", 2, 16, max(1, size_bytes // 512 // 16 // 32),
                                               CLUSTER_SECTORS, count, size_bytes // 512, 0, data_off, 0, 0)
    assert len(header) == 64
    with open(path, "wb") as f:
        f.write(header)
        f.write(struct.pack(f"<{count}I", *bat))
        for slot in range(len(owned)):
            f.seek(data_off * 512 + slot * CLUSTER)
            f.write(bytes([level % 250 + 1]) * WRITTEN)
        f.truncate(data_off * 512 + len(owned) * CLUSTER)


def main():
    bundle, depth = sys.argv[1], int(sys.argv[2])
    size = (int(sys.argv[3]) if len(sys.argv) > 3 else 2048) << 20
    os.makedirs(bundle, exist_ok=True)
    name = os.path.basename(bundle.rstrip("/"))
    guids = [str(uuid.UUID(int=(0x7a3e << 112) | (i + 1))) for i in range(depth)]
    images, shots = [], []
    for i, g in enumerate(guids):
        file = f"{name}.0.{{{g}}}.hds"
        write_image(os.path.join(bundle, file), size, i)
        images.append(f"    <Image><GUID>{{{g}}}</GUID><Type>Compressed</Type><File>{file}</File></Image>")
        parent = "00000000-0000-0000-0000-000000000000" if i == 0 else guids[i - 1]
        shots.append(f"    <Shot><GUID>{{{g}}}</GUID><ParentGUID>{{{parent}}}</ParentGUID></Shot>")
    sectors = size // 512
    with open(os.path.join(bundle, "DiskDescriptor.xml"), "w") as f:
        f.write(f"""<?xml version='1.0' encoding='UTF-8'?>
<Parallels_disk_image Version="1.0">
  <Disk_Parameters><Disk_size>{sectors}</Disk_size><Cylinders>{sectors // 512}</Cylinders><Heads>16</Heads><Sectors>32</Sectors><Padding>0</Padding></Disk_Parameters>
  <StorageData><Storage><Start>0</Start><End>{sectors}</End><Blocksize>{CLUSTER_SECTORS}</Blocksize>
{chr(10).join(images)}
  </Storage></StorageData>
  <Snapshots><TopGUID>{{{guids[-1]}}}</TopGUID>
{chr(10).join(shots)}
  </Snapshots>
</Parallels_disk_image>
""")
    open(os.path.join(bundle, name), "w").close()


if __name__ == "__main__":
    main()
