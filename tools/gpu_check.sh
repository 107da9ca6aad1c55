#!/usr/bin/env bash
# The one prepared script for the GPU machine (see bench/README.md). Runs from a copy of the
# repository with the binaries tools/build_for_gpu.sh put in .carry/bin, and writes under $OUT:
#   report.md          every figure, each target met or missed (tools/make_report.py)
#   results.jsonl      every measurement as one JSON object per line (all tools)
#   check.log          the full output of every step
#   gpu_tests.log      effnet_gpu_tests and compute-sanitizer output
#   torch_compile.log  bench/pytorch_bench.py's output (every mode, torch.compile included)
#   baseline.md        effnet against the best PyTorch mode, pipelined and per call (bench/baseline_report.py)
#   microbench.json    Google Benchmark's JSON
#   roofline.txt, roofline_<precision>.png  each microbenchmark against its ceiling (bench/roofline.py)
# Every step runs under `timeout` and a failure never stops the next one. The whole run keeps
# to GPU_CHECK_BUDGET_S (default 450 s) plus the report; the summary table is printed last.
# The GPU tests run first (correctness before timing); then PyTorch alone on the GPU, each
# configuration in its own process (compile and autotuning included: compiling next to other GPU
# work cost it 6-33%); then everything of effnet.
#
# Environment: OUT (default /tmp/effnet-gpu-check), DRY_RUN=1 (no GPU steps: checks the flow
# here), GPU_CHECK_BUDGET_S, GPU_CHECK_SECTIONS (comma list of header,ceilings,tests,parity,
# sanitizer,compile,bench,torch,train,trainprof,features,dist,micro,extras; default all), EFFNET_BIN (default .carry/bin),
# PYTHON (default python3), BENCH_ITERS (30), BENCH_WARMUP (5), MICRO_BATCH (32), TORCH_BUDGET_S
# (PyTorch inference, default a third of the budget), TORCH_CONFIGS / TORCH_MODES / TORCH_TRAIN_SPECS
# (what PyTorch runs: specs of bench/pytorch_bench.py and pytorch_train_bench.py), SANITIZER_SPEC
# (Catch2 test spec for compute-sanitizer, default '[sanitize]'), SANITIZER_CAP_S (45),
# GPU_CHECK_STOP_ON_TEST_FAILURE=1 (stop after failing GPU tests, before any timing).
set -u
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
OUT=${OUT:-/tmp/effnet-gpu-check}
mkdir -p "$OUT"
DRY_RUN=${DRY_RUN:-0}
BIN=${EFFNET_BIN:-$ROOT/.carry/bin}
# tools/build_for_gpu.sh ships bin/ and lib/ compressed (the carry limit is 64 MiB).
if [ ! -d "$ROOT/.carry/bin" ] && [ -f "$ROOT/.carry/binaries.tar.xz" ]; then
    tar -xJf "$ROOT/.carry/binaries.tar.xz" -C "$ROOT/.carry" || echo "warning: could not unpack .carry/binaries.tar.xz"
fi
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-450}
SECTIONS=${GPU_CHECK_SECTIONS:-all}
ITERS=${BENCH_ITERS:-30}
MICRO_BATCH=${MICRO_BATCH:-32}
WARMUP=${BENCH_WARMUP:-5}
RESERVE=15              # seconds kept for the report
TMP=$(mktemp -d /tmp/effnet-gpu-check.XXXXXX)
RESULTS=$OUT/results.jsonl
LOG=$OUT/check.log
TESTLOG=$OUT/gpu_tests.log
COMPILELOG=$OUT/torch_compile.log
MICROJSON=$OUT/microbench.json
HEADER=$TMP/header.txt
: >"$RESULTS"; : >"$LOG"; : >"$TESTLOG"
export PYTHONUNBUFFERED=1

