#!/usr/bin/env python3
"""effnet-train against hostile and damaged files (issue 15, items 4, 7, 8, 9 and 10's dataset parts).

  lock          a second run on a checkpoint directory that a live run holds is refused (error
                naming the directory and the live run's pid); the live run is unharmed
  temporaries   <checkpoint>.tmp.XXXXXX and <export>.tmp.XXXXXX left by killed writes are removed
                at start (one line with their number and size); look-alikes are left alone
  non-finite    SGD at lr 100 drives a BN running variance to inf while the loss is finite (the
                issue's case): the run stops with an error naming the step and the tensor and the
                last complete checkpoint, which is finite; no export is written
  data          a symbolic link loop (ROOT/a/up -> ..) is skipped with a warning and each image
                counted once; a file under two classes is an error; one class folder and images
                beside the class folders are warned about
  output=input  --export, its labels file, --log and the checkpoint may not be --weights, the
                checkpoint being resumed, or an image of --data; the input is left unchanged
Prints one line per check and "N passed, M failed" last; exits non-zero when a check failed.
"""
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

SOURCE = os.environ.get("EFFNET_SOURCE_DIR",
                        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BINARY = os.environ.get("EFFNET_BINARY_DIR", os.path.join(SOURCE, "build"))
TRAIN = os.path.join(BINARY, "examples", "effnet-train")

RUN = ["--resolution", "16", "--batch", "4", "--threads", "1", "--workers", "1", "--seed", "1"]
TINY = ["--width", "0.1", "--depth", "0.1"] + RUN  # a 33k-parameter model

passed = failed = 0


def check(cond, what, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok: {what}")
    else:
        failed += 1
        print(f"FAIL: {what}" + (f"\n{detail[-2500:]}" if detail else ""))


def make_images(d, n, seed=0):
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(os.path.join(d, f"img_{i}.png"))


def make_data(root, classes=("a", "b"), per_class=4):
    for k, c in enumerate(classes):
        make_images(os.path.join(root, c), per_class, seed=k)
    return root


def train(args, timeout=300):
    return subprocess.run([TRAIN] + args, capture_output=True, text=True, timeout=timeout)


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def safetensors_floats(path):
    """{name: float32 array} of a safetensors file's F32 tensors."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack_from("<Q", blob, 0)
    header = json.loads(blob[8:8 + n])
    header.pop("__metadata__", None)
    data = blob[8 + n:]
    return {k: np.frombuffer(data[v["data_offsets"][0]:v["data_offsets"][1]], dtype="<f4")
            for k, v in header.items() if v["dtype"] == "F32"}


def test_lock(tmp, data):
    ck = os.path.join(tmp, "ck_lock")
    log = os.path.join(tmp, "lock.csv")
    first = subprocess.Popen([TRAIN, "--data", data, *TINY, "--epochs", "100000", "--checkpoint-dir", ck,
                              "--checkpoint-every", "1", "--log", log],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and first.poll() is None:  # training (so past its start)
            if os.path.exists(log) and sum(1 for line in open(log) if line.startswith("step,")) >= 2:
                break
            time.sleep(0.02)
        check(first.poll() is None, "lock: the first run is training")
        p = train(["--data", data, *TINY, "--epochs", "1", "--checkpoint-dir", ck, "--resume"])
        check(p.returncode != 0 and "in use by another run" in p.stderr and f"pid {first.pid}" in p.stderr
              and ck in p.stderr,
              "lock: a second run on the same --checkpoint-dir is refused, naming the directory and the pid",
              f"exit {p.returncode}\n{p.stderr}")
        check(first.poll() is None, "lock: the first run goes on")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The kernel dropped the lock with the process: no stale lock after kill -9.
    p = train(["--data", data, "--checkpoint-dir", ck, "--resume", "--threads", "1", "--workers", "1",
               "--max-steps", str(last_step(log) + 1)])
    check(p.returncode == 0, "lock: after kill -9 of the holder the directory is usable at once", p.stderr)


def last_step(log):
    rows = [line for line in open(log) if line.startswith("step,")]
    return int(rows[-1].split(",")[2])


def test_temporaries(tmp, data):
    ck = os.path.join(tmp, "ck_temps")
    out = os.path.join(tmp, "out")
    os.makedirs(ck)
    os.makedirs(out)
    stale = {os.path.join(ck, "checkpoint.safetensors.tmp.aB3x9Z"): 3000,
             os.path.join(ck, "checkpoint.safetensors.tmp.000000"): 1000,
             os.path.join(out, "tiny.safetensors.tmp.Qw12er"): 500}
    decoys = [os.path.join(ck, "checkpoint.safetensors.tmp.abc12"), os.path.join(ck, "checkpoint.safetensors.tmp.ab-123"),
              os.path.join(ck, "notes.txt"), os.path.join(out, "other.safetensors.tmp.Qw12er"),
              os.path.join(out, "tiny.safetensors.tmp.Qw12erX")]
    for path, size in stale.items():
        with open(path, "wb") as f:
            f.write(b"x" * size)
    for path in decoys:
        with open(path, "w") as f:
            f.write("not effnet's\n")
    os.makedirs(os.path.join(ck, "checkpoint.safetensors.tmp.dir123"))
    os.symlink(decoys[2], os.path.join(ck, "checkpoint.safetensors.tmp.lnk123"))
    p = train(["--data", data, *TINY, "--epochs", "1", "--max-steps", "2", "--checkpoint-dir", ck,
               "--export", os.path.join(out, "tiny.safetensors")])
    check(p.returncode == 0, "temporaries: the run succeeds", p.stderr)
    check(not any(os.path.exists(s) for s in stale), "temporaries: the stale ones are removed")
    check(all(os.path.exists(d) for d in decoys) and os.path.isdir(os.path.join(ck, "checkpoint.safetensors.tmp.dir123"))
          and os.path.islink(os.path.join(ck, "checkpoint.safetensors.tmp.lnk123")),
          "temporaries: look-alikes (other names, other suffixes, a folder, a link) are left alone")
    check("removed 2 stale temporary file(s) of '" + os.path.join(ck, "checkpoint.safetensors") + "' (4000 bytes)"
          in p.stderr and "removed 1 stale temporary file(s) of '" + os.path.join(out, "tiny.safetensors") +
          "' (500 bytes)" in p.stderr, "temporaries: one line each says how many and their size", p.stderr)


def test_non_finite(tmp, data):
    ck = os.path.join(tmp, "ck_diverge")
    export = os.path.join(tmp, "diverged.safetensors")
    p = train(["--data", data, *TINY, "--epochs", "20", "--optimizer", "sgd", "--lr", "100",
               "--checkpoint-dir", ck, "--checkpoint-every", "1", "--export", export,
               "--log", os.path.join(tmp, "diverge.csv")])
    err = p.stderr
    check(p.returncode != 0 and "error: step " in err and "not writing the checkpoint" in err
          and "tensor 'model/" in err and "holds inf" in err,
          "non-finite: SGD at lr 100 stops with an error naming the step and the tensor", f"exit {p.returncode}\n{err}")
    losses = [float(line.split(",")[4]) for line in open(os.path.join(tmp, "diverge.csv")) if line.startswith("step,")]
    check(losses and all(np.isfinite(losses)) and max(losses) > 1e6,
          f"non-finite: the loss stayed finite (max {max(losses) if losses else 'none':.3g}), so only the "
          "weights show the divergence")
    ck_file = os.path.join(ck, "checkpoint.safetensors")
    check(f"the last complete checkpoint is '{ck_file}' (step " in err,
          "non-finite: the error says which complete checkpoint remains", err)
    check(os.path.exists(ck_file) and all(np.isfinite(t).all() for t in safetensors_floats(ck_file).values()),
          "non-finite: the checkpoint left on disk holds only finite values")
    check(not os.path.exists(export), "non-finite: no export was written")
    check(not [f for f in os.listdir(ck) if ".tmp." in f], "non-finite: no temporary left behind")

    # Stopped (--max-steps) after the variance overflowed but before the loss did.
    p = train(["--data", data, *TINY, "--epochs", "20", "--optimizer", "sgd", "--lr", "100", "--export", export,
               "--max-steps", "10"])
    check(p.returncode != 0 and "error: step 10: not writing the export" in p.stderr
          and "no checkpoint is kept" in p.stderr and not os.path.exists(export),
          "non-finite: without checkpoints, the export is refused too", p.stderr)


def test_data(tmp):
    root = make_data(os.path.join(tmp, "loop"))
    os.symlink("..", os.path.join(root, "a", "up"))
    p = train(["--data", root, *TINY, "--epochs", "1", "--max-steps", "1"])
    check(p.returncode == 0 and f"{root}: 8 images, 2 classes" in p.stderr, "data: a link loop a/up -> .. leaves "
          "8 images (was 328)", p.stderr)
    check(f"warning: dataset: skipping symbolic link '{os.path.join(root, 'a', 'up')}'" in p.stderr,
          "data: the skipped link is named in a warning", p.stderr)

    root = make_data(os.path.join(tmp, "twice"))
    os.symlink(os.path.join("..", "b", "img_0.png"), os.path.join(root, "a", "also_b.png"))
    p = train(["--data", root, *TINY, "--epochs", "1", "--max-steps", "1"])
    check(p.returncode != 0 and "an image cannot have two labels" in p.stderr,
          "data: a file under two classes is an error", p.stderr)

    root = make_data(os.path.join(tmp, "one"), classes=("only",))
    make_images(root, 3)  # beside the class folder
    p = train(["--data", root, *TINY, "--classes", "2", "--epochs", "1", "--max-steps", "1"])
    check(p.returncode == 0 and "single class folder ('only')" in p.stderr,
          "data: a single class folder trains with a warning", p.stderr)
    check(f"3 image file(s) directly in '{root}' are ignored" in p.stderr,
          "data: images beside the class folders are counted in a warning", p.stderr)


def test_log_on_resume(tmp, data):
    """On resume the log is cut after the rows the checkpoint has seen, never rewritten: a kill
    during the old rewrite (fopen "w", then the rows) lost every earlier row (the soak found it)."""
    ck = os.path.join(tmp, "ck_log")
    log = os.path.join(tmp, "cut.csv")
    args = ["--data", data, *TINY, "--epochs", "3", "--checkpoint-dir", ck, "--log", log]
    p = train(args + ["--max-steps", "3"])
    check(p.returncode == 0, "log: a run stopped at step 3", p.stderr)
    with open(log) as f:
        lines = f.read().splitlines(keepends=True)
    # Rows as another writer (or an older version) may have spelled them: kept byte for byte.
    lines[1] = lines[1].replace(lines[1].split(",")[6], "1e3", 1)
    kept = "".join(lines)
    after = lines[-1].replace(",3,", ",4,", 1)  # logged after the checkpoint, before a kill
    with open(log, "w") as f:
        f.write(kept + after + after.replace(",4,", ",5,")[:-4])  # the last one cut short
    p = train(["--data", data, "--threads", "1", "--workers", "1", "--checkpoint-dir", ck, "--log", log,
               "--resume", "--max-steps", "4"])
    with open(log) as f:
        text = f.read()
    rows = [r for r in text.splitlines() if r.startswith("step,")]
    check(p.returncode == 0 and text.startswith(kept) and [r.split(",")[2] for r in rows] == ["1", "2", "3", "4"]
          and rows[3] + "\n" != after,
          "log: --resume keeps the checkpoint's rows byte for byte and drops the later and the cut ones",
          p.stderr + "\n" + text)


def test_outputs(tmp, data):
    weights = os.path.join(tmp, "w.safetensors")
    p = train(["--data", data, *TINY, "--epochs", "1", "--max-steps", "1", "--export", weights])
    check(p.returncode == 0, "outputs: a weights file to start from", p.stderr)
    before = digest(weights)
    image = os.path.join(data, "a", "img_0.png")
    image_before = digest(image)
    alias = os.path.join(tmp, "alias.safetensors")
    os.symlink(weights, alias)
    ck = os.path.join(tmp, "ck_is_weights")
    os.makedirs(ck)
    shutil.copy(weights, os.path.join(ck, "checkpoint.safetensors"))
    cases = [
        (["--export", weights], "--export '" + weights + "' is the same file as --weights"),
        (["--export", alias], "is the same file as --weights"),
        (["--log", weights], "--log '" + weights + "' is the same file as --weights"),
        (["--plot", weights], "--plot"),
        (["--export", image], "is the image '" + image + "'"),
        (["--log", image], "is the image"),
        (["--weights", os.path.join(ck, "checkpoint.safetensors"), "--checkpoint-dir", ck], "--checkpoint-dir"),
    ]
    for extra, fragment in cases:
        args = ["--data", data, *RUN, "--epochs", "1", "--max-steps", "1"]
        if "--weights" not in extra:
            args += ["--weights", weights]
        p = train(args + extra)
        check(p.returncode != 0 and "refusing to overwrite an input" in p.stderr and fragment in p.stderr,
              f"outputs: {' '.join(extra)} is refused", f"exit {p.returncode}\n{p.stderr}")
    # The labels file beside the export: OUT.labels.txt may not be an input either.
    labels_weights = os.path.join(tmp, "m.labels.txt")
    shutil.copy(weights, labels_weights)
    p = train(["--data", data, *RUN, "--epochs", "1", "--max-steps", "1", "--weights", labels_weights,
               "--export", os.path.join(tmp, "m.safetensors")])
    check(p.returncode != 0 and "labels file" in p.stderr and "refusing to overwrite an input" in p.stderr,
          "outputs: an export whose labels file is --weights is refused", p.stderr)
    check(digest(weights) == before and digest(image) == image_before, "outputs: the inputs are unchanged")


def main():
    if not os.path.exists(TRAIN):
        sys.exit(f"FAIL: {TRAIN} not built")
    tmp = tempfile.mkdtemp(prefix="effnet_train_hostile_")
    try:
        data = make_data(os.path.join(tmp, "data"))
        test_lock(tmp, data)
        test_temporaries(tmp, data)
        test_non_finite(tmp, data)
        test_data(tmp)
        test_log_on_resume(tmp, data)
        test_outputs(tmp, data)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
