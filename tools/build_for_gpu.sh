#!/usr/bin/env bash
# Builds, on this (GPU-less) machine, the binaries tools/gpu_check.sh runs on the GPU machine,
# and puts them in .carry/binaries.tar.xz (bin/ and lib/, ignored by git) for the device tool's `carry`:
#   effnet_gpu_tests, effnet_microbench, effnet-run, effnet-bench (+ effnet_tests with
#   BUILD_CPU_TESTS=1). Release, CUDA arch 90 (override: EFFNET_CUDA_ARCH=90a), cudart static.
# Libraries the GPU machine may lack (libbenchmark, libgomp) are copied to .carry/lib; cuDNN and
# cuBLAS are not (hundreds of MiB): the GPU machine has them (PyTorch's wheels, CUDA 13).
# Usage: tools/build_for_gpu.sh            (env: JOBS=2, BUILD_DIR=build-gpu, BUILD_CPU_TESTS=0)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
root=$PWD
build=${BUILD_DIR:-build-gpu}
jobs=${JOBS:-2}
arch=${EFFNET_CUDA_ARCH:-90}
carry=.carry

echo "== configure $build (Release, CUDA arch $arch)"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DEFFNET_ENABLE_CUDA=ON \
      -DEFFNET_CUDA_ARCHITECTURES="$arch" -DEFFNET_BUILD_TESTS=ON -DEFFNET_BUILD_BENCH=ON \
      -DEFFNET_BUILD_EXAMPLES=ON >"$build.configure.log" 2>&1 || {
    tail -n 30 "$build.configure.log"; echo "error: configure failed (log: $build.configure.log)"; exit 1; }

targets="effnet-bench effnet-run effnet-train effnet-train-bench effnet_gpu_tests effnet_microbench"
[ "${BUILD_CPU_TESTS:-0}" = 1 ] && targets="$targets effnet_tests"
known=$(cmake --build "$build" --target help 2>/dev/null)
built="" failed="" absent=""
for t in $targets; do
    if ! grep -qE "(^|\.\.\. )$t(:| |\$)" <<<"$known"; then
        absent="$absent $t"; echo "-- $t: no such target (its sources are not there yet)"; continue
    fi
    echo "== build $t"
    if cmake --build "$build" --target "$t" -j"$jobs" 2>&1 | tail -n 25; then built="$built $t"
    else failed="$failed $t"; fi
done

echo "== collect into $carry/bin"
rm -rf "${carry:?}/bin" "${carry:?}/lib"
mkdir -p "$carry/bin" "$carry/lib"
for t in $built; do
    f=$(find "$build" -type f -name "$t" -perm -u+x | head -n 1)
    if [ -z "$f" ]; then failed="$failed $t"; continue; fi
    cp "$f" "$carry/bin/$t"
    # Symbols are not needed there; the device code and -lineinfo tables stay in the fatbin.
    strip --strip-unneeded "$carry/bin/$t" 2>/dev/null || true
done

# Anything a binary links that is neither in the GPU machine's base system nor in CUDA/cuDNN.
for f in "$carry"/bin/*; do
    [ -e "$f" ] || continue
    ldd "$f" | awk '/=>/ {print $1, $3}' | while read -r name path; do
        case $name in
            libcudnn*|libcublas*|libcudart*|libnvrtc*|libcuda.so*) ;;                # there
            linux-vdso*|libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|ld-linux*) ;;
            libstdc++*|libgcc_s*) ;;  # Ubuntu 24.04 ships newer, backward-compatible ones
            *) [ -f "$path" ] && cp -nL "$path" "$carry/lib/$name" ;;              # libgomp, libbenchmark...
        esac
    done
done

{
    echo "source_dir=$root"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "git=$(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo +dirty)"
    echo "cuda_arch=$arch"
    echo "nvcc=$(/usr/local/cuda/bin/nvcc --version 2>/dev/null | tail -n 1)"
    echo "glibc=$(ldd --version | head -n 1)"
    echo "targets_built=${built# }"
    echo "targets_failed=${failed# }"
    echo "targets_absent=${absent# }"
} >"$carry/BUILD_INFO"

echo "== $carry"
ls -la "$carry/bin" "$carry/lib"
for f in "$carry"/bin/*; do
    [ -e "$f" ] || continue
    echo "-- ldd $(basename "$f"):"; ldd "$f" | sed 's/^/   /'
    echo "   needs GLIBC up to: $(objdump -T "$f" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1)"
done
# The device tool carries at most 64 MiB with the tree: ship the binaries xz-compressed (the
# fatbins compress ~6x); tools/gpu_check.sh unpacks them. Uncompressed copies stay in $build.
echo "== pack $carry/binaries.tar.xz"
rm -f "$carry/binaries.tar.xz"
XZ_OPT=-T0 tar -cJf "$carry/binaries.tar.xz" -C "$carry" bin lib && rm -rf "${carry:?}/bin" "${carry:?}/lib"
size=$(du -sm "$carry" | cut -f1)
echo "size of $carry: ${size} MiB (limit for the whole tree: 64 MiB; keep it under ~40)"
cat "$carry/BUILD_INFO"
[ "$size" -gt 40 ] && echo "warning: $carry is over 40 MiB"
if [ -n "$failed" ]; then echo "error: failed to build:$failed"; exit 1; fi
[ -n "$absent" ] && echo "note: not built (no such target):$absent"
exit 0