say() { echo "[$(printf '%3d' "$SECONDS")s] $*" | tee -a "$LOG"; }
want() { [ "$SECTIONS" = all ] || [[ ",$SECTIONS," == *",$1,"* ]]; }
record() { # name status rc seconds timeout note
    local note=${6:-}
    note=${note//\\/\/}; note=${note//\"/\'}
    printf '{"tool":"step","name":"%s","status":"%s","rc":%d,"seconds":%d,"timeout_s":%d,"note":"%s"}\n' \
        "$1" "$2" "$3" "$4" "$5" "$note" >>"$RESULTS"
}
left() { echo $((BUDGET - SECONDS - RESERVE)); }

# run_step NAME CAP LOGFILE CMD...: runs CMD under a timeout of min(CAP, what the budget leaves),
# appends its output to LOGFILE, echoes its last lines; the output stays in $STEP_OUT.
STEP_OUT=$TMP/step.out
run_step() {
    local name=$1 cap=$2 logfile=$3; shift 3
    local t=$cap l; l=$(left)
    ((l < t)) && t=$l
    : >"$STEP_OUT"
    if ((t < 5)); then
        say "SKIP $name: time budget spent"; record "$name" skipped 0 0 0 "time budget"; return 99
    fi
    if [ "$DRY_RUN" = 1 ]; then
        say "[dry-run] $name (timeout ${t}s): $*"; record "$name" dry-run 0 0 "$t"; return 0
    fi
    say "== $name (timeout ${t}s)"
    echo "===== $name: $* (timeout ${t}s, at ${SECONDS}s)" >>"$logfile"
    local t0=$SECONDS rc
    timeout -k 10 "$t" "$@" >"$STEP_OUT" 2>&1
    rc=$?
    cat "$STEP_OUT" >>"$logfile"
    tail -n "${TAIL_LINES:-6}" "$STEP_OUT" | cut -c1-200 | sed 's/^/    /'
    local st=ok
    ((rc != 0)) && st=failed
    ((rc == 124 || rc == 137)) && st=timeout
    say "-- $name: $st (rc $rc, $((SECONDS - t0))s)"
    record "$name" "$st" "$rc" $((SECONDS - t0)) "$t"
    return $rc
}
have_bin() {
    if [ -x "$BIN/$1" ] || [ "$DRY_RUN" = 1 ]; then return 0; fi
    say "MISSING $BIN/$1: step $2 not run"; record "$2" missing 0 0 0 "no $1 in $BIN"; return 1
}

say "effnet GPU check: budget ${BUDGET}s, sections $SECTIONS, out $OUT$([ "$DRY_RUN" = 1 ] && echo ', DRY RUN')"

# ---- libraries for our binaries (only for them: torch keeps its own cuDNN/cuBLAS resolution)
EFFLD="$ROOT/.carry/lib"
if [ "$DRY_RUN" != 1 ]; then
    dirs="/usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib"
    nv=$(timeout 20 "$PY" -c 'import nvidia; print(" ".join(nvidia.__path__))' 2>/dev/null)
    for lib in libcudnn.so.9 libcublas.so.13 libcublasLt.so.13 libnvrtc.so.13; do
        # PyTorch's copy first: the cuDNN that PyTorch uses is the fair baseline.
        f=$(find $nv $dirs -maxdepth 3 -name "$lib" 2>/dev/null | head -n 1)
        if [ -n "$f" ]; then
            d=$(dirname "$f"); [[ ":$EFFLD:" == *":$d:"* ]] || EFFLD="$EFFLD:$d"
        fi
    done
fi
EFFLD="$EFFLD${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
EENV=(env "LD_LIBRARY_PATH=$EFFLD")
# Tests find their data through the source path baked in at build time: make it point here.
src=$(sed -n 's/^source_dir=//p' "$ROOT/.carry/BUILD_INFO" 2>/dev/null)
if [ -n "$src" ] && [ "$src" != "$ROOT" ] && [ ! -e "$src" ] && [ "$DRY_RUN" != 1 ]; then
    mkdir -p "$(dirname "$src")" && ln -s "$ROOT" "$src" && say "linked $src -> $ROOT"
fi
export EFFNET_SOURCE_DIR=$ROOT

# ---- header
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "kernel: $(uname -r)"
    if [ "$DRY_RUN" != 1 ]; then
        timeout 20 nvidia-smi -L
        timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit,temperature.gpu,clocks.sm --format=csv
        timeout 20 nvidia-smi | grep -m1 'CUDA Version'
        echo "nvcc: $(timeout 20 nvcc --version 2>/dev/null | tail -n 1)"
        echo "compute-sanitizer: $(timeout 20 compute-sanitizer --version 2>/dev/null | tail -n 1)"
        echo "cuDNN/cuBLAS for effnet: $("${EENV[@]}" ldd "$BIN/effnet-bench" 2>/dev/null | awk '/cudnn|cublas|not found/ {print $3}' |
            while read -r f; do readlink -f "$f" 2>/dev/null || echo "$f"; done | tr '\n' ' ')"
    fi
    if [ -f "$ROOT/.carry/BUILD_INFO" ]; then echo "build: $(tr '\n' ' ' <"$ROOT/.carry/BUILD_INFO")"
    else echo "build: no .carry/BUILD_INFO"; fi
    echo "binaries: $(ls "$BIN" 2>/dev/null | tr '\n' ' ')"
} >"$HEADER" 2>&1
cat "$HEADER" | tee -a "$LOG"
if [ "$DRY_RUN" != 1 ]; then
    missing=$(for b in "$BIN"/*; do "${EENV[@]}" ldd "$b" 2>/dev/null | grep 'not found' | sed "s|^|$(basename "$b"): |"; done)
    [ -n "$missing" ] && say "WARNING: unresolved libraries: $missing"
fi

# ---- environment and ceilings (copy bandwidth, GEMM)
if want ceilings || want header; then
    run_step ceilings 60 "$LOG" "$PY" bench/pytorch_bench.py --env --ceilings --json-out "$RESULTS"
fi

# ---- GPU tests first: a regression is what a short device session must find before anything
# is timed. They finish before PyTorch starts, so nothing else shares the GPU with it.
if want tests && have_bin effnet_gpu_tests gpu_tests; then
    TAIL_LINES=4 run_step gpu_tests 100 "$TESTLOG" "${EENV[@]}" "$BIN/effnet_gpu_tests" --order decl
    tests_rc=$?
    # GPU_CHECK_STOP_ON_TEST_FAILURE=1: a failing test makes every timing suspect; stop here
    # (report only) and keep the device time for a rerun after the fix.
    if [ "${GPU_CHECK_STOP_ON_TEST_FAILURE:-0}" = 1 ] && [ "$tests_rc" != 0 ] && [ "$DRY_RUN" != 1 ]; then
        say "GPU tests failed (rc $tests_rc): stopping before the timed steps"
        grep -E "FAIL|failed" "$TESTLOG" | head -n 20 | cut -c1-200 | sed 's/^/    /'
        SECTIONS=header
    fi
fi

# ---- PyTorch next, alone on the GPU (compile and autotuning included), each headline
# configuration in its own process: every mode (eager half / autocast / fp32 NCHW and
# channels_last, CUDA graph, torch.compile default, reduce-overhead, max-autotune), pipelined and
# per call, allocator peak memory; then the training steps (eager, compiled step, CUDA-graphed
# step). Nothing of effnet runs until they are done. TORCH_BUDGET_S (default: a third of the budget;
# the full baseline wants a call of its own, bench/README.md)
# bounds the inference part; a mode that does not fit is reported "skipped: time budget".
export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-$(nproc)}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/effnet-inductor-cache}
TORCH_CONFIGS=(${TORCH_CONFIGS:-b0:1:fp16 b0:32:fp16 b0:256:fp16 b0:256:fp32 b4:64:fp16 b7:32:fp16})
TORCH_MODES=${TORCH_MODES:-all}
TORCH_BUDGET=${TORCH_BUDGET_S:-$((BUDGET / 3))}
if want torch || want compile; then
    torch_t0=$SECONDS
    for i in "${!TORCH_CONFIGS[@]}"; do
        cfg=${TORCH_CONFIGS[$i]}
        # An equal share of what is left of the PyTorch budget for each remaining configuration.
        cap=$(((TORCH_BUDGET - (SECONDS - torch_t0)) / (${#TORCH_CONFIGS[@]} - i)))
        ((cap < 20)) && cap=20
        TAIL_LINES=3 run_step "torch $cfg" "$cap" "$COMPILELOG" "$PY" bench/pytorch_bench.py \
            --spec "$cfg:$TORCH_MODES" --iters "$ITERS" --warmup "$WARMUP" --time-budget $((cap - 10)) \
            --compile-min-s 30 --compile-cap-s $((cap - 20 > 20 ? cap - 20 : 20)) --json-out "$RESULTS"
    done
fi
# Training: as effnet-train-bench runs it (SGD momentum 0.9, label smoothing 0.1, no dropout nor
# stochastic depth: GpuTrainOptions::dropout is off there), batch resident on the device.
# Default: B0 b128 AMP only (the training target); the full set (b0:128, b4:32, b7:8 x amp-fp16,
# fp32) through TORCH_TRAIN_SPECS in a call of its own.
TORCH_TRAIN_SPECS=(${TORCH_TRAIN_SPECS:-b0:128:amp-fp16})
if want train; then
    for spec in "${TORCH_TRAIN_SPECS[@]}"; do
        TAIL_LINES=3 run_step "torch_train $spec" 75 "$LOG" "$PY" bench/pytorch_train_bench.py --spec "$spec:all" \
            --dropout off --iters 10 --warmup 4 --json-out "$RESULTS"
    done
fi
# ---- parity with PyTorch, B0..B7
if want parity && have_bin effnet-run parity; then
    TAIL_LINES=20 run_step parity 110 "$LOG" "$PY" tools/torch_parity.py --effnet-run "$BIN/effnet-run" \
        --lib-path "$EFFLD" --budget-s 90 --json-out "$RESULTS"
fi

# ---- one training step against PyTorch (B0, batch 4, every gradient; fp32 and AMP)
if want parity && have_bin effnet-run train_parity; then
    TAIL_LINES=12 run_step train_parity 90 "$LOG" "$PY" tools/torch_train_parity.py --effnet-run "$BIN/effnet-run" \
        --lib-path "$EFFLD" --variants b0 --batch 4 --precisions fp32,fp16,bf16 --json-out "$RESULTS"
fi

# ---- compute-sanitizer on a few GPU tests: tests tagged [sanitize], else the first three
run_sanitizer() { # cap per tool
    local cap=$1 cs spec
    cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
    if [ -z "$cs" ] && [ "$DRY_RUN" != 1 ]; then
        say "SKIP sanitizer: no compute-sanitizer"; record sanitizer missing 0 0 0 "no compute-sanitizer"
        SANITIZER_DONE=1; return
    fi
    spec=${SANITIZER_SPEC:-'[sanitize]'}
    if [ "$DRY_RUN" != 1 ] && [ -z "${SANITIZER_SPEC:-}" ] && ! "${EENV[@]}" "$BIN/effnet_gpu_tests" --list-tags 2>/dev/null | grep -qF '[sanitize]'; then
        spec=$("${EENV[@]}" "$BIN/effnet_gpu_tests" --list-test-names-only 2>/dev/null | sed 's/^ *//; s/ *$//' |
            grep -v '^$' | grep -v '[],[~*"]' | grep -viE 'b[0-7]|model|session|network|e2e|end.to.end' |
            head -n 3 | paste -sd, -)
    fi
    if [ -z "$spec" ]; then
        say "SKIP sanitizer: no test to run"; record sanitizer skipped 0 0 0 "no tests"; SANITIZER_DONE=1; return
    fi
    echo "sanitizer test selection: $spec" >>"$TESTLOG"
    for tool in memcheck racecheck; do
        # racecheck is ~10x slower than memcheck: it skips the tests tagged [slow].
        local s=$spec; [ "$tool" = racecheck ] && [[ "$spec" == *'[sanitize]'* ]] && s="$spec~[slow]"
        TAIL_LINES=3 run_step "sanitizer_$tool" "$cap" "$TESTLOG" "${EENV[@]}" ${cs:-compute-sanitizer} \
            --tool "$tool" --error-exitcode 3 "$BIN/effnet_gpu_tests" "$s"
    done
    SANITIZER_DONE=1
}
SANITIZER_DONE=0
# (runs after the timed steps, with the time left: see the end)

