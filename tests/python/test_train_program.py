#!/usr/bin/env python3
"""effnet-train end to end on a generated image folder (4 classes, small noisy images).

Checks: argument and input errors are clear (message + non-zero exit); a run writes its CSV
log, PNG plot, checkpoint and exported weights, and skips and counts an unreadable image; a
run stopped with --max-steps and resumed, and a run killed with SIGKILL mid-run and resumed,
log exactly the same per-step losses as an uninterrupted run (bit for bit: the CSV holds 17
significant digits, which round-trip a double); the exported weights load in effnet-classify.
Exits non-zero on the first failure.
"""
import csv
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

BIN = os.environ.get("EFFNET_BINARY_DIR", "build")
TRAIN = os.path.join(BIN, "examples", "effnet-train")
CLASSIFY = os.path.join(BIN, "examples", "effnet-classify")

COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)]


def make_folder(root, per_class, seed, corrupt=False):
    rng = np.random.default_rng(seed)
    for k, colour in enumerate(COLOURS):
        d = os.path.join(root, f"class_{k}")
        os.makedirs(d, exist_ok=True)
        for i in range(per_class):
            h, w = 20 + int(rng.integers(0, 10)), 20 + int(rng.integers(0, 10))
            yy, xx = np.mgrid[0:h, 0:w]
            stripe = ((xx if k % 2 == 0 else yy) // 3) % 2 == 0
            img = np.array(colour, dtype=np.float64)[None, None, :] * np.where(stripe, 1.0, 0.7)[..., None]
            img = np.clip(img + rng.uniform(-20, 20, img.shape), 0, 255).astype(np.uint8)
            ext = "png" if i % 2 == 0 else "jpg"
            Image.fromarray(img).save(os.path.join(d, f"img_{i:02d}.{ext}"))
    if corrupt:
        with open(os.path.join(root, "class_1", "img_zz_corrupt.jpg"), "wb") as f:
            f.write(b"\xff\xd8\xff\xe0 not really a jpeg")


def run(args, expect_ok=True, **kw):
    p = subprocess.run([TRAIN] + args, capture_output=True, text=True, timeout=600, **kw)
    if expect_ok and p.returncode != 0:
        sys.exit(f"FAIL: effnet-train {' '.join(args)} exited {p.returncode}\n{p.stderr[-3000:]}")
    return p


def expect_error(args, fragment):
    p = run(args, expect_ok=False)
    if p.returncode == 0 or "error:" not in p.stderr or fragment not in p.stderr:
        sys.exit(f"FAIL: effnet-train {' '.join(args)}: expected an error containing {fragment!r}, "
                 f"got exit {p.returncode}, stderr:\n{p.stderr[-2000:]}")
    print(f"ok: error for {' '.join(args[-2:])}: {p.stderr.strip().splitlines()[-1]}")


def read_log(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    steps = [(r["epoch"], r["step"], r["lr"], r["loss"], r["accuracy"]) for r in rows if r["kind"] == "step"]
    epochs = [(r["epoch"], r["step"], r["loss"], r["accuracy"], r["val_loss"], r["val_top1"], r["val_top5"],
               r["skipped_images"]) for r in rows if r["kind"] == "epoch"]
    return steps, epochs


def compare_logs(name, got, want, val_rtol=None):
    """Step rows identical; epoch rows identical, or with val_rtol, identical but for the
    validation loss/top-1/top-5, which may differ by that relative amount (the GPU validation
    session's squeeze sums with atomics)."""
    gs, ge = read_log(got)
    ws, we = read_log(want)
    if gs != ws:
        for a, b in zip(gs, ws):
            if a != b:
                sys.exit(f"FAIL: {name}: first differing step row {a} vs uninterrupted {b}")
        sys.exit(f"FAIL: {name}: {len(gs)} step rows vs {len(ws)} uninterrupted")
    if val_rtol is None:
        if ge != we:
            sys.exit(f"FAIL: {name}: epoch rows differ:\n{ge}\nvs\n{we}")
        print(f"ok: {name}: {len(gs)} step losses and {len(ge)} epoch rows identical to the uninterrupted run")
        return
    if len(ge) != len(we):
        sys.exit(f"FAIL: {name}: {len(ge)} epoch rows vs {len(we)} uninterrupted")
    for a, b in zip(ge, we):
        # (epoch, step, loss, accuracy, val_loss, val_top1, val_top5, skipped_images)
        if a[:4] != b[:4] or a[7] != b[7]:
            sys.exit(f"FAIL: {name}: epoch row {a} vs uninterrupted {b}")
        for x, y in zip(a[4:7], b[4:7]):
            if abs(float(x) - float(y)) > val_rtol * max(1.0, abs(float(y))):
                sys.exit(f"FAIL: {name}: validation {a[4:7]} vs uninterrupted {b[4:7]}")
    print(f"ok: {name}: {len(gs)} step rows identical, {len(ge)} epoch rows match the uninterrupted run")


def main():
    if not os.path.exists(TRAIN):
        sys.exit(f"FAIL: {TRAIN} not built")
    tmp = tempfile.mkdtemp(prefix="effnet_train_test_")
    try:
        data, val = os.path.join(tmp, "data"), os.path.join(tmp, "val")
        make_folder(data, 12, seed=1, corrupt=True)  # 48 images + 1 unreadable: 6 batches of 8
        make_folder(val, 3, seed=2)
        # One thread: the run is then deterministic whatever OpenMP's reduction order.
        common = ["--data", data, "--val", val, "--width", "0.1", "--depth", "0.1", "--resolution", "16",
                  "--batch", "8", "--epochs", "4", "--optimizer", "adamw", "--lr", "0.003",
                  "--warmup-epochs", "0.5", "--seed", "7", "--threads", "1", "--workers", "2"]

        # Errors.
        # --device cuda: tests/python/test_train_cuda.py (GPU) and test_train_cuda_errors.py (no GPU).
        expect_error(["--data", data, "--width", "0.1", "--depth", "0.1", "--precision", "amp-fp16"], "needs --device cuda")
        expect_error(["--width", "0.1", "--depth", "0.1"], "missing required option '--data'")
        expect_error(["--data", os.path.join(tmp, "nope"), "--preset", "b0"], "is not a directory")
        expect_error(["--data", data, "--preset", "b0", "--optimizer", "adam"], "unknown optimizer")
        expect_error(["--data", data, "--preset", "b0", "--batch", "0"], "--batch")
        expect_error(["--data", data, "--preset", "b0", "--lr", "abc"], "expects a number")
        expect_error(["--data", data, "--preset", "b0", "--weights", "x.safetensors"], "not several")
        expect_error(["--data", data, "--preset", "b0", "--resume"], "--resume needs --checkpoint-dir")
        expect_error(["--data", data, "--preset", "b0", "--resume", "--checkpoint-dir", tmp], "no checkpoint")
        expect_error(["--data", data, "--width", "0.1", "--depth", "0.1", "--classes", "2"], "4 class folders")
        expect_error(["--data", data], "no model")

        # Uninterrupted reference run, with every output.
        full_log, plot = os.path.join(tmp, "full.csv"), os.path.join(tmp, "curves.png")
        export = os.path.join(tmp, "tiny.safetensors")
        t0 = time.time()
        p = run(common + ["--log", full_log, "--plot", plot, "--export", export,
                          "--checkpoint-dir", os.path.join(tmp, "ck_full")])
        print(f"ok: uninterrupted run in {time.time() - t0:.1f} s")
        steps, epochs = read_log(full_log)
        if len(steps) != 24 or len(epochs) != 4:
            sys.exit(f"FAIL: expected 24 step rows and 4 epoch rows, got {len(steps)} and {len(epochs)}")
        if "img_zz_corrupt.jpg" not in p.stderr or "skipped 4 unreadable" not in p.stderr:
            sys.exit(f"FAIL: the unreadable image was not reported/counted:\n{p.stderr[-2000:]}")
        if epochs[-1][7] != "4":
            sys.exit(f"FAIL: skipped_images column {epochs[-1][7]}, expected 4 (one per epoch)")
        losses = [float(s[3]) for s in steps]
        # The first epoch's mean training loss against the last one's (the learning itself is
        # checked more tightly in tests/cpu/test_train.cpp).
        if not all(np.isfinite(losses)) or np.mean(losses[-6:]) >= np.mean(losses[:6]):
            sys.exit(f"FAIL: loss did not go down: {losses}")
        for e in epochs:
            if not (0.0 <= float(e[5]) <= float(e[6]) <= 1.0):
                sys.exit(f"FAIL: validation top-1/top-5 out of order: {e}")
        with Image.open(plot) as im:
            if im.format != "PNG" or im.size != (800, 600):
                sys.exit(f"FAIL: plot is {im.format} {im.size}")
        if not os.path.exists(os.path.join(tmp, "ck_full", "checkpoint.safetensors")):
            sys.exit("FAIL: no checkpoint written")
        print(f"ok: loss {np.mean(losses[:6]):.3f} -> {np.mean(losses[-6:]):.3f}, val top-1 "
              f"{float(epochs[-1][5]):.2f}, plot and checkpoint written, unreadable image counted")

        # Stop after 5 steps (mid-epoch), resume to the end.
        ck = os.path.join(tmp, "ck_stop")
        log = os.path.join(tmp, "stop.csv")
        run(common + ["--log", log, "--checkpoint-dir", ck, "--max-steps", "5"])
        s, _ = read_log(log)
        if len(s) != 5:
            sys.exit(f"FAIL: --max-steps 5 logged {len(s)} steps")
        expect_error(["--data", data, "--checkpoint-dir", ck, "--resume", "--lr", "0.02"], "differs from the checkpoint")
        run(["--data", data, "--val", val, "--threads", "1", "--log", log, "--checkpoint-dir", ck, "--resume"])
        compare_logs("stop at step 5 + resume", log, full_log)

        # SIGKILL mid-run (checkpoints every 2 steps), resume.
        ck = os.path.join(tmp, "ck_kill")
        log = os.path.join(tmp, "kill.csv")
        proc = subprocess.Popen([TRAIN] + common + ["--log", log, "--checkpoint-dir", ck, "--checkpoint-every", "2"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        killed_at = None
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if os.path.exists(log):
                with open(log) as f:
                    n = sum(1 for line in f if line.startswith("step,"))
                if n >= 11:
                    proc.send_signal(signal.SIGKILL)
                    killed_at = n
                    break
            time.sleep(0.005)
        proc.wait()
        if killed_at is None or proc.returncode != -signal.SIGKILL:
            sys.exit(f"FAIL: the run was not killed mid-run (exit {proc.returncode})")
        s, _ = read_log(log)
        print(f"ok: killed with SIGKILL after {len(s)} logged steps")
        run(["--data", data, "--val", val, "--threads", "1", "--log", log, "--checkpoint-dir", ck, "--resume"])
        compare_logs("SIGKILL + resume", log, full_log)

        # Fine-tuning from the export: same classes keep the classifier, --classes 5 replaces it.
        p = run(["--data", data, "--weights", export, "--epochs", "1", "--batch", "8", "--max-steps", "2",
                 "--threads", "1"])
        if "4 classes) at 16x16" not in p.stderr:
            sys.exit(f"FAIL: --weights: expected the exported 4-class model at 16x16:\n{p.stderr[-1500:]}")
        p = run(["--data", data, "--weights", export, "--classes", "5", "--epochs", "1", "--batch", "8",
                 "--max-steps", "2", "--threads", "1"])
        if "5 classes)" not in p.stderr:
            sys.exit(f"FAIL: --classes 5 did not replace the classifier:\n{p.stderr[-1500:]}")
        print("ok: fine-tuning from exported weights, with and without a new classifier")
        p = run(["--help"])
        if "--checkpoint-dir" not in p.stdout:
            sys.exit("FAIL: --help does not list the options")

        # The exported weights load in effnet-classify.
        if os.path.exists(CLASSIFY):
            img = os.path.join(data, "class_2", "img_00.png")
            labels = os.path.splitext(export)[0] + ".labels.txt"
            p = subprocess.run([CLASSIFY, "--weights", export, "--labels", labels, img],
                               capture_output=True, text=True, timeout=300)
            if p.returncode != 0:
                sys.exit(f"FAIL: effnet-classify on the exported weights exited {p.returncode}:\n{p.stderr[-2000:]}")
            print(f"ok: effnet-classify loads the export: {p.stdout.strip().splitlines()[:2]}")
        else:
            print(f"note: {CLASSIFY} not built; export load not checked here")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("all effnet-train program tests passed")


if __name__ == "__main__":
    main()
