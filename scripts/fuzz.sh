#!/usr/bin/env bash
# Long fuzz run: [FUZZ_FORMAT=parallels|qcow2|qed] scripts/fuzz.sh [SEED] [COUNT] [FIRST]. Runs COUNT cases of the
# deterministic mutation fuzzer (tests/PrlFuse.Tests/Fuzz) on the seeds of one format, from SEED, prints progress and
# ends with "cases run: N, findings: M". The long run is 200,000 cases for Parallels and 100,000 for qcow2 and for
# QED (the default COUNT of each); CI runs a share of each (FuzzTests.CiCases, Qcow2CiCases, QedCiCases). Each finding's files are saved under
# artifacts/fuzz/findings-FORMAT/seedSEED-caseINDEX (replay one with PRLFUSE_FUZZ_FORMAT=FORMAT
# PRLFUSE_FUZZ_REPLAY=SEED:INDEX and the Replay_from_environment test).
set -uo pipefail
cd "$(dirname "$0")/.."
seed=${1:-1}
first=${3:-0}
format=${FUZZ_FORMAT:-parallels}
case "$format" in
  parallels) count=${2:-200000} ;;
  qcow2|qed) count=${2:-100000} ;;
  *) echo "fuzz: FUZZ_FORMAT=$format: parallels, qcow2 or qed"; exit 2 ;;
esac
out=artifacts/fuzz
findings="$out/findings-$format"
mkdir -p "$findings"
report="$out/report-$format-seed$seed.txt"
: > "$report"
dotnet build tests/PrlFuse.Tests -c Release -nologo -v quiet || exit 2
tail -n +1 -f "$report" &
tailer=$!
PRLFUSE_FUZZ_FORMAT=$format PRLFUSE_FUZZ_SEED=$seed PRLFUSE_FUZZ_COUNT=$count PRLFUSE_FUZZ_FIRST=$first \
PRLFUSE_FUZZ_REPORT="$PWD/$report" PRLFUSE_FUZZ_SAVE="$PWD/$findings" \
  dotnet test tests/PrlFuse.Tests -c Release --no-build -nologo \
  --filter "FullyQualifiedName=PrlFuse.Tests.Fuzz.FuzzTests.Long_run_from_environment" >"$out/dotnet-test-$format.log" 2>&1
rc=$?
sleep 1
kill "$tailer" 2>/dev/null
wait "$tailer" 2>/dev/null
if ! grep -q "^cases run:" "$report"; then
  echo "fuzz: the run did not finish (exit $rc); see $out/dotnet-test-$format.log"
  exit 2
fi
grep "^cases run:" "$report" | tail -1
exit $rc
