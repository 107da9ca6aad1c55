#!/usr/bin/env python3
"""Seed corpora for the libFuzzer harnesses in tests/fuzz, generated (nothing binary is
committed). Usage:

    tools/make_fuzz_corpus.py --seed-writer build-fuzz/tests/fuzz/effnet_fuzz_seeds OUT

writes OUT/seeds/<harness>/ for fuzz_safetensors, fuzz_weights, fuzz_checkpoint and
fuzz_image, and OUT/regressions/<harness>/: inputs that once crashed or misbehaved, made
by code here, which the test command runs through each harness once.

safetensors seeds are written here (every dtype, scalar / empty / 3-d shapes, metadata,
gaps); weights and checkpoint seeds come from effnet's own writers (effnet_fuzz_seeds), each
also without its `effnet.checksum` metadata entry, so that mutations of the data section
still reach the loaders' later checks instead of stopping at the checksum; images come from
Pillow in each format and several modes.
"""
import argparse
import io
import json
import os
import shutil
import struct
import subprocess
import sys

from PIL import Image

CHECKSUM_KEY = "effnet.checksum"


def safetensors_bytes(tensors, metadata=None, gap=0):
    """tensors: [(name, dtype, shape, raw bytes)] packed in order, `gap` bytes between them."""
    header, data = {}, b""
    for name, dtype, shape, raw in tensors:
        if data:
            data += b"\0" * gap
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes with spaces
    return struct.pack("<Q", len(text)) + text + data


def split_safetensors(blob):
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def without_checksum(blob):
    """The same file with metadata's effnet.checksum removed, or None when it has none."""
    header, data = split_safetensors(blob)
    meta = header.get("__metadata__", {})
    if CHECKSUM_KEY not in meta:
        return None
    del meta[CHECKSUM_KEY]
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def write(path, blob):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(blob)


def safetensors_seeds(out):
    f32 = lambda *v: struct.pack("<%df" % len(v), *v)
    seeds = {
        "f32_matrix": [("w", "F32", [2, 3], f32(1, 2, 3, 4, 5, 6))],
        "f16_bf16": [("h", "F16", [2], struct.pack("<2H", 0x3C00, 0x7BFF)),
                     ("b", "BF16", [2], struct.pack("<2H", 0x3F80, 0xFF7F))],
        "f64_i64": [("d", "F64", [2], struct.pack("<2d", 1.5, -1e300)),
                    ("counters", "I64", [3], struct.pack("<3q", 1, -2, 2**62))],
        "scalar_and_empty": [("s", "F32", [], f32(7)), ("e", "F32", [0, 4], b"")],
        "rank4": [("conv", "F32", [2, 1, 1, 2], f32(0.5, -0.5, 0.25, 1e-3))],
    }
    for name, tensors in seeds.items():
        write(f"{out}/{name}.safetensors", safetensors_bytes(tensors))
    write(f"{out}/metadata.safetensors",
          safetensors_bytes(seeds["f32_matrix"], {"format": "pt", "note": "seed", "effnet.family": "effnet"}))
    write(f"{out}/gap.safetensors", safetensors_bytes(seeds["f64_i64"], gap=8))
    write(f"{out}/empty.safetensors", safetensors_bytes([], {}))


