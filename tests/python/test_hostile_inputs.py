#!/usr/bin/env python3
"""Hostile and damaged inputs to effnet-classify and effnet-run (issue 15, items 1-3, 9, 10).

Each case was a crash, a silent wrong answer or a lost file before the fix, and must now be one
"error: ..." line and exit status 1, with nothing overwritten:
  1. a weights file whose tensor shape / data_offsets nest 100,000 JSON arrays (SIGSEGV before);
  2. finite but huge weights (3e38 in a project conv: "-nan%" probabilities, exit 0 before), and
     a negative batch-norm running variance (loaded silently before);
  3. preprocess.crop / preprocess.resize metadata past preprocessing's limit (65536: bad_alloc);
  9. effnet-run --output naming --weights or --input (replaced the weights with logits before);
 10. an F64 input of 1e300 (reported as "non-finite" before), an input too small for the network
     (the error did not name the file), a byte flipped in an effnet-written file's data.

The weights are the torchvision tiny fixture (tests/data/golden/tv_tiny_golden.safetensors,
parameters 'param.*'), rewritten here with torchvision names. Prints one line per check and
"N passed, M failed, 0 skipped" last; exits non-zero on any failure.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

SOURCE = os.environ.get("EFFNET_SOURCE_DIR", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BINARY = os.environ.get("EFFNET_BINARY_DIR", os.path.join(SOURCE, "build"))
CLASSIFY = os.path.join(BINARY, "examples", "effnet-classify")
RUN = os.path.join(BINARY, "examples", "effnet-run")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from convert_fixtures import as_array, read_safetensors  # noqa: E402

passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
        print("ok   ", what)
    else:
        failed += 1
        print("FAIL ", what)
    return cond


CODES = {np.dtype("<f4"): "F32", np.dtype("<f8"): "F64", np.dtype("<i8"): "I64"}


def safetensors_bytes(tensors, metadata=None, header_text=None):
    """tensors: {name: numpy array}; header_text replaces the JSON header when given."""
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        raw = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": CODES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = metadata
    text = (header_text if header_text is not None else json.dumps(header)).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


def tiny_weights():
    """The fixture's parameters under torchvision names, and the metadata the loader reads."""
    golden, metadata = read_safetensors(os.path.join(SOURCE, "tests", "data", "golden", "tv_tiny_golden.safetensors"))
    tensors = {}
    for name, entry in golden.items():
        if name.startswith("param.") and not name.endswith("num_batches_tracked"):
            tensors[name[len("param."):]] = np.ascontiguousarray(as_array(entry), dtype=np.float32)
    meta = {k: metadata[k] for k in ("padding", "bn_eps", "activation")}
    meta.update({"preprocess.resize": "40", "preprocess.crop": "32"})
    return tensors, meta


def one_error_line(p):
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    return p.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ")


def run(program, *args):
    return subprocess.run([program, *args], capture_output=True, text=True, timeout=600)


