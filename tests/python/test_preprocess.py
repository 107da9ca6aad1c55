#!/usr/bin/env python3
"""Our preprocessing against torchvision's eval transform done with Pillow itself:
Resize(shorter side, PIL BILINEAR / BICUBIC) + CenterCrop, as float in [0, 1].

The images are the sample photos in data/samples (when weights/fetch.sh has run; JPEGs are
re-saved as PNG so that both sides start from the same pixels, decoders aside) plus generated
images of odd sizes, portrait and landscape, shrunk and enlarged, with the crop larger than the
resized image in one case (zero padding) and the resize a no-op in another.

Tolerance: 1/255 (+1e-6 for the float32 division): one level of uint8; in fact we expect and
print 0 differing values. Each resampling pass rounds and clamps to uint8, so the pass order
shows (bicubic by up to 6 levels where the intermediate clips). We follow Pillow 13, which runs
the vertical pass first when the height loses more than twice as many pixels as the width
(python-pillow/Pillow#9549); with an older Pillow those shapes are left out of the comparison.

What is left out (no sample photos; shapes an older Pillow resizes in the other order) is
named on a line "skipped: ...". Prints "N passed, M failed, K skipped" last; exits non-zero on
any failure.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import PIL
from PIL import Image

SOURCE = os.environ.get("EFFNET_SOURCE_DIR", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BINARY = os.environ.get("EFFNET_BINARY_DIR", os.path.join(SOURCE, "build"))
CLASSIFY = os.path.join(BINARY, "examples", "effnet-classify")
TOLERANCE = 1.0 / 255.0 + 1e-6
OLD_PILLOW = int(PIL.__version__.split(".")[0]) < 13


def vertical_first(size, new_size):
    """Pillow 13's choice of pass order (libeffnet/preprocess.cpp follows it)."""
    (w, h), (nw, nh) = size, new_size
    return nw != w and nh < h and h - nh > 2 * (w - nw)

passed = 0
failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
        print("ok   ", what)
    else:
        failed += 1
        print("FAIL ", what)
    return cond


def torchvision_resize(img, size, resample):
    """torchvision.transforms.functional.resize(img, size) for a PIL image and an int size."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return img
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return img.resize((new_w, new_h), resample)


def torchvision_center_crop(img, size):
    """torchvision.transforms.functional.center_crop(img, size) -> uint8 array [size, size, 3]."""
    a = np.asarray(img)
    h, w = a.shape[:2]
    if size > w or size > h:  # zero padding: left/top (size - w) // 2, right/bottom the rest
        pl = (size - w) // 2 if size > w else 0
        pt = (size - h) // 2 if size > h else 0
        pr = (size - w + 1) // 2 if size > w else 0
        pb = (size - h + 1) // 2 if size > h else 0
        a = np.pad(a, ((pt, pb), (pl, pr), (0, 0)))
        h, w = a.shape[:2]
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return a[top:top + size, left:left + size]


def generated_images(d):
    """Smooth gradients with noise and a few hard edges, at awkward sizes."""
    rng = np.random.default_rng(1234)
    paths = []
    for w, h in [(37, 91), (301, 17), (640, 480), (480, 640), (255, 257), (1000, 333), (97, 1031), (13, 9)]:
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([np.sin(x / 7.0) * 100 + 128, np.cos(y / 5.0) * 100 + 128, (x * y) % 256], axis=-1)
        base[(x // 16 + y // 16) % 2 == 0] *= 0.5  # edges: where resampling lobes over/undershoot
        img = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
        p = os.path.join(d, "gen_%dx%d.png" % (w, h))
        Image.fromarray(img).save(p)
        paths.append(p)
    return paths


def sample_images(d):
    samples = os.path.join(SOURCE, "data", "samples")
    paths = []
    if not os.path.isdir(samples):
        return paths
    for name in sorted(os.listdir(samples)):
        if name.lower().endswith((".png", ".jpg", ".jpeg")):
            p = os.path.join(d, "sample_" + os.path.splitext(name)[0] + ".png")
            Image.open(os.path.join(samples, name)).convert("RGB").save(p)
            paths.append(p)
    return paths


def ours(paths, resize, crop, interpolation, out):
    p = subprocess.run([CLASSIFY, "--preprocess-only", "--resize", str(resize), "--crop", str(crop),
                        "--interpolation", interpolation, "--mean", "0,0,0", "--std", "1,1,1",
                        "--dump-input", out, *paths], capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError("effnet-classify exit %d: %s" % (p.returncode, p.stderr.strip()[-300:]))
    return np.load(out)


def main():
    if not os.path.exists(CLASSIFY):
        print("FAIL  effnet-classify not built at " + CLASSIFY)
        print("0 passed, 1 failed, 0 skipped")
        return 1
    skips = 0
    filters = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
    with tempfile.TemporaryDirectory() as d:
        gen = generated_images(d)
        samples = sample_images(d)
        if not samples:
            skips += 1
            print("skipped: the sample photos (data/samples missing: weights/fetch.sh not run); generated "
                  "images only")
        # (resize, crop): the ImageNet setting, upsampling small images, crop > resize (padding),
        # and resize == a shorter side (13x9 has shorter side 9: no resampling at all).
        configs = [(256, 224, gen + samples), (292, 260, gen + samples), (45, 31, gen), (20, 24, gen), (9, 9, gen)]
        for resize, crop, paths in configs:
            for name, flt in filters.items():
                npy = os.path.join(d, "out.npy")
                try:
                    got = ours(paths, resize, crop, name, npy)
                except RuntimeError as e:
                    check(False, "resize %d crop %d %s: %s" % (resize, crop, name, e))
                    continue
                if not check(got.shape == (len(paths), 3, crop, crop), "shape %s for %d images" % (got.shape, len(paths))):
                    continue
                worst, differing, total = 0.0, 0, 0
                for i, p in enumerate(paths):
                    img = Image.open(p).convert("RGB")
                    resized = torchvision_resize(img, resize, flt)
                    if OLD_PILLOW and vertical_first(img.size, resized.size):
                        skips += 1
                        print("skipped: %s -> %s (Pillow %s orders the passes differently)"
                              % (img.size, resized.size, PIL.__version__))
                        continue
                    ref = torchvision_center_crop(resized, crop)
                    ref = ref.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
                    diff = np.abs(got[i] - ref)
                    worst = max(worst, float(diff.max()))
                    differing += int((diff > 1e-6).sum())
                    total += diff.size
                check(worst <= TOLERANCE, "resize %d crop %d %s over %d images: max |ours - PIL| = %.6f "
                      "(%.2f levels), %d of %d values differ" % (resize, crop, name, len(paths), worst,
                                                                  worst * 255, differing, total))
    print("%d passed, %d failed, %d skipped" % (passed, failed, skips))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
