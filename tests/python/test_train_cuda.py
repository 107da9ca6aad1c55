#!/usr/bin/env python3
"""effnet-train --device cuda on the GPU (without one: test_train_cuda_errors.py checks the error
path, and this script exits 77, skipped).

With a GPU and a CUDA build: a tiny fp32 run (generated image folder with one unreadable image,
--val, CSV log, PNG plot, checkpoints, export) finishes with finite, decreasing losses; a run
stopped with --max-steps and resumed logs exactly the same per-step rows (losses, accuracies,
learning rates) and epoch training statistics as the uninterrupted run (deterministic GPU
trainer), and validation results within 1e-5 relative (the inference session's fused
squeeze-excite sums with atomics, so its last bits may vary from run to run); amp-fp16 and amp-bf16 runs finish with finite
losses; a checkpoint written on the GPU resumes on the CPU engine.
Exits non-zero on the first failure; 77 (skipped) without a GPU or a CUDA build.

Environment: EFFNET_BINARY_DIR (the build; default build), EFFNET_TRAIN (the effnet-train to
test; default $EFFNET_BINARY_DIR/examples/effnet-train), EFFNET_EXPECT_GPU=1 (on the GPU
machine: test the GPU path whatever the build directory says, and fail rather than skip).
"""
# ctest-labels: gpu
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_env import no_gpu_reason, skip_script  # noqa: E402
from test_train_program import compare_logs, make_folder, read_log  # noqa: E402

BIN = os.environ.get("EFFNET_BINARY_DIR", "build")
TRAIN = os.environ.get("EFFNET_TRAIN", os.path.join(BIN, "examples", "effnet-train"))
EXPECT_GPU = os.environ.get("EFFNET_EXPECT_GPU") == "1"


def run(args, expect_ok=True):
    p = subprocess.run([TRAIN] + args, capture_output=True, text=True, timeout=900)
    if expect_ok and p.returncode != 0:
        sys.exit(f"FAIL: effnet-train {' '.join(args)} exited {p.returncode}\n{p.stderr[-3000:]}")
    return p


def check_with_gpu(tmp):
    data, val = os.path.join(tmp, "data"), os.path.join(tmp, "val")
    make_folder(data, 12, seed=1, corrupt=True)  # 48 images + 1 unreadable: 6 batches of 8
    make_folder(val, 3, seed=2)  # 12 images: batches of 8 and 4 (padded on the GPU)
    common = ["--data", data, "--val", val, "--width", "0.1", "--depth", "0.1", "--resolution", "16",
              "--batch", "8", "--optimizer", "adamw", "--lr", "0.003",
              "--warmup-epochs", "0.5", "--seed", "7", "--workers", "2", "--device", "cuda"]

    full_log, plot = os.path.join(tmp, "full.csv"), os.path.join(tmp, "curves.png")
    export = os.path.join(tmp, "tiny.safetensors")
    p = run(common + ["--epochs", "3", "--log", full_log, "--plot", plot, "--export", export,
                      "--checkpoint-dir", os.path.join(tmp, "ck_full")])
    if "training on the GPU" not in p.stderr:
        sys.exit(f"FAIL: no GPU line in the output:\n{p.stderr[-2000:]}")
    steps, epochs = read_log(full_log)
    if len(steps) != 18 or len(epochs) != 3:
        sys.exit(f"FAIL: expected 18 step rows and 3 epoch rows, got {len(steps)} and {len(epochs)}")
    losses = [float(s[3]) for s in steps]
    if not all(l == l and abs(l) < 1e9 for l in losses) or sum(losses[-6:]) >= sum(losses[:6]):
        sys.exit(f"FAIL: GPU losses not finite or not decreasing: {losses}")
    for e in epochs:
        if not (0.0 <= float(e[5]) <= float(e[6]) <= 1.0):
            sys.exit(f"FAIL: validation top-1/top-5 out of order: {e}")
    for f in [plot, export, os.path.join(tmp, "ck_full", "checkpoint.safetensors")]:
        if not os.path.exists(f):
            sys.exit(f"FAIL: {f} not written")
    print(f"ok: GPU fp32 run: loss {sum(losses[:6]) / 6:.3f} -> {sum(losses[-6:]) / 6:.3f}, "
          f"val top-1 {float(epochs[-1][5]):.2f}")

    ck, log = os.path.join(tmp, "ck_stop"), os.path.join(tmp, "stop.csv")
    run(common + ["--epochs", "3", "--log", log, "--checkpoint-dir", ck, "--max-steps", "4"])
    run(["--data", data, "--val", val, "--device", "cuda", "--log", log, "--checkpoint-dir", ck, "--resume"])
    compare_logs("GPU stop at step 4 + resume", log, full_log, val_rtol=1e-5)

    for precision in ["amp-fp16", "amp-bf16"]:
        log = os.path.join(tmp, f"{precision}.csv")
        p = run(common + ["--precision", precision, "--log", log, "--epochs", "2"])
        amp = [float(s[3]) for s in read_log(log)[0]]
        if len(amp) != 12 or not all(l == l and abs(l) < 1e9 for l in amp):
            sys.exit(f"FAIL: {precision}: {len(amp)} steps, losses {amp}")
        print(f"ok: {precision} run: loss {amp[0]:.3f} -> {amp[-1]:.3f}; {p.stderr.strip().splitlines()[-1]}")

    # A GPU checkpoint continues on the CPU engine (same optimizer-state representation).
    ck = os.path.join(tmp, "ck_cross")
    run(common + ["--epochs", "3", "--checkpoint-dir", ck, "--max-steps", "3"])
    p = run(["--data", data, "--threads", "1", "--device", "cpu", "--checkpoint-dir", ck, "--resume",
             "--log", os.path.join(tmp, "cross.csv")])
    cross = read_log(os.path.join(tmp, "cross.csv"))[0]
    if len(cross) != 15:
        sys.exit(f"FAIL: CPU resume of a GPU checkpoint logged {len(cross)} steps, expected 15")
    print("ok: a GPU checkpoint resumes on the CPU engine")


def main():
    if not os.path.exists(TRAIN):
        sys.exit(f"FAIL: {TRAIN} not built")
    why = "" if EXPECT_GPU else no_gpu_reason(BIN)
    if why:
        skip_script("effnet-train --device cuda on the GPU", why)
    tmp = tempfile.mkdtemp(prefix="effnet_train_cuda_test_")
    try:
        check_with_gpu(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("all effnet-train --device cuda tests passed")


if __name__ == "__main__":
    main()
