#!/usr/bin/env bash
# Where the GPU training step spends its time: effnet-train-bench timed on the host, then the
# same step under Nsight Compute (one metric, gpu__time_duration, clocks left alone), kernels
# summed by name (tools/ncu_summary.py), and PyTorch's AMP step under torch.profiler for the same
# shape. Writes under $OUT (default /tmp/effnet-train-profile). Usage on the GPU machine, carry .carry:
#   bash tools/gpu_profile_train.sh
set -u
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-/tmp/effnet-train-profile}
mkdir -p "$OUT"
BIN=${EFFNET_BIN:-$PWD/.carry/bin}
if [ ! -d "$PWD/.carry/bin" ] && [ -f "$PWD/.carry/binaries.tar.xz" ]; then
    tar -xJf "$PWD/.carry/binaries.tar.xz" -C "$PWD/.carry"
fi
export LD_LIBRARY_PATH="$PWD/.carry/lib:${LD_LIBRARY_PATH:-}"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
for spec in "b0 amp-fp16 128" "b0 fp32 128" "b4 amp-fp16 32"; do
    set -- $spec
    timeout 60 "$BIN/effnet-train-bench" --variant "$1" --precision "$2" --batch "$3" --iters 10 \
        | tee -a "$OUT/train_bench.jsonl"
done
timeout 120 python3 tools/torch_train_profile.py --variant b0 --batch 128 >"$OUT/torch-profile.txt" 2>&1
echo "torch profile rc=$?"; head -n 60 "$OUT/torch-profile.txt"
IFS=, read -ra ncu_specs <<<"${NCU_SPECS:-b0 amp-fp16 128}"
for spec in "${ncu_specs[@]}"; do
    set -- $spec
    tag="$1-$2-b$3"
    timeout ${NCU_TIMEOUT:-120} "$NCU" --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
        "$BIN/effnet-train-bench" --variant "$1" --precision "$2" --batch "$3" --iters 1 --warmup 1 \
        >"$OUT/ncu-$tag.csv" 2>"$OUT/ncu-$tag.err"
    echo "ncu $tag rc=$?"
    python3 tools/ncu_summary.py "$OUT/ncu-$tag.csv" --steps 2 | tee "$OUT/ncu-$tag.txt" | head -n 45
done
