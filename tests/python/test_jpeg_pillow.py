#!/usr/bin/env python3
"""JPEG decoding (libeffnet/jpeg_decode.cpp, libjpeg-turbo) against Pillow, pixel for pixel.

(a) Every kind of JPEG we can make here, decoded by effnet (tests/image_tool.cpp "decode") and by
    Pillow's np.asarray(Image.open(p).convert("RGB")): the difference must be 0 everywhere.
    Written by Pillow: baseline at several qualities, progressive, optimized Huffman tables,
    4:2:0 / 4:2:2 / 4:4:4, grayscale, CMYK (Adobe, inverted), restart markers every block / every
    row, an EXIF orientation tag (not applied by either side), odd sizes (1x1, 17x9, 333x500, ...).
    Written by libjpeg (tests/image_tool.cpp "encode"; kinds Pillow cannot write): YCCK, RGB
    without the YCbCr transform, arithmetic coding, 4:4:0 and 4:1:1 sampling, progressive
    arithmetic, restart intervals. Edited streams: no DHT (libjpeg's standard tables, as in
    Motion JPEG), entropy-coded data corrupted in the middle (libjpeg recovers with a warning;
    Pillow ignores warnings, and so do we), bytes after EOI. And the sample photos in
    data/samples (the JPEG ones as they are, the PNG ones re-saved as JPEG).
(b) Malformed JPEGs: exactly one "error: PATH: reason" line each with the expected reason, no
    crash; Pillow refuses each of them too (checked, so the two agree on what is an image).
(c) effnet-classify with EfficientNet-Lite0 (data/, weights/fetch.sh) on JPEG photos against a
    Pillow-fed reference: Pillow decode + torchvision's Resize/CenterCrop/ToTensor/Normalize (in
    NumPy, as tests/python/test_preprocess.py) + the independent NumPy forward
    (tests/python/numpy_effnet.py): the input tensors must be equal and the top-5 probabilities
    within 1e-5. Skipped (line "skipped: ...") without the weights.

Prints "N passed, M failed, K skipped" last; exits non-zero on any failure.
"""
import io
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image, features