# ---- end to end: effnet-bench (PyTorch ran first, above), same card, GPU otherwise idle
# variant precision batch [extra effnet-bench options]. fp32 twice: true fp32, and with TF32 GEMMs
# (PyTorch's fp32 convolutions run TF32: torch.backends.cudnn.allow_tf32 defaults to True).
# The B0 fp16 runs also write per-step profiles (profile-*.csv: step, kernel chosen, ms).
BENCH_CONFIGS=("b0 fp16 256 --profile $OUT/profile-b0-fp16-b256.csv" "b0 fp16 32 --profile $OUT/profile-b0-fp16-b32.csv"
    "b0 fp16 1" "b4 fp16 64" "b7 fp16 32" "b0 fp32 256" "b0 fp32 256 --tf32"
    # The candidates written without a GPU (off by default until verified): cuDNN for the stem and
    # depthwise, the tensor-core fused expand + depthwise; the profile names what each layer chose.
    "b0 fp16 256 --cudnn auto --fused-tc --profile $OUT/profile-b0-fp16-b256-candidates.csv"
    "b0 fp16 32 --cudnn auto --fused-tc --profile $OUT/profile-b0-fp16-b32-candidates.csv"
    "b7 fp16 32 --cudnn auto --fused-tc")
if want bench && have_bin effnet-bench effnet_bench; then
    for c in "${BENCH_CONFIGS[@]}"; do
        set -- $c
        run_step "effnet-bench $*" 45 "$LOG" "${EENV[@]}" "$BIN/effnet-bench" --variant "$1" \
            --precision "$2" --batch "$3" "${@:4}" --iters "$ITERS" --warmup "$WARMUP" --json
        grep '^{' "$STEP_OUT" >>"$RESULTS"
    done
