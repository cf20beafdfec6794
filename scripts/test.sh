#!/usr/bin/env bash
# Runs every test (unit, qemu oracle, real kernel FUSE/loop tests) and ends with "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
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