def image_seeds(out):
    def gradient(mode, w, h):
        img = Image.new("RGB", (w, h))
        img.putdata([((x * 37) % 256, (y * 53) % 256, ((x + y) * 11) % 256) for y in range(h) for x in range(w)])
        return img.convert(mode) if mode != "RGB" else img

    def save(name, img, fmt, **kw):
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        write(f"{out}/{name}", buf.getvalue())

    rgb = gradient("RGB", 17, 11)  # odd sizes: partial JPEG MCUs, BMP row padding
    save("rgb.jpg", rgb, "JPEG", quality=80)
    save("gray.jpg", gradient("L", 9, 9), "JPEG")
    save("progressive.jpg", rgb, "JPEG", progressive=True)
    save("subsampled444.jpg", rgb, "JPEG", subsampling=0)
    save("cmyk.jpg", rgb.convert("CMYK"), "JPEG")
    save("restarts.jpg", gradient("RGB", 40, 24), "JPEG", restart_marker_blocks=1)
    save("one_pixel.jpg", gradient("RGB", 1, 1), "JPEG")
    save("rgb.png", rgb, "PNG")
    save("rgba.png", gradient("RGBA", 7, 5), "PNG")
    save("gray.png", gradient("L", 7, 5), "PNG")
    save("gray_alpha.png", gradient("LA", 5, 3), "PNG")
    save("palette.png", rgb.convert("P", palette=Image.ADAPTIVE, colors=8), "PNG")
    save("bilevel.png", gradient("1", 13, 3), "PNG")
    save("gray16.png", gradient("L", 6, 4).convert("I;16"), "PNG")
    save("interlaced.png", rgb, "PNG", interlace=1)
    save("rgb.bmp", rgb, "BMP")
    save("palette.bmp", rgb.convert("P", palette=Image.ADAPTIVE, colors=16), "BMP")
    save("bilevel.bmp", gradient("1", 13, 3), "BMP")
    save("gray.bmp", gradient("L", 5, 3), "BMP")
    save("rgba.bmp", gradient("RGBA", 5, 3), "BMP")
    save("rgb.tga", rgb, "TGA")
    save("rgba_rle.tga", gradient("RGBA", 9, 4), "TGA", compression="tga_rle")
    save("gray_rle.tga", gradient("L", 9, 4), "TGA", compression="tga_rle")
    save("palette.tga", rgb.convert("P", palette=Image.ADAPTIVE, colors=8), "TGA")
    save("top_left.tga", rgb, "TGA", orientation=1)


def writer_seeds(seed_writer, weights_out, checkpoint_out):
    """effnet's own files, plus each one's twin without a checksum."""
    os.makedirs(weights_out, exist_ok=True)
    os.makedirs(checkpoint_out, exist_ok=True)
    subprocess.run([seed_writer, weights_out, checkpoint_out], check=True)
    for d in (weights_out, checkpoint_out):
        for name in sorted(os.listdir(d)):
            with open(os.path.join(d, name), "rb") as f:
                bare = without_checksum(f.read())
            if bare is not None:
                write(os.path.join(d, name.replace(".safetensors", "-nochecksum.safetensors")), bare)


