#!/usr/bin/env bash
# Runs one libFuzzer harness: every saved regression input once, then fuzzing for SECONDS from
# the generated seeds plus the corpus kept between runs. Exits non-zero on any crash, sanitizer
# report, timeout or out-of-memory; the input that did it is left in BUILD/fuzz/artifacts/.
#   tests/fuzz/run.sh BUILD HARNESS SECONDS [more libFuzzer flags...]
# BUILD is a build dir configured with -DEFFNET_BUILD_FUZZERS=ON and holding BUILD/fuzz/seeds
# (tools/make_fuzz_corpus.py). Regression inputs: BUILD/fuzz/regressions/HARNESS (generated)
# and tests/fuzz/regressions/HARNESS (reproducers no code can make).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$1 harness=$2 seconds=$3
shift 3
bin=$build/tests/fuzz/$harness
work=$build/fuzz
dict=$here/safetensors.dict
[ "$harness" = fuzz_image ] && dict=$here/image.dict
mkdir -p "$work/corpus/$harness" "$work/artifacts"
# One OpenMP thread: the library's parallel loops would only add noise to each execution.
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ASAN_OPTIONS=detect_leaks=1

regressions=()
for d in "$work/regressions/$harness" "$here/regressions/$harness"; do
  [ -d "$d" ] && while IFS= read -r -d '' f; do regressions+=("$f"); done < <(find "$d" -type f -print0)
done
if [ ${#regressions[@]} -gt 0 ]; then
  if ! "$bin" -rss_limit_mb=2048 "${regressions[@]}" >"$work/$harness.regressions.log" 2>&1; then
    grep -E 'ERROR|runtime error|SUMMARY|not an effnet|message of|Running: ' "$work/$harness.regressions.log" | tail -n 10
    echo "$harness: FAILED on a regression input (log $work/$harness.regressions.log)"
    exit 1
  fi
  echo "$harness: ${#regressions[@]} regression inputs pass"
fi
echo "$harness: fuzzing for ${seconds}s"
log=$work/$harness.log
set +e
"$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -dict="$dict" \
  -artifact_prefix="$work/artifacts/$harness-" "$@" "$work/corpus/$harness" "$work/seeds/$harness" >"$log" 2>&1
rc=$?
set -e
grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|stat::number_of_executed_units' "$log" || true
if [ $rc -ne 0 ]; then
  grep -E 'ERROR|runtime error|SUMMARY|not an effnet|message of|Test unit written' "$log" | head -n 10
  echo "$harness: FAILED (exit $rc; log $log)"
fi
exit $rc
