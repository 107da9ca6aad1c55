#!/usr/bin/env python3
"""effnet-train --device cuda without a usable GPU (no device, or a build without CUDA).

--device cuda, with every precision, exits 1 (not a crash, not 0) with exactly one line on
stderr, "error: --device cuda: no usable GPU (<why>); use --device cpu", before reading any
data; --precision amp-* with --device cpu keeps its own error. Exits non-zero on the first
failure; 77 (skipped) on a machine with a GPU and a CUDA build (or with EFFNET_EXPECT_GPU=1),
where test_train_cuda.py runs the GPU path instead.

Environment: EFFNET_BINARY_DIR (the build; default build), EFFNET_TRAIN (the effnet-train to
test; default $EFFNET_BINARY_DIR/examples/effnet-train), EFFNET_EXPECT_GPU=1 (the GPU machine).
"""
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_env import no_gpu_reason, skip_script  # noqa: E402
from test_train_program import make_folder  # noqa: E402

BIN = os.environ.get("EFFNET_BINARY_DIR", "build")
TRAIN = os.environ.get("EFFNET_TRAIN", os.path.join(BIN, "examples", "effnet-train"))
EXPECT_GPU = os.environ.get("EFFNET_EXPECT_GPU") == "1"


def run(args):
    return subprocess.run([TRAIN] + args, capture_output=True, text=True, timeout=900)


def check_without_gpu(tmp):
    data = os.path.join(tmp, "data")
    make_folder(data, 2, seed=1)
    model = ["--width", "0.1", "--depth", "0.1", "--resolution", "16", "--batch", "4"]
    for precision in ["fp32", "amp-fp16", "amp-bf16"]:
        for where in [data, os.path.join(tmp, "does-not-exist")]:  # checked before the data
            args = ["--data", where] + model + ["--device", "cuda", "--precision", precision]
            p = run(args)
            lines = p.stderr.strip().splitlines()
            if p.returncode != 1 or len(lines) != 1:
                sys.exit(f"FAIL: {' '.join(args)}: expected exit 1 and one line on stderr, got exit "
                         f"{p.returncode}:\n{p.stderr[-2000:]}")
            if not lines[0].startswith("error: --device cuda: no usable GPU (") or "--device cpu" not in lines[0]:
                sys.exit(f"FAIL: {' '.join(args)}: unclear message: {lines[0]!r}")
    print(f"ok: --device cuda without a GPU: {lines[0]}")
    p = run(["--data", data] + model + ["--precision", "amp-fp16"])
    if p.returncode == 0 or "needs --device cuda" not in p.stderr:
        sys.exit(f"FAIL: --precision amp-fp16 --device cpu: expected 'needs --device cuda', got:\n{p.stderr}")
    print("ok: --precision amp-fp16 with --device cpu keeps its error")


def main():
    if not os.path.exists(TRAIN):
        sys.exit(f"FAIL: {TRAIN} not built")
    if EXPECT_GPU or not no_gpu_reason(BIN):
        skip_script("effnet-train --device cuda without a GPU", "this machine has a GPU and a CUDA build")
    tmp = tempfile.mkdtemp(prefix="effnet_train_cuda_errors_test_")
    try:
        check_without_gpu(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("all effnet-train --device cuda error-path tests passed")


if __name__ == "__main__":
    main()