fi
# ---- training step: effnet-train-bench (PyTorch's step ran first, above), same card
TRAIN_CONFIGS=("b0 amp-fp16 128" "b0 fp32 128" "b4 amp-fp16 32")
if want train && have_bin effnet-train-bench train_bench; then
    for c in "${TRAIN_CONFIGS[@]}"; do
        set -- $c
        run_step "effnet-train $1 $2 b$3" 40 "$LOG" "${EENV[@]}" "$BIN/effnet-train-bench" --variant "$1" \
            --precision "$2" --batch "$3" --iters 10
        grep '^{' "$STEP_OUT" | sed 's/^{/{"tool": "effnet-train", /' >>"$RESULTS"
    done
    # B0 fp32 with TF32 GEMMs (as PyTorch's cuDNN convolutions by default), and the B0 amp step
    # with its batch uploaded inside the step, from a staging buffer and from pageable memory:
    # what the prefetch and the staging buffers save.
    for extra in "fp32 --tf32" "amp-fp16 --input pinned" "amp-fp16 --input pageable"; do
        set -- $extra
        run_step "effnet-train b0 $* b128" 40 "$LOG" "${EENV[@]}" "$BIN/effnet-train-bench" \
            --variant b0 --precision "$1" --batch 128 --iters 10 "${@:2}"
        grep '^{' "$STEP_OUT" | sed 's/^{/{"tool": "effnet-train", /' >>"$RESULTS"
    done
