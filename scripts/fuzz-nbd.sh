#!/usr/bin/env bash
# Long NBD fuzz run: scripts/fuzz-nbd.sh [SEED] [COUNT] [FIRST]. Runs COUNT cases (connections) of the malformed-client
# fuzzer (tests/PrlFuse.Tests/Nbd) from SEED against the installed `prlfuse serve`, once read-write and once
# --read-only; prints progress and ends with one "N cases, M findings" line per server. PRLFUSE_NBD_SERVER=qemu-nbd
# fuzzes qemu-nbd instead. Replay cases with PRLFUSE_NBD_FUZZ_REPLAY=SEED:INDEX[,INDEX...] and the Replay_from_environment
# test.
set -uo pipefail
cd "$(dirname "$0")/.."
seed=${1:-1}
count=${2:-100000}
first=${3:-0}
out=artifacts/fuzz
mkdir -p "$out"
report="$out/nbd-report-seed$seed.txt"
: > "$report"
prefix="$PWD/artifacts/test-prefix"
make -s install PREFIX="$prefix" >/dev/null || exit 2
dotnet build tests/PrlFuse.Tests -c Release -nologo -v quiet || exit 2
tail -n +1 -f "$report" &
tailer=$!
PRLFUSE_BIN="$prefix/bin/prlfuse" PRLFUSE_NBD_FUZZ_SEED=$seed PRLFUSE_NBD_FUZZ_CONNECTIONS=$count PRLFUSE_NBD_FUZZ_FIRST=$first \
PRLFUSE_NBD_FUZZ_REPORT="$PWD/$report" \
  dotnet test tests/PrlFuse.Tests -c Release --no-build -nologo \
  --filter "FullyQualifiedName~PrlFuse.Tests.Nbd.NbdFuzzTests.Server_survives_malformed_clients" >"$out/nbd-dotnet-test.log" 2>&1
rc=$?
sleep 1
kill "$tailer" 2>/dev/null
wait "$tailer" 2>/dev/null
if ! grep -q "findings, sentinel reads" "$report"; then
  echo "fuzz-nbd: the run did not finish (exit $rc); see $out/nbd-dotnet-test.log"
  exit 2
fi
grep "findings, sentinel reads" "$report"
[ "$rc" -eq 0 ] || echo "fuzz-nbd: failed (exit $rc); see $out/nbd-dotnet-test.log"
exit $rc