SOURCE = os.environ.get("EFFNET_SOURCE_DIR", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BINARY = os.environ.get("EFFNET_BINARY_DIR", os.path.join(SOURCE, "build"))
TOOL = os.path.join(BINARY, "tests", "effnet_image_tool")
CLASSIFY = os.path.join(BINARY, "examples", "effnet-classify")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

passed = failed = skips = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
        print("ok   ", what)
    else:
        failed += 1
        print("FAIL ", what)
    return cond


def photo_like(width, height, seed):
    """Smooth gradients, noise and hard edges: content where IDCT and upsampling rounding show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([np.sin(x / 9.0) * 90 + 128 + y * 0.2, np.cos(y / 7.0) * 90 + 120, (x + 2 * y) % 256], axis=-1)
    base[((x // 13 + y // 11) % 2) == 0] *= 0.6
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def decode_ours(paths, out):
    """-> ([array or None], stderr) from effnet_image_tool decode."""
    p = subprocess.run([TOOL, "decode", out, *paths], capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError("effnet_image_tool decode exit %d: %s" % (p.returncode, p.stderr[-300:]))
    data = open(out, "rb").read()
    images, at = [], 0
    for _ in paths:
        w, h = struct.unpack_from("<II", data, at)
        at += 8
        if w == 0:
            images.append(None)
            continue
        images.append(np.frombuffer(data, np.uint8, w * h * 3, at).reshape(h, w, 3))
        at += w * h * 3
    return images, p.stderr


def pillow_rgb(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def encode_libjpeg(d, name, pixels, *options):
    """A JPEG written by libjpeg through effnet_image_tool encode."""
    raw = os.path.join(d, name + ".raw")
    pixels = np.ascontiguousarray(pixels)
    pixels.tofile(raw)
    h, w = pixels.shape[:2]
    c = 1 if pixels.ndim == 2 else pixels.shape[2]
    path = os.path.join(d, name + ".jpg")
    p = subprocess.run([TOOL, "encode", raw, str(w), str(h), str(c), path, *options], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError("encode %s: %s" % (name, p.stderr[-300:]))
    return path


def segments_without(data, marker):
    """The JPEG stream with every segment of `marker` (e.g. 0xC4) before the first SOS removed."""
    out, i = bytearray(data[:2]), 2
    while data[i] == 0xFF and data[i + 1] != 0xDA:
        length = data[i + 2] << 8 | data[i + 3]
        if data[i + 1] != marker:
            out += data[i:i + 2 + length]
        i += 2 + length
    return bytes(out + data[i:])


def sos_offset(data):
    i = 2
    while data[i + 1] != 0xDA:
        i += 2 + (data[i + 2] << 8 | data[i + 3])
    return i + 2 + (data[i + 2] << 8 | data[i + 3])


def good_jpegs(d):
    """-> [(kind, path)]"""
    out = []

    def pil(kind, img, **save):
        path = os.path.join(d, kind.replace(" ", "_").replace(":", "").replace("/", "_") + ".jpg")
        img.save(path, format="JPEG", **save)
        out.append((kind, path))
        return path

    base = Image.fromarray(photo_like(333, 500, 1))
    for q in (5, 50, 75, 90, 95, 100):
        pil("baseline q%d 4:2:0" % q, base, quality=q)
    for s, name in ((0, "4:4:4"), (1, "4:2:2"), (2, "4:2:0")):
        pil("baseline %s" % name, base, quality=90, subsampling=s)
        pil("progressive %s" % name, base, quality=90, subsampling=s, progressive=True)
    pil("optimized Huffman", base, quality=90, optimize=True)
    pil("progressive optimized", base, quality=90, optimize=True, progressive=True)
    pil("grayscale", base.convert("L"), quality=90)
    pil("grayscale progressive", base.convert("L"), quality=90, progressive=True)
    pil("CMYK (Adobe inverted)", base.convert("CMYK"), quality=90)
    pil("CMYK progressive", base.convert("CMYK"), quality=90, progressive=True)
    pil("restart markers every block", base, quality=90, restart_marker_blocks=1)
    pil("restart markers every 2 rows", base, quality=90, restart_marker_rows=2)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display; neither Pillow's open nor ours applies it
    pil("EXIF orientation 6 (not applied)", base, quality=90, exif=exif.tobytes())
    pil("ICC profile + comment", base, quality=90, icc_profile=b"\0" * 200, comment=b"effnet")
    for w, h in ((1, 1), (2, 2), (17, 9), (9, 17), (8, 8), (16, 16), (33, 7), (500, 375), (1023, 17)):
        img = Image.fromarray(photo_like(w, h, w * 31 + h))
        pil("size %dx%d 4:2:0" % (w, h), img, quality=90)
        pil("size %dx%d 4:2:2 progressive" % (w, h), img, quality=85, subsampling=1, progressive=True)

    # libjpeg-written kinds Pillow cannot write.
    px = photo_like(333, 250, 2)
    cmyk_inverted = 255 - np.asarray(Image.fromarray(px).convert("CMYK"))  # Adobe CMYK, as Pillow stores it
    for name, pixels, opts in [
            ("YCCK (Adobe transform 2)", cmyk_inverted, ["ycck"]),
            ("YCCK progressive", cmyk_inverted, ["ycck", "progressive"]),
            ("RGB, no YCbCr transform (Adobe transform 0)", px, ["rgb"]),
            ("arithmetic coding", px, ["arith"]),
            ("arithmetic progressive", px, ["arith", "progressive"]),
            ("4:4:0 (1x2)", px, ["sampling=1x2"]),
            ("4:1:1 (4x1)", px, ["sampling=4x1"]),
            ("4:2:0 restart interval 3 MCUs", px, ["restart=3"]),
            ("grayscale arithmetic", px[:, :, 0], ["arith"])]:
        out.append((name + " [libjpeg]", encode_libjpeg(d, name.split(" ")[0].replace(":", "") + str(len(out)), pixels, *opts)))

    # Edited streams.
    buf = io.BytesIO()
    base.save(buf, format="JPEG", quality=90)  # standard Huffman tables (not optimized)
    data = buf.getvalue()
    for name, edited in [("no DHT (standard tables, Motion JPEG)", segments_without(data, 0xC4)),
                         ("bytes after EOI", data + b"camera trailer \x00\xff\xd8" * 10)]:
        path = os.path.join(d, "edit%d.jpg" % len(out))
        open(path, "wb").write(edited)
        out.append((name, path))
    corrupt = bytearray(data)
    at = sos_offset(data) + (len(data) - sos_offset(data)) // 2
    for k in range(0, 40, 4):  # flipped bits in the entropy-coded data (never creating a marker)
        if corrupt[at + k] not in (0xFF, 0x00) and corrupt[at + k - 1] != 0xFF:
            corrupt[at + k] ^= 0x5A
            if corrupt[at + k] == 0xFF:
                corrupt[at + k] = 0xFE
    path = os.path.join(d, "corrupt_data.jpg")
    open(path, "wb").write(bytes(corrupt))
    out.append(("corrupt entropy-coded data (libjpeg warns, recovers)", path))

    # Sample photos.
    samples = os.path.join(SOURCE, "data", "samples")
    if os.path.isdir(samples):
        for name in sorted(os.listdir(samples)):
            src = os.path.join(samples, name)
            if name.lower().endswith((".jpg", ".jpeg")):
                out.append(("sample " + name, src))
            elif name.lower().endswith(".png"):
                with Image.open(src) as im:
                    pil("sample %s as JPEG q90" % name, im.convert("RGB"), quality=90)
    return out


def test_exact(d):
    global skips
    kinds = good_jpegs(d)
    if not any(k.startswith("sample") for k, _ in kinds):
        skips += 1
        print("skipped: the sample photos (data/samples missing: weights/fetch.sh not run)")
    ours, err = decode_ours([p for _, p in kinds], os.path.join(d, "decoded.bin"))
    for (kind, path), got in zip(kinds, ours):
        ref = pillow_rgb(path)
        if got is None:
            check(False, "%s: effnet refused it: %s" % (kind, err.strip()[-200:]))
            continue
        if not check(got.shape == ref.shape, "%s: shape %s (Pillow %s)" % (kind, got.shape, ref.shape)):
            continue
        diff = np.abs(got.astype(int) - ref.astype(int))
        check(diff.max() == 0, "%s %dx%d: max |effnet - Pillow| = %d (%d values differ)"
              % (kind, ref.shape[1], ref.shape[0], diff.max(), int((diff != 0).sum())))


def bad_jpegs(d):
    """-> [(path, expected reason substring)]"""
    good = io.BytesIO()
    Image.fromarray(photo_like(64, 48, 7)).save(good, format="JPEG", quality=90)
    data = good.getvalue()
    sos = sos_offset(data)
    prog = io.BytesIO()
    Image.fromarray(photo_like(64, 48, 8)).save(prog, format="JPEG", quality=90, progressive=True)
    pdata = prog.getvalue()
    sof = data.index(b"\xff\xc0")
    dht = data.index(b"\xff\xc4")
    cases = [
        ("empty.jpg", b"", "empty file"),
        ("soi_only.jpg", b"\xff\xd8", "truncated JPEG"),
        ("header_cut.jpg", data[:sof + 6], "truncated JPEG"),
        ("data_cut.jpg", data[:(sos + len(data)) // 2], "truncated JPEG"),
        ("no_eoi.jpg", data[:-2], "truncated JPEG"),
        ("progressive_cut.jpg", pdata[:len(pdata) * 2 // 3], "truncated JPEG"),
        ("huge_declared.jpg", data[:sof + 5] + struct.pack(">HH", 60000, 60000) + data[sof + 9:], "image too large (60000x60000"),
        ("zero_width.jpg", data[:sof + 5] + struct.pack(">HH", 48, 0) + data[sof + 9:], "cannot decode the JPEG"),
        ("precision12.jpg", data[:sof + 4] + b"\x0c" + data[sof + 5:], "cannot decode the JPEG"),
        ("huffman_512_codes.jpg", data[:dht + 5] + b"\x20" * 16 + data[dht + 21:], "Huffman table with 512 codes"),
        ("huffman_cut.jpg", data[:dht + 5] + b"\x00\x00\x07" + data[dht + 8:], "corrupt JPEG (Huffman table cut off)"),
        # Three codes of length 1 (the counts' sum kept): libjpeg's "Bogus Huffman table definition".
        ("huffman_bogus.jpg", data[:dht + 5] + bytes([3, sum(data[dht + 5:dht + 21]) - 3] + [0] * 14) + data[dht + 21:],
         "cannot decode the JPEG (Bogus Huffman table"),
        ("no_sof.jpg", segments_without(data, 0xC0), "cannot decode the JPEG"),
        ("sos_before_dqt.jpg", data[:2] + data[sos - 14:], "cannot decode the JPEG"),
        ("bad_marker.jpg", data[:2] + b"\xff\x01\x00\x04ab" + b"\xff\xc0\x00\x02" + data[2:], "cannot decode the JPEG"),
        ("garbage_after_soi.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4 + b"\xff\xd9", "cannot decode the JPEG"),
        ("eoi_only.jpg", b"\xff\xd8\xff\xd9", "cannot decode the JPEG"),
        # A progressive stream whose last scan is repeated 1100 times: each scan is a pass over
        # the whole coefficient buffer (a DoS on large images); libjpeg warns, Pillow decodes it.
        # effnet stops at 1000 scans (libeffnet/jpeg_decode.cpp kMaxScans), a deliberate
        # difference: no encoder writes more than a few dozen.
        ("too_many_scans.jpg", pdata[:-2] + pdata[pdata.rindex(b"\xff\xda"):-2] * 1100 + b"\xff\xd9",
         "corrupt JPEG (more than 1000 scans"),
    ]
    out = []
    for name, content, reason in cases:
        path = os.path.join(d, name)
        open(path, "wb").write(content)
        out.append((path, reason))
    return out


def test_bad(d):
    cases = bad_jpegs(d)
    paths = [p for p, _ in cases]
    ours, err = decode_ours(paths, os.path.join(d, "bad.bin"))
    lines = [l for l in err.splitlines() if l.startswith("error: ")]
    check(len(lines) == len(cases), "one error line per malformed JPEG (%d lines, %d files)" % (len(lines), len(cases)))
    for (path, reason), got in zip(cases, ours):
        mine = [l for l in lines if l.startswith("error: %s: " % path)]
        check(got is None and len(mine) == 1 and reason in mine[0],
              "%s: refused with '%s' (got %s)" % (os.path.basename(path), reason, mine))
        try:
            with Image.open(path) as im:
                im.convert("RGB")
            pil = "decodes"
        except Exception as e:  # noqa: BLE001 - any refusal
            pil = "refuses (%s)" % type(e).__name__
        if os.path.basename(path) in ("no_eoi.jpg", "too_many_scans.jpg"):
            # no_eoi: Pillow decodes a stream missing only its EOI when libjpeg's bit reader did
            # not look past the last byte before the last row was out (this 64x48 file), and
            # raises "image file is truncated" when it did (most files: 333x500, 17x9, restart
            # markers, 4:4:4 all raise): a buffering accident, not a rule. effnet always refuses
            # it. too_many_scans: see above.
            print("      %s: Pillow %s (a stated difference, see the comments)" % (os.path.basename(path), pil))
            continue
        check(pil != "decodes", "%s: Pillow %s too" % (os.path.basename(path), pil))


def torchvision_input(path, resize, crop, mean, std, resample):
    """Pillow decode + torchvision Resize(resize) + CenterCrop(crop) + ToTensor + Normalize -> [3, crop, crop]."""
    from test_preprocess import torchvision_center_crop, torchvision_resize
    with Image.open(path) as im:
        img = im.convert("RGB")
    a = torchvision_center_crop(torchvision_resize(img, resize, resample), crop)
    x = a.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    return (x - mean[:, None, None]) / std[:, None, None]


def test_classify(d):
    global skips
    import numpy_effnet
    weights = os.path.join(SOURCE, "data", "efficientnet_lite0.safetensors")
    if not os.path.exists(weights) or not os.path.exists(CLASSIFY):
        skips += 1
        print("skipped: (c) Lite0 on JPEG photos (no data/efficientnet_lite0.safetensors: weights/fetch.sh lite0; "
              "or effnet-classify not built)")
        return
    tensors, meta = numpy_effnet.read_safetensors(weights)
    resize, crop = int(meta["preprocess.resize"]), int(meta["preprocess.crop"])
    mean = np.array([float(v) for v in meta["preprocess.mean"].split(",")], np.float32)
    std = np.array([float(v) for v in meta["preprocess.std"].split(",")], np.float32)
    resample = Image.BICUBIC if meta["preprocess.interpolation"] == "bicubic" else Image.BILINEAR
    photos = []
    samples = os.path.join(SOURCE, "data", "samples")
    for name in sorted(os.listdir(samples)) if os.path.isdir(samples) else []:
        src = os.path.join(samples, name)
        if name.lower().endswith((".jpg", ".jpeg")):
            photos.append(src)
        elif name.lower().endswith(".png"):
            for q, sub in ((90, 2), (75, 1)):
                p = os.path.join(d, "photo_%s_q%d.jpg" % (os.path.splitext(name)[0], q))
                with Image.open(src) as im:
                    im.convert("RGB").save(p, quality=q, subsampling=sub, progressive=q == 75)
                photos.append(p)
    p = os.path.join(d, "photo_synthetic.jpg")
    Image.fromarray(photo_like(500, 375, 9)).save(p, quality=90)
    photos.append(p)
    npy = os.path.join(d, "classify_input.npy")
    run = subprocess.run([CLASSIFY, "--weights", weights, "--device", "cpu", "--json", "--top-k", "5",
                          "--dump-input", npy, *photos], capture_output=True, text=True, timeout=1200)
    if not check(run.returncode == 0, "effnet-classify Lite0 on %d JPEG photos (exit %d) %s"
                 % (len(photos), run.returncode, run.stderr.strip()[-300:])):
        return
    doc = json.loads(run.stdout)
    ours_x = numpy_effnet.load_npy_input(npy)
    ref_x = np.stack([torchvision_input(p, resize, crop, mean, std, resample) for p in photos])
    dx = float(np.abs(ours_x - ref_x).max())
    check(dx == 0.0, "input tensors: effnet's decode + preprocess equals Pillow + torchvision's (max diff %g)" % dx)
    probs = numpy_effnet.softmax(numpy_effnet.lite_logits(tensors, meta, ref_x.astype(np.float64)))
    for r, pr in zip(doc["results"], probs):
        name = os.path.basename(r["path"])
        ours = [(t["class"], t["probability"]) for t in r["top"]]
        worst = max(abs(prob - pr[c]) for c, prob in ours)
        check(ours[0][0] == int(np.argmax(pr)) and worst <= 1e-5,
              "%s: top-1 %d (reference %d), top-5 probabilities within 1e-5 of the Pillow-fed reference "
              "(worst %.2e)" % (name, ours[0][0], int(np.argmax(pr)), worst))


def main():
    if not os.path.exists(TOOL):
        print("FAIL  effnet_image_tool not built at " + TOOL)
        print("0 passed, 1 failed, 0 skipped")
        return 1
    print("Pillow %s, libjpeg-turbo %s" % (Image.__version__ if hasattr(Image, "__version__") else "?",
                                           features.version("libjpeg_turbo")))
    with tempfile.TemporaryDirectory() as d:
        for test in (test_exact, test_bad, test_classify):
            sub = os.path.join(d, test.__name__)
            os.makedirs(sub)
            try:
                test(sub)
            except Exception as e:  # a crash in one part is a failure, the others still run
                check(False, "%s raised %s: %s" % (test.__name__, type(e).__name__, e))
    print("%d passed, %d failed, %d skipped" % (passed, failed, skips))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