fi

# ---- where the training step's time goes: every kernel of two B0 amp-fp16 b128 steps under
# Nsight Compute (one metric, gpu__time_duration; clocks left alone), summed by name.
if want trainprof && have_bin effnet-train-bench trainprof; then
    NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)
    if [ -n "$NCU" ] || [ "$DRY_RUN" = 1 ]; then
        run_step trainprof 90 "$TMP/ncu-train.csv" "${EENV[@]}" "${NCU:-ncu}" --clock-control none \
            --metrics gpu__time_duration.sum --csv --print-units base "$BIN/effnet-train-bench" \
            --variant b0 --precision amp-fp16 --batch 128 --iters 1 --warmup 1
        [ "$DRY_RUN" = 1 ] || "$PY" tools/ncu_summary.py "$TMP/ncu-train.csv" --steps 2 >"$OUT/ncu-train-b0-amp-fp16-b128.txt" 2>&1
        head -n 25 "$OUT/ncu-train-b0-amp-fp16-b128.txt" 2>/dev/null | tee -a "$LOG"
    else
        say "SKIP trainprof: no ncu"; record trainprof skipped 0 0 0 "no ncu"
    fi
fi

# ---- effnet-train --device cuda end to end (tests/python/test_train_cuda.py: fp32 run with --val,
# plot, export; --max-steps + --resume with identical step losses; amp-fp16 / amp-bf16; GPU
# checkpoint resumed on the CPU), then a B0 amp-fp16 RMSProp run stopped and resumed.
if want train && have_bin effnet-train train_program; then
    run_step train_program 60 "$LOG" "${EENV[@]}" EFFNET_TRAIN="$BIN/effnet-train" EFFNET_EXPECT_GPU=1 \
        "$PY" tests/python/test_train_cuda.py
    TD=$TMP/train_b0
    "$PY" -c 'import sys; sys.path.insert(0, "tests/python"); from test_train_program import make_folder