def regression_inputs(out):
    """Inputs that crashed or misbehaved once (issue 15), made by code. Each is run once
    through the harness named by its folder."""
    # Item 1: a deeply nested `shape` made the error message's JSON printer recurse until
    # the stack ran out (SIGSEGV at ~100,000 levels).
    depth = 100_000
    header = b'{"w":{"dtype":"F32","shape":' + b"[" * depth + b"]" * depth + b',"data_offsets":[0,4]}}'
    blob = struct.pack("<Q", len(header)) + header + b"\0" * 4
    for harness in ("fuzz_safetensors", "fuzz_weights", "fuzz_checkpoint"):
        write(f"{out}/{harness}/nested_shape.safetensors", blob)
    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":' + b"[" * depth + b"]" * depth + b"}}"
    write(f"{out}/fuzz_safetensors/nested_offsets.safetensors", struct.pack("<Q", len(header)) + header)
    # fuzz_image findings, fixed in libeffnet/image.cpp (tests/cpu/test_image_hostile.cpp has
    # the same cases with their error messages).
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(buf, "JPEG")
    jpg = buf.getvalue()
    dht = jpg.index(b"\xff\xc4")
    # A Huffman table whose 16 counts sum to 512: stb wrote past its 256-entry arrays.
    write(f"{out}/fuzz_image/dht_512_codes.jpg", jpg[: dht + 5] + b"\x20" * 16 + jpg[dht + 21 :])
    # A truncated JPEG behind fill bytes: stb decoded it, effnet took it for TGA, unchecked.
    write(f"{out}/fuzz_image/fill_bytes_truncated.jpg", b"\xff\xff" + jpg[1 : len(jpg) // 2])
    # A BMP header of 2^31-1 x 2^31-1 at 32 bpp: int64 overflow in the truncation check.
    bmp = b"BM" + struct.pack("<IHHI", 70, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, 2**31 - 1, 2**31 - 1, 1, 32, 0, 0, 0, 0, 0, 0)
    write(f"{out}/fuzz_image/bmp_huge_sides.bmp", bmp + b"\0" * 16)
    # A scan whose Huffman tables were never defined (DHT segments dropped): stb decoded with
    # uninitialised table memory.
    segments, i = [jpg[:2]], 2
    while jpg[i + 1] != 0xDA:
        length = struct.unpack(">H", jpg[i + 2 : i + 4])[0]
        if jpg[i + 1] != 0xC4:
            segments.append(jpg[i : i + 2 + length])
        i += 2 + length
    write(f"{out}/fuzz_image/undefined_huffman_table.jpg", b"".join(segments) + jpg[i:])
    # Item 10: a valid 10000x10 image (decodes; preprocessing once refused it).
    buf = io.BytesIO()
    Image.new("RGB", (10000, 10), (200, 30, 90)).save(buf, "PNG")
    write(f"{out}/fuzz_image/wide_10000x10.png", buf.getvalue())


def with_tensor_bytes(blob, name, raw):
    """The same safetensors file with tensor `name`'s data replaced (same length)."""
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    begin, end = header[name]["data_offsets"]
    assert end - begin == len(raw)
    start = 8 + n + begin
    return blob[:start] + raw + blob[start + len(raw) :]


def checkpoint_regressions(seeds, out):
    """Regression inputs derived from a seed checkpoint (tests/fuzz/FINDINGS.md; fixed)."""
    with open(f"{seeds}/fuzz_checkpoint/sgd-nochecksum.safetensors", "rb") as f:
        ck = f.read()
    # checkpoint.cpp cast state/scaler's F64 counters to int64 unchecked (UBSan:
    # float-cast-overflow; any value past 2^63 or NaN); now range-checked first.
    write(f"{out}/fuzz_checkpoint/scaler_1e300.safetensors",
          with_tensor_bytes(ck, "state/scaler", struct.pack("<3d", 1.0, 1e300, 0.0)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed-writer", required=True, help="path to the built effnet_fuzz_seeds")
    ap.add_argument("out", help="output folder (seeds/ and regressions/ are replaced)")
    args = ap.parse_args()
    seeds = os.path.join(args.out, "seeds")
    regressions = os.path.join(args.out, "regressions")
    for d in (seeds, regressions, os.path.join(args.out, "open")):
        shutil.rmtree(d, ignore_errors=True)

    safetensors_seeds(f"{seeds}/fuzz_safetensors")
    image_seeds(f"{seeds}/fuzz_image")
    writer_seeds(args.seed_writer, f"{seeds}/fuzz_weights", f"{seeds}/fuzz_checkpoint")
    # Weights and checkpoints are safetensors too: the parser's corpus gets them as well.
    for kind in ("fuzz_weights", "fuzz_checkpoint"):
        for name in os.listdir(f"{seeds}/{kind}"):
            shutil.copy(f"{seeds}/{kind}/{name}", f"{seeds}/fuzz_safetensors/{kind[5:]}-{name}")
    regression_inputs(regressions)
    checkpoint_regressions(seeds, regressions)

    for d in sorted(os.listdir(seeds)):
        files = os.listdir(os.path.join(seeds, d))
        size = sum(os.path.getsize(os.path.join(seeds, d, f)) for f in files)
        print(f"{d}: {len(files)} seeds, {size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
