#!/usr/bin/env bash
# The test command: installs what is missing, configures, builds with both cores, runs every
# test (CPU tests, Python tests of the converter and programs, GPU tests that ctest reports as
# skipped without a GPU), the safetensors parser tests again under ASan+UBSan, and an
# out-of-tree consumer built against the installed package. Exits non-zero on any failure; the
# last line counts what passed, failed and was skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
jobs=${EFFNET_JOBS:-$(nproc)}

tools/install_deps.sh

echo "== build"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$jobs"

echo "== tests"
ctest_log=$(mktemp)
trap 'rm -f "$ctest_log"' EXIT
ctest --test-dir build --output-on-failure | tee "$ctest_log"
# ctest's summary: "100% tests passed, 0 tests failed out of N", then one line per skipped test
# ("  12 - gpu/... (Skipped)") under "The following tests did not run:".
ctest_total=$(sed -nE 's/.*tests passed, [0-9]+ tests failed out of ([0-9]+).*/\1/p' "$ctest_log" | tail -n 1)
ctest_skipped=$(grep -cE '^[[:space:]]*[0-9]+ - .* \(Skipped\)$' "$ctest_log" || true)
ctest_passed=$((${ctest_total:-0} - ctest_skipped))

echo "== safetensors parser under AddressSanitizer + UndefinedBehaviorSanitizer"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DEFFNET_SANITIZE=ON -DEFFNET_ENABLE_CUDA=OFF \
  -DEFFNET_BUILD_EXAMPLES=OFF -DEFFNET_BUILD_BENCH=OFF >/dev/null
cmake --build build-asan -j"$jobs" --target effnet_safetensors_tests
ASAN_OPTIONS=detect_leaks=1 build-asan/tests/effnet_safetensors_tests

echo "== installed package and out-of-tree consumer"
rm -rf build/install build/consumer
cmake --install build --prefix build/install >/dev/null
cmake -S examples/consumer -B build/consumer -DCMAKE_PREFIX_PATH="$root/build/install" >/dev/null
cmake --build build/consumer -j"$jobs"
build/consumer/effnet-consumer

echo "all tests passed: ctest ran $ctest_total tests, then the parser tests under ASan+UBSan and the consumer"
echo "$((ctest_passed + 2)) passed, 0 failed, $ctest_skipped skipped"
