#!/usr/bin/env bash
# Runs the config-parser fuzzer for a while and prints one summary line.
#   run_fuzz.sh FUZZER SECONDS WORKDIR [extra libFuzzer flags]
# WORKDIR/corpus keeps the inputs found (libFuzzer adds to the first folder it is given),
# WORKDIR/artifacts receives crashing inputs, WORKDIR/last.log the fuzzer's output.
set -uo pipefail
fuzzer=$1 seconds=$2 work=$3
shift 3
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
mkdir -p "$work/corpus" "$work/artifacts"
# Leaks are findings too; halt on the first UBSan report with its stack.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
# A sweep at the limit of 100000 points is a short input that takes ~80 s and ~1.5 GB to validate
# under the sanitizers (~2 s and 460 MB in a release build): slow, not a finding, hence the limits.
"$fuzzer" -max_total_time="$seconds" -timeout=300 -rss_limit_mb=4096 -max_len=4096 -print_final_stats=1 \
  -dict="$here/config.dict" -artifact_prefix="$work/artifacts/" "$@" \
  "$work/corpus" "$here/seeds" "$root/configs" "$root/tests/data/bad_configs" >"$work/last.log" 2>&1
status=$?
runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$work/last.log" | grep -o '[0-9]*$')
cov=$(grep -E '^#[0-9]+' "$work/last.log" | grep -o 'cov: [0-9]*' | tail -1)
ft=$(grep -E '^#[0-9]+' "$work/last.log" | grep -o 'ft: [0-9]*' | tail -1)
corpus=$(ls "$work/corpus" | wc -l)
if [ $status -eq 0 ]; then
  echo "fuzz.config: ${runs:-?} inputs in ${seconds} s, ${cov:-cov: ?} edges, ${ft:-ft: ?} features, corpus $corpus files; no crash" \
    | tee "$work/summary.txt"
else
  echo "fuzz.config: FAILED (status $status) after ${runs:-?} inputs; the input is in $work/artifacts:" | tee "$work/summary.txt"
  grep -E 'ERROR|SUMMARY|Test unit written|runtime error|==[0-9]+==' "$work/last.log" | head -20
  tail -40 "$work/last.log"
fi
exit $status
