#!/usr/bin/env bash
# A long fuzzing run of one harness (tests/fuzz/README.md reports them): libFuzzer's fork mode
# keeps going after a crash (each one saved in OUT/artifacts/), from a copy of the binary so
# that rebuilding the tree meanwhile does not change what is being fuzzed. Niced: the machine
# is shared.
#   tests/fuzz/long_run.sh BUILD HARNESS SECONDS OUT
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$1 harness=$2 seconds=$3 out=$4
dict=$here/safetensors.dict
[ "$harness" = fuzz_image ] && dict=$here/image.dict
mkdir -p "$out/bin" "$out/corpus" "$out/artifacts"
cp "$build/tests/fuzz/$harness" "$out/bin/"
cp -r "$build/fuzz/seeds/$harness/." "$out/corpus/" # the start corpus: the generated seeds
echo "start corpus: $(ls "$out/corpus" | wc -l) files, $(du -sb "$out/corpus" | cut -f1) bytes"
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
exec nice -n 19 "$out/bin/$harness" -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
  -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -dict="$dict" \
  -artifact_prefix="$out/artifacts/" "$out/corpus"
