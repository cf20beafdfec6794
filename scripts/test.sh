#!/usr/bin/env bash
# Runs every test (unit, qemu oracle, real kernel FUSE/loop tests) and ends with "N passed, N failed".
# Arguments go to `dotnet test`, e.g. --filter "FullyQualifiedName~MountTests". The unit tests alone (no root, qemu,
# installed binary or fuzz campaign; seconds) need no install:
#   dotnet test tests/PrlFuse.Tests -c Release --no-build --filter "Needs!=Kernel&Needs!=Qemu&Needs!=Installed&Needs!=Time"
set -uo pipefail
cd "$(dirname "$0")/.."
# The end-to-end tests drive what users run: the binary `make install` puts in a prefix.
prefix="$PWD/artifacts/test-prefix"
if ! make -s install PREFIX="$prefix" >/dev/null; then
  echo "test: make install PREFIX=$prefix failed"
  echo "0 passed, 1 failed, 0 skipped"
  exit 1
fi
export PRLFUSE_BIN="$prefix/bin/prlfuse"
# The FUSE-over-io_uring transport's kernel tests need the fuse module's switch on (off by default; root only).
uring=/sys/module/fuse/parameters/enable_uring
if [ "$(id -u)" -eq 0 ] && [ -w "$uring" ] && [ "$(cat "$uring")" != Y ]; then
  echo Y > "$uring" && echo "test: turned on FUSE over io_uring ($uring) for the transport tests"
fi
results=$(mktemp -d)
dotnet test tests/PrlFuse.Tests -c Release --no-build -nologo \
  --logger "console;verbosity=normal" --logger "trx;LogFileName=results.trx" --results-directory "$results" "$@"
rc=$?
trx="$results/results.trx"
if [ -f "$trx" ]; then
  counters=$(grep -o '<Counters [^>]*>' "$trx" | head -1)
  field() { sed -E "s/.* $1=\"([0-9]+)\".*/\1/" <<<"$counters"; }
  passed=$(field passed); failed=$(field failed); total=$(field total)
  skipped=$(( total - passed - failed ))
else
  passed=0; failed=1; skipped=0
  echo "test: the test run did not complete (exit $rc)"
fi
rm -rf "$results"
echo "$passed passed, $failed failed, $skipped skipped"
[ "$rc" -eq 0 ] && [ "$failed" -eq 0 ]
