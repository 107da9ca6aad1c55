#!/usr/bin/env python3
"""CPU JPEG decode + preprocess throughput: effnet against Pillow + torchvision, side by side.

Both sides take the same N JPEG files (photo-like 500x375 at quality 90: smooth gradients, noise
and hard edges, generated here with Pillow) from the page cache and produce the ImageNet eval
input of each: decode, Resize(256) (shorter side, bilinear, antialiased), CenterCrop(224), to
float, Normalize(ImageNet mean/std).

  effnet:  tests/image_tool.cpp "bench" (effnet_image_tool, built by CMake with or without CUDA):
           effnet::decode_image (libjpeg-turbo) + effnet::preprocess_image, T std::threads each
           taking a contiguous share of the files (OMP_NUM_THREADS=1: no nested parallelism).
  Pillow:  Image.open + convert("RGB") + torchvision.transforms Compose([Resize(256),
           CenterCrop(224), ToTensor(), Normalize(...)]) (torch.set_num_threads(1)), T processes
           (a multiprocessing pool made before timing, as DataLoader workers) each taking a
           contiguous share. Without torchvision (run it with a Python that has torch +
           torchvision, e.g. /opt/torchvenv/bin/python) the same pipeline in Pillow + NumPy,
           said in the output.

Also "decode only" rounds on both sides (effnet decode_image; Pillow open + convert + load) to
show where the time goes. Rounds are interleaved (effnet, Pillow, effnet, ...) for each thread
count so that load from other processes hits both alike; medians are reported.

  python bench/jpeg_throughput.py [--n 200] [--rounds 7] [--threads 1,2] [--tool BUILD/tests/effnet_image_tool]
"""
import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image, features

SOURCE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

try:
    import torch
    import torchvision
    from torchvision import transforms
    HAVE_TV = True
except ImportError:
    HAVE_TV = False


def photo_like(width, height, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    fx, fy = rng.uniform(5, 40, 3), rng.uniform(5, 40, 3)
    base = np.stack([np.sin(x / fx[c] + y / fy[c]) * 80 + 128 for c in range(3)], axis=-1)
    base += (x / width * 60 - 30)[..., None]
    cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(40, 150)
    base[(x - cx) ** 2 + (y - cy) ** 2 < r * r] *= 0.55  # an object with hard edges
    base[(x // rng.integers(20, 60) + y // rng.integers(20, 60)) % 5 == 0] += 40
    return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


def make_jpegs(d, n):
    paths = []
    for i in range(n):
        p = os.path.join(d, "photo_%04d.jpg" % i)
        Image.fromarray(photo_like(500, 375, i)).save(p, quality=90)
        paths.append(p)
    return paths


# ---- the Pillow side (runs in the worker processes too) ----------------------------------------

_transform = None


def _init_worker():
    global _transform
    if HAVE_TV:
        torch.set_num_threads(1)
        _transform = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                         transforms.Normalize(MEAN, STD)])
    else:
        mean, std = np.array(MEAN, np.float32)[:, None, None], np.array(STD, np.float32)[:, None, None]

        def numpy_transform(img):
            w, h = img.size
            s = 256
            size = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
            img = img.resize(size, Image.BILINEAR)
            w, h = img.size
            top, left = int(round((h - 224) / 2.0)), int(round((w - 224) / 2.0))
            a = np.asarray(img.crop((left, top, left + 224, top + 224)), np.float32).transpose(2, 0, 1) / 255.0
            return (a - mean) / std
        _transform = numpy_transform


def pillow_full(paths):
    total = 0.0
    for p in paths:
        with Image.open(p) as im:
            x = _transform(im.convert("RGB"))
        total += float(x[1, 112, 112])
    return total


def pillow_decode(paths):
    total = 0
    for p in paths:
        with Image.open(p) as im:
            img = im.convert("RGB")
        total += img.size[0]
    return total


def shares(paths, t):
    return [paths[len(paths) * i // t:len(paths) * (i + 1) // t] for i in range(t)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--tool", default=os.path.join(SOURCE, "build", "tests", "effnet_image_tool"))
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    if not os.path.exists(args.tool):
        sys.exit("effnet_image_tool not found at %s (build the tests; --tool)" % args.tool)

    print("machine: %s, %d CPUs, load average %s" % (os.uname().nodename, os.cpu_count(),
                                                     " ".join("%.2f" % v for v in os.getloadavg())))
    print("Pillow %s (libjpeg-turbo %s); %s" % (Image.__version__ if hasattr(Image, "__version__") else
                                              __import__("PIL").__version__, features.version("libjpeg_turbo"),
                                              "torch %s, torchvision %s" % (torch.__version__, torchvision.__version__)
                                              if HAVE_TV else "NO torchvision: Pillow + NumPy pipeline instead"))
    with tempfile.TemporaryDirectory() as d:
        paths = make_jpegs(d, args.n)
        for p in paths:  # into the page cache
            open(p, "rb").read()
        env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive")
        tool = subprocess.Popen([args.tool, "bench", "256", "224", "bilinear", *paths], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=env)

        def effnet_round(what, t):
            tool.stdin.write("%s %d\n" % (what, t))
            tool.stdin.flush()
            return float(tool.stdout.readline().split()[0])

        _init_worker()
        pools = {t: mp.get_context("fork").Pool(t, initializer=_init_worker) for t in threads if t > 1}

        def pillow_round(fn, t):
            t0 = time.perf_counter()
            if t == 1:
                fn(paths)
            else:
                pools[t].map(fn, shares(paths, t))
            return time.perf_counter() - t0

        # Warm-up: one of each.
        for t in threads:
            effnet_round("full", t)
            pillow_round(pillow_full, t)
        results = {}
        for t in threads:
            times = {k: [] for k in ("effnet full", "pillow full", "effnet decode", "pillow decode")}
            for _ in range(args.rounds):
                times["effnet full"].append(effnet_round("full", t))
                times["pillow full"].append(pillow_round(pillow_full, t))
                times["effnet decode"].append(effnet_round("decode", t))
                times["pillow decode"].append(pillow_round(pillow_decode, t))
            results[t] = {k: args.n / statistics.median(v) for k, v in times.items()}
        tool.stdin.write("quit\n")
        tool.stdin.close()
        tool.wait()
        for pool in pools.values():
            pool.close()

    print("\n%d JPEGs 500x375 q90, %d interleaved rounds, median img/s:" % (args.n, args.rounds))
    print("threads | effnet decode+preprocess | Pillow+%s | ratio | effnet decode only | Pillow decode only"
          % ("torchvision" if HAVE_TV else "NumPy"))
    for t in threads:
        r = results[t]
        print("%7d | %24.0f | %18.0f | %5.2fx | %18.0f | %18.0f" % (
            t, r["effnet full"], r["pillow full"], r["effnet full"] / r["pillow full"], r["effnet decode"],
            r["pillow decode"]))
    for t in threads:
        r = results[t]
        dec_e, full_e = 1e3 / r["effnet decode"], 1e3 / r["effnet full"]
        dec_p, full_p = 1e3 / r["pillow decode"], 1e3 / r["pillow full"]
        print("threads %d, ms per image (wall / images): effnet decode %.3f + preprocess %.3f; Pillow decode %.3f + "
              "transforms %.3f" % (t, dec_e, full_e - dec_e, dec_p, full_p - dec_p))


if __name__ == "__main__":
    main()