make_folder(sys.argv[1] + "/train", 16, 1); make_folder(sys.argv[1] + "/val", 4, 2)' "$TD"
    b0=(--data "$TD/train" --val "$TD/val" --preset b0 --resolution 64 --batch 16 --epochs 2
        --optimizer rmsprop --device cuda --precision amp-fp16 --checkpoint-dir "$TD/ck" --log "$TD/log.csv")
    run_step train_b0_stop 30 "$LOG" "${EENV[@]}" "$BIN/effnet-train" "${b0[@]}" --max-steps 3
    run_step train_b0_resume 30 "$LOG" "${EENV[@]}" "$BIN/effnet-train" "${b0[@]}" --resume
fi

# ---- backbone features against timm / torchvision on the GPU (fp32, fp16, bf16; B0..B2 and timm
# B0 / Lite0 features_only), then data-parallel effnet-train through NCCL at world size 1
# (--force-nccl: the same run with the NCCL all-reduce in the path) against the plain trainer:
# the step-time overhead (target <= 3%) is the ratio of the two runs' logged step times.
if want features && have_bin effnet-run features_parity; then
    TAIL_LINES=16 run_step features_parity 90 "$LOG" "$PY" tools/torch_features_parity.py \
        --effnet-run "$BIN/effnet-run" --lib-path "$EFFLD" --device cuda --precisions fp32,fp16,bf16 \
        --variants b0,b1,b2 --budget-s 70 --json-out "$RESULTS"
fi
if want dist && have_bin effnet-train dist_nccl; then
    TD=$TMP/train_dist
    "$PY" -c 'import sys; sys.path.insert(0, "tests/python"); from test_train_program import make_folder
make_folder(sys.argv[1] + "/train", 64, 1)' "$TD"
    dist=(--data "$TD/train" --preset b0 --resolution 128 --batch 64 --epochs 3 --optimizer sgd
          --device cuda --precision amp-fp16)
    run_step dist_plain 40 "$LOG" "${EENV[@]}" "$BIN/effnet-train" "${dist[@]}" --log "$TD/plain.csv"
    run_step dist_nccl_world1 40 "$LOG" "${EENV[@]}" "$BIN/effnet-train" "${dist[@]}" --force-nccl \
        --log "$TD/nccl.csv"
    cp "$TD"/plain.csv "$TD"/nccl.csv "$OUT"/ 2>/dev/null || true