def main():
    tensors, meta = tiny_weights()
    project = "features.2.0.block.3.0.weight"  # block 1's project conv (expand, dw, SE, project)
    running_var = "features.2.0.block.1.1.running_var"
    assert project in tensors and running_var in tensors, sorted(tensors)[:8]
    with tempfile.TemporaryDirectory() as d:
        from PIL import Image
        image = os.path.join(d, "photo.png")
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(image)
        good = write(os.path.join(d, "good.safetensors"), safetensors_bytes(tensors, meta))
        p = run(CLASSIFY, "--weights", good, "--device", "cpu", image)
        check(p.returncode == 0 and "photo.png" in p.stdout, f"the unmodified weights classify (rc {p.returncode})")

        # 1. Deep nesting in shape and in data_offsets: one short error line, no crash.
        for field in ("shape", "data_offsets"):
            nested = "[" * 100000 + "]" * 100000
            entry = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
            text = json.dumps({"w": entry}).replace(json.dumps(entry[field]), nested, 1)
            bad = write(os.path.join(d, f"nested_{field}.safetensors"), safetensors_bytes({}, header_text=text) + b"\0" * 8)
            p = run(CLASSIFY, "--weights", bad, "--device", "cpu", image)
            check(one_error_line(p) and "deeper than 16 levels" in p.stderr and len(p.stderr) < 300,
                  f"1. 100,000 nested arrays in '{field}': one short error (rc {p.returncode}, {len(p.stderr)} bytes)")

        # 2. Finite but huge weights: an error naming the first layer whose output overflows
        # (blocks.2.expand: block 1's project output stays finite, its BN and the next conv do
        # not) and the huge parameter, in text and --json mode.
        huge = dict(tensors)
        huge[project] = np.full_like(tensors[project], 3e38)
        bad = write(os.path.join(d, "huge.safetensors"), safetensors_bytes(huge, meta))
        for extra in ([], ["--json"]):
            p = run(CLASSIFY, "--weights", bad, "--device", "cpu", *extra, image)
            check(one_error_line(p) and "non-finite logits for" in p.stderr and "is 'blocks.2.expand'" in p.stderr
                  and "3e+38, in 'blocks.1.project.conv.weight' (file: 'features.2.0.block.3.0.weight')" in p.stderr
                  and "nan" not in p.stdout.lower(),
                  f"2. 3e38 in a project conv {' '.join(extra)}: error naming the first non-finite layer and the huge weight (rc {p.returncode}): "
                  + p.stderr.strip()[-250:])
        p = run(RUN, "--weights", bad, "--input", write(os.path.join(d, "x.safetensors"), safetensors_bytes(
            {"input": rng.standard_normal((2, 3, 32, 32)).astype(np.float32)})), "--output", os.path.join(d, "out.safetensors"))
        check(one_error_line(p) and "'blocks.1.project.conv.weight'" in p.stderr and not os.path.exists(os.path.join(d, "out.safetensors")),
              f"2. effnet-run refuses non-finite logits, naming the layer, writing nothing (rc {p.returncode})")
        negative = dict(tensors)
        negative[running_var] = tensors[running_var].copy()
        negative[running_var][3] = -0.5
        bad = write(os.path.join(d, "negvar.safetensors"), safetensors_bytes(negative, meta))
        p = run(CLASSIFY, "--weights", bad, "--device", "cpu", image)
        check(one_error_line(p) and running_var in p.stderr and "negative variance" in p.stderr,
              f"2. negative BN running variance refused at load (rc {p.returncode})")

        # 3. Preprocessing sizes in metadata: bounded by preprocessing's own limit, stated.
        for key, value in (("preprocess.crop", "65536"), ("preprocess.crop", "4096"), ("preprocess.resize", "65536")):
            m = dict(meta, **{key: value})
            bad = write(os.path.join(d, "bomb.safetensors"), safetensors_bytes(tensors, m))
            p = run(CLASSIFY, "--weights", bad, "--device", "cpu", image)
            check(one_error_line(p) and key in p.stderr and "[1, 2048]" in p.stderr,
                  f"3. metadata {key}={value} refused with the limit (rc {p.returncode})")

        # 9. An output that names an input is refused; the input is untouched.
        x = write(os.path.join(d, "input.safetensors"), safetensors_bytes(
            {"input": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)}))
        link = os.path.join(d, "link.safetensors")
        os.symlink(good, link)
        for option, target, output in (("weights", good, good), ("input", x, x), ("weights", good, link)):
            before = open(target, "rb").read()
            p = run(RUN, "--weights", good, "--input", x, "--output", output)
            check(one_error_line(p) and f"--{option}" in p.stderr and open(target, "rb").read() == before,
                  f"9. effnet-run --output {os.path.basename(output)} naming --{option} refused, file intact (rc {p.returncode})")
        p = run(CLASSIFY, "--weights", good, "--device", "cpu", "--dump-input", image, image)
        check(p.returncode == 1 and "refusing to overwrite" in p.stderr and Image.open(image).size == (40, 48),
              f"9. effnet-classify --dump-input naming an input image refused (rc {p.returncode})")

        # 10. Inputs: F64 out of float32's range named as such; too small an image names the file.
        big = np.zeros((1, 3, 32, 32), np.float64)
        big[0, 1, 2, 3] = 1e300
        bad = write(os.path.join(d, "f64.safetensors"), safetensors_bytes({"input": big}))
        p = run(RUN, "--weights", good, "--input", bad, "--output", os.path.join(d, "o.safetensors"))
        check(one_error_line(p) and "outside float32's range" in p.stderr and "non-finite" not in p.stderr,
              f"10. F64 input 1e300 named as out of float32's range (rc {p.returncode})")
        tiny = write(os.path.join(d, "tiny.safetensors"), safetensors_bytes(
            {"input": np.zeros((1, 3, 0, 4), np.float32)}))
        p = run(RUN, "--weights", good, "--input", tiny, "--output", os.path.join(d, "o.safetensors"))
        check(one_error_line(p) and tiny in p.stderr, f"10. input of shape [1,3,0,4] names the file (rc {p.returncode})")
        wide = write(os.path.join(d, "wide.safetensors"), safetensors_bytes(
            {"input": np.zeros((1, 3, 4, 3000), np.float32)}))
        p = run(RUN, "--weights", good, "--input", wide, "--output", os.path.join(d, "o.safetensors"))
        check(one_error_line(p) and wide in p.stderr and "2048" in p.stderr,
              f"10. input wider than the limit names the file and the limit (rc {p.returncode})")

        # Checksums: effnet-run's output carries one; a flipped data byte is then refused.
        out = os.path.join(d, "logits.safetensors")
        p = run(RUN, "--weights", good, "--input", x, "--output", out)
        data = bytearray(open(out, "rb").read())
        header = json.loads(data[8:8 + struct.unpack("<Q", data[:8])[0]])
        check(p.returncode == 0 and header["__metadata__"].get("effnet.checksum", "").startswith("xxh3_64:"),
              "effnet-run's output carries an xxh3_64 checksum")
        data[-3] ^= 0x10
        write(out, bytes(data))
        p = run(RUN, "--weights", good, "--input", out, "--output", os.path.join(d, "o2.safetensors"))
        check(p.returncode == 1 and "does not match its checksum" in p.stderr,
              f"a flipped data byte in an effnet-written file is refused (rc {p.returncode})")

    print(f"{passed} passed, {failed} failed, 0 skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
