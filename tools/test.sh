#!/usr/bin/env bash
# The test command: installs what is missing, configures, builds with both cores, runs every
# test (CPU tests, Python tests of the converter and programs, GPU tests that skip without a
# GPU), the safetensors parser tests again under ASan+UBSan, and an out-of-tree consumer built
# against the installed package. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
jobs=${EFFNET_JOBS:-$(nproc)}

tools/install_deps.sh

echo "== build"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$jobs"

echo "== tests"
ctest --test-dir build --output-on-failure

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

echo "all tests passed"
