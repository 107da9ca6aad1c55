#!/usr/bin/env bash
# The test command: installs what is missing, configures, builds with both cores, runs every
# test (CPU tests, Python tests of the converter and programs, GPU tests that ctest reports as
# skipped without a GPU), the Python package's pytest suite, the safetensors parser tests again
# under ASan+UBSan, an out-of-tree consumer built against the installed package, the Debian
# package installed and built against (tools/test_package.sh), and each libFuzzer harness for 30 s
# (tests/fuzz/README.md). Exits non-zero on any failure; the
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

echo "== Python package (pip install . as a CPU build, pytest python/tests)"
pytest_log=$(mktemp)
tools/test_python.sh | tee "$pytest_log"
# pytest's summary: "== 35 passed, 8 skipped in 4.2s ==" (a failure has exited above: pipefail).
py_passed=$(grep -oE '[0-9]+ passed' "$pytest_log" | tail -n 1 | grep -oE '[0-9]+' || echo 0)
py_skipped=$(grep -oE '[0-9]+ skipped' "$pytest_log" | tail -n 1 | grep -oE '[0-9]+' || echo 0)
rm -f "$pytest_log"

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

# The Debian package (cpack): installed with dpkg, the consumer built against /usr, removed.
package_passed=0 package_skipped=0
package_log=$(mktemp)
tools/test_package.sh build | tee "$package_log"
case "$(tail -n 1 "$package_log")" in
  "package: passed") package_passed=1 ;;
  *) package_skipped=1 ;;
esac
rm -f "$package_log"

# Each libFuzzer harness (tests/fuzz): its regression inputs once, then a short run from the
# generated seeds and the corpus kept in build-fuzz/fuzz/corpus. One count per harness; any
# crash, sanitizer report, timeout or OOM fails it (the input is left in build-fuzz/fuzz/artifacts).
fuzz_seconds=${EFFNET_FUZZ_SECONDS:-30}
fuzz_harnesses=(fuzz_safetensors fuzz_weights fuzz_checkpoint fuzz_image)
fuzz_passed=0 fuzz_failed=0 fuzz_skipped=0
echo "== fuzzers (libFuzzer + ASan + UBSan, clang): regression inputs, then ${fuzz_seconds}s each"
if command -v clang++ >/dev/null && command -v clang >/dev/null; then
  CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DEFFNET_ENABLE_CUDA=OFF \
    -DEFFNET_BUILD_FUZZERS=ON -DEFFNET_BUILD_TESTS=OFF -DEFFNET_BUILD_EXAMPLES=OFF -DEFFNET_BUILD_BENCH=OFF >/dev/null
  cmake --build build-fuzz -j"$jobs"
  python3 tools/make_fuzz_corpus.py --seed-writer build-fuzz/tests/fuzz/effnet_fuzz_seeds build-fuzz/fuzz
  for h in "${fuzz_harnesses[@]}"; do
    if tests/fuzz/run.sh build-fuzz "$h" "$fuzz_seconds"; then
      fuzz_passed=$((fuzz_passed + 1))
    else
      fuzz_failed=$((fuzz_failed + 1))
    fi
  done
else
  fuzz_skipped=${#fuzz_harnesses[@]}
  echo "skipped: the fuzzers (clang++ not installed)"
fi

passed=$((ctest_passed + py_passed + 2 + package_passed + fuzz_passed))
skipped=$((ctest_skipped + py_skipped + package_skipped + fuzz_skipped))
if [ "$fuzz_failed" -ne 0 ]; then
  echo "FAILED: $fuzz_failed of ${#fuzz_harnesses[@]} fuzzers found a crash (see above)"
  echo "$passed passed, $fuzz_failed failed, $skipped skipped"
  exit 1
fi
echo "all tests passed: ctest ran $ctest_total tests, pytest $py_passed (python/tests), then the parser tests under ASan+UBSan, the consumer, the Debian package ($package_passed) and $fuzz_passed fuzzers"
echo "$passed passed, 0 failed, $skipped skipped"