fi

# ---- microbenchmarks (kernels vs cuDNN, vs the measured copy bandwidth)
if want micro && have_bin effnet_microbench microbench; then
    # Batch 32 (the targets are for batch >= 32); the names do not carry it, the report is told.
    # MICRO_MODELS (default b0): every kernel group on these models' shapes (b0,b4,b7 is several
    # hundred benchmarks: a call of its own).
    TAIL_LINES=25 run_step microbench 90 "$LOG" "${EENV[@]}" "$BIN/effnet_microbench" --batch="$MICRO_BATCH" \
        --models="${MICRO_MODELS:-b0}" --benchmark_out="$MICROJSON" --benchmark_out_format=json
    # Each kernel against its ceiling measured in the same run: a table and roofline_<precision>.png.
    if [ "$DRY_RUN" != 1 ] && [ -s "$MICROJSON" ]; then
        "$PY" bench/roofline.py --out-dir "$OUT" "$MICROJSON" >"$OUT/roofline.txt" 2>&1 ||
            "$PY" bench/roofline.py --no-plot "$MICROJSON" >"$OUT/roofline.txt" 2>&1 || true
    fi
fi

# ---- extras, only with time left: the fused and graph-less paths (what fusion and the
# CUDA graph buy), then compute-sanitizer.
if want extras && have_bin effnet-bench extras; then
    # What autotuning buys (per-layer GEMM and depthwise schedule vs the fixed defaults), and
    # what fusion and the CUDA graph buy.
    for c in "b0 fp16 256 --no-autotune" "b0 fp16 32 --no-autotune" "b0 fp16 256 --fused" \
        "b0 fp16 1 --no-graph"; do
        set -- $c
        (($(left) < 40)) && break
        run_step "effnet-bench $*" 40 "$LOG" "${EENV[@]}" "$BIN/effnet-bench" --variant "$1" \
            --precision "$2" --batch "$3" "${@:4}" --iters "$ITERS" --warmup "$WARMUP" --json
        grep '^{' "$STEP_OUT" >>"$RESULTS"
    done
fi
if want sanitizer && [ "$SANITIZER_DONE" = 0 ] && (($(left) > 40)) && { [ -x "$BIN/effnet_gpu_tests" ] || [ "$DRY_RUN" = 1 ]; }; then
    cap=${SANITIZER_CAP_S:-45}
    run_sanitizer $(($(left) / 2 < cap ? $(left) / 2 : cap))
fi

# ---- report (the summary table is the last output)
for f in "$LOG" "$TESTLOG" "$COMPILELOG"; do   # files over 16 MiB do not come back
    [ -f "$f" ] && [ "$(stat -c %s "$f")" -gt 15000000 ] && { tail -c 15000000 "$f" >"$f.tmp"; mv "$f.tmp" "$f"; }
done
say "== report (total ${SECONDS}s)"
dry=(); [ "$DRY_RUN" = 1 ] && dry=(--dry-run)
"$PY" tools/make_report.py --results "$RESULTS" --microbench "$MICROJSON" --header "$HEADER" \
    --tests-log "$TESTLOG" --micro-batch "$MICRO_BATCH" --out "$OUT/report.md" --total-seconds "$SECONDS" "${dry[@]}" \
    --profiles "$OUT"/profile-*.csv 2>&1 |
    tee -a "$LOG" | tail -n 60
rc=${PIPESTATUS[0]}
"$PY" bench/baseline_report.py --results "$RESULTS" --out "$OUT/baseline.md" >>"$LOG" 2>&1 ||
    echo "warning: bench/baseline_report.py failed (see $LOG)"
rm -rf "$TMP"
exit "$rc"
