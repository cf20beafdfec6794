#!/usr/bin/env bash
# Installs the system packages PrlFuse needs (Debian) and builds it. Safe to run again: installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(qemu-utils fuse3 libfuse3-dev e2fsprogs xfsprogs fio qemu-system-common gcc zlib1g-dev util-linux mount procps man-db groff-base libnbd-bin)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v dotnet >/dev/null; then
  echo "setup: the .NET 10 SDK (dotnet) is required and not on PATH" >&2
  exit 1
fi
dotnet build PrlFuse.sln -c Release -nologo -v quiet -clp:ErrorsOnly
