#!/usr/bin/env python3
"""Tests of weights/export.py (effnet weights -> torchvision / timm / lukemelas state dict).

Without torch (always):
- Round trip: each golden checkpoint (real torch.save files: torchvision, timm, timm TF, timm Lite)
  -> convert.py -> effnet-run --save-weights (canonical names) -> export.py gives back the
  original state dict bit for bit: the same names in the same order, shapes, dtypes, strides,
  storage keys and bytes (the .pth read with convert.py's reader, which is independent of
  export.py's writer; the safetensors output with the fixtures' reader). The same for the
  lukemelas Lite0 file fetched into data/ when present.
- The .pth is laid out as torch.save does (members, alignment, records) and its pickle names only
  the globals torch.load(weights_only=True) allows; the output is deterministic.
- effnet loads the exported safetensors (torchvision / timm names) and gives the same logits as
  from the canonical file, bit for bit.
- BN step counters kept in the input are written; absent ones are 0.
- Bad inputs and outputs (not safetensors, truncated, other names, missing / extra / misshaped
  tensors, no or wrong effnet.block_stages, damaged checksum, output = input, existing output,
  ...) each give exit status 1, one `error:` line, no traceback and nothing at the output path.
With torch (the interpreter in $EFFNET_TORCH_PYTHON, else this one; a line "skipped: ..." when it
cannot import torch): the same script re-runs itself there (--torch-part) and checks that
torch.load(weights_only=True) (also with mmap and computed storage offsets) reads the .pth,
torchvision's / timm's models load_state_dict(strict=True) both outputs, their logits equal
effnet-run's within 1e-5 (relative norm; measured values printed), and for full-size
torchvision and timm efficientnet_b0 (random init) torch.save -> convert -> effnet -> export ->
load_state_dict is bit-exact with the same logits.

Prints "N passed, M failed" (and what was skipped) and exits non-zero on any failure.
"""
import collections
import json
import os
import pickletools
import struct
import subprocess
import sys
import tempfile
import traceback
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.environ.get("EFFNET_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
BINARY = os.environ.get("EFFNET_BINARY_DIR", os.path.join(SOURCE, "build"))
RUN = os.path.join(BINARY, "examples", "effnet-run")
CONVERT = os.path.join(SOURCE, "weights", "convert.py")
EXPORT = os.path.join(SOURCE, "weights", "export.py")
GOLDEN = os.path.join(SOURCE, "tests", "data", "golden")
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(SOURCE, "weights"))
from convert_fixtures import as_array, read_safetensors  # noqa: E402

# fixture -> (names for export.py, convert.py options)
FIXTURES = {
    "tv_tiny": ("torchvision", []),
    "timm_tiny": ("timm", []),
    "timm_tf_tiny": ("timm", ["--padding", "tf_same", "--bn-eps", "1e-3"]),
    "timm_lite_tiny": ("timm", ["--padding", "tf_same", "--bn-eps", "1e-3"]),
}
LOGIT_TOLERANCE = 1e-5  # relative norm error, torch fp32 vs effnet's CPU engine (fp32)
ALLOWED_GLOBALS = {"collections OrderedDict", "torch._utils _rebuild_tensor_v2"} | {
    f"torch {n}Storage" for n in ("Float", "Double", "Half", "BFloat16", "Long")}
ST_DTYPE = {"FloatStorage": "F32", "DoubleStorage": "F64", "HalfStorage": "F16",
            "BFloat16Storage": "BF16", "LongStorage": "I64"}

passed = failed = 0
skips = []


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print(f"FAIL: {what}", flush=True)
    return cond


def skipped(what, why):
    skips.append(what)
    print(f"skipped: {what} ({why})", flush=True)


def run(cmd, **kw):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kw)


def export(*args, python=sys.executable):
    return run([python, EXPORT, *args])


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


# ----------------------------------------------------------------------------------------------
# Files


def read_pth(path):
    """[(name, storage type, size, stride, offset, storage key, bytes)] in state-dict order, and
    the top-level type, read with convert.py's unpickler."""
    import convert
    ck = convert.load_checkpoint(path)
    try:
        state, _ = convert.find_state_dict(ck.obj, path)
        out = []
        for name, t in state.items():
            data = t.materialize(path, ck.byteorder).tobytes()
            out.append((name, t.storage.type.name, tuple(t.size), tuple(t.stride), t.storage_offset,
                        t.storage.key, data))
        return out, type(ck.obj)
    finally:
        ck.close()


def write_safetensors(path, tensors, metadata=None):
    """tensors: {name: numpy array}, written in this order (no checksum)."""
    codes = {np.dtype("<f4"): "F32", np.dtype("<f8"): "F64", np.dtype("<i8"): "I64", np.dtype("<f2"): "F16"}
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, a in tensors.items():
        a = np.asarray(a)
        raw = a.tobytes()
        header[name] = {"dtype": codes[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def load_tensors(path):
    t, m = read_safetensors(path)
    return collections.OrderedDict((k, as_array(v).copy()) for k, v in t.items()), m


def canonical_from(pth, tmp, name, convert_options=()):
    """golden .pth -> convert.py -> effnet-run --save-weights: a file with canonical names."""
    converted = os.path.join(tmp, name + ".converted.safetensors")
    canonical = os.path.join(tmp, name + ".canonical.safetensors")
    r = run([sys.executable, CONVERT, pth, converted, *convert_options])
    assert r.returncode == 0, f"convert.py {pth}: {r.stderr}"
    r = run([RUN, "--weights", converted, "--save-weights", canonical])
    assert r.returncode == 0, f"effnet-run --save-weights {converted}: {r.stderr}"
    return converted, canonical


def effnet_logits(weights, inp, out):
    r = run([RUN, "--weights", weights, "--input", inp, "--output", out])
    assert r.returncode == 0, f"effnet-run {weights}: {r.stderr}"
    return as_array(read_safetensors(out)[0]["logits"])


# ----------------------------------------------------------------------------------------------
# Torch-free checks


def check_round_trip(tmp, name, names, options):
    pth = os.path.join(GOLDEN, name + ".pth")
    converted, canonical = canonical_from(pth, tmp, name, options)
    original, _ = read_pth(pth)
    out_pth = os.path.join(tmp, name + ".export.pth")
    out_st = os.path.join(tmp, name + ".export.safetensors")
    for out in (out_pth, out_st):
        r = export(canonical, out, "--names", names)
        check(r.returncode == 0 and "wrote" in r.stdout, f"{name}: export to {out}: {r.stderr}")
    exported, top = read_pth(out_pth)
    check(top is collections.OrderedDict, f"{name}: .pth top level is {top.__name__}, not OrderedDict")
    check([e[0] for e in exported] == [o[0] for o in original],
          f"{name}: .pth names or their order differ from the original state dict")
    # Everything but the storage key must be identical; keys too, as torch numbers them in order.
    same = [e == o for e, o in zip(exported, original)]
    check(len(exported) == len(original) and all(same),
          f"{name}: .pth tensors differ from the original: "
          f"{[o[0] for o, s in zip(original, same) if not s][:5]}")
    st, meta = read_safetensors(out_st)
    ok = set(st) == {o[0] for o in original} and all(
        st[o[0]][0] == ST_DTYPE[o[1]] and tuple(st[o[0]][1]) == o[2] and st[o[0]][2] == o[6] for o in original)
    check(ok, f"{name}: safetensors output differs from the original state dict")
    check(meta.get("effnet.family") == names, f"{name}: safetensors metadata effnet.family {meta.get('effnet.family')}")
    print(f"{name}: {len(original)} tensors, .pth and safetensors bit-exact with the original ({names} names)",
          flush=True)
    return canonical, out_pth, out_st


def check_pth_layout(path, count):
    z = zipfile.ZipFile(path)
    names = z.namelist()
    expected = (["archive/data.pkl", "archive/.format_version", "archive/.storage_alignment", "archive/byteorder"]
                + [f"archive/data/{i}" for i in range(count)] + ["archive/version", "archive/.data/serialization_id"])
    check(names == expected, f"{path}: members {names[:6]}... differ from torch.save's")
    check(z.testzip() is None, f"{path}: a member's CRC is wrong")
    check(all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist()), f"{path}: compressed members")
    check(z.read("archive/version") == b"3\n" and z.read("archive/byteorder") == b"little"
          and z.read("archive/.format_version") == b"1" and z.read("archive/.storage_alignment") == b"64",
          f"{path}: version / byteorder / format records differ from torch.save's")
    raw = open(path, "rb").read()
    aligned = True
    for info in z.infolist():
        n, e = struct.unpack_from("<HH", raw, info.header_offset + 26)
        start = info.header_offset + 30 + n + e
        aligned &= start % 64 == 0 and raw[start + info.file_size:start + info.file_size + 4] == b"PK\x07\x08"
    check(aligned, f"{path}: member data not 64-byte aligned or without a data descriptor (torch's layout)")
    globals_used = {str(arg) for op, arg, _ in pickletools.genops(z.read("archive/data.pkl"))
                    if op.name == "GLOBAL"}
    check(globals_used <= ALLOWED_GLOBALS, f"{path}: pickle names globals {globals_used - ALLOWED_GLOBALS}")


def expect_error(args, output, expect, what):
    """export.py must exit 1 with one `error:` line containing `expect`, no traceback, and leave
    nothing at `output` nor a temporary file beside it."""
    folder = os.path.dirname(os.path.abspath(output))
    before = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    existed = os.path.exists(output)
    r = export(*args)
    lines = [l for l in r.stderr.splitlines() if not l.startswith(("note:", "warning:"))]
    ok = (r.returncode == 1 and "Traceback" not in r.stderr and len(lines) == 1
          and lines[0].startswith("error: ") and expect in lines[0])
    check(ok, f"{what}: expected one 'error: ...{expect}...' line and exit 1, got {r.returncode}: {r.stderr!r}")
    if not existed:
        check(not os.path.exists(output), f"{what}: output written despite the error")
    after = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    check(not [f for f in after - before if f.endswith(".tmp")], f"{what}: temporary file left behind")
    if ok:
        print(f"  {what}: {lines[0]}", flush=True)


def check_errors(tmp, canonical, converted):
    tensors, meta = load_tensors(canonical)
    meta = {k: v for k, v in meta.items() if k != "effnet.checksum"}
    out = os.path.join(tmp, "bad.pth")

    def variant(label, new_tensors=None, new_meta=None):
        path = os.path.join(tmp, f"bad-{label}.safetensors")
        write_safetensors(path, tensors if new_tensors is None else new_tensors,
                          meta if new_meta is None else new_meta)
        return path

    print("error paths:", flush=True)
    expect_error([os.path.join(tmp, "none.safetensors"), out, "--names", "timm"], out, "no such file", "missing input")
    text = os.path.join(tmp, "text.safetensors")
    with open(text, "w") as f:
        f.write("hello, this is not a weights file\n")
    expect_error([text, out, "--names", "timm"], out, "not a safetensors file", "text file")
    empty = os.path.join(tmp, "empty.safetensors")
    open(empty, "wb").close()
    expect_error([empty, out, "--names", "timm"], out, "not a safetensors file", "empty file")
    expect_error([os.path.join(GOLDEN, "tv_tiny.pth"), out, "--names", "timm"], out, "not a safetensors file",
                 "a .pth as input")
    blob = open(canonical, "rb").read()
    cut = os.path.join(tmp, "cut.safetensors")
    with open(cut, "wb") as f:
        f.write(blob[:len(blob) // 2])
    expect_error([cut, out, "--names", "timm"], out, "truncated", "truncated file")
    garbage = os.path.join(tmp, "garbage.safetensors")
    with open(garbage, "wb") as f:
        f.write(struct.pack("<Q", 16) + b'{"a": [1, 2,,]} ')
    expect_error([garbage, out, "--names", "timm"], out, "not valid JSON", "bad JSON header")
    deep = os.path.join(tmp, "deep.safetensors")
    text_deep = b"{" + b'"a":' * 0 + b'"x":' + b"[" * 100000 + b"]" * 100000 + b"}"
    with open(deep, "wb") as f:
        f.write(struct.pack("<Q", len(text_deep)) + text_deep)
    expect_error([deep, out, "--names", "timm"], out, "", "deeply nested JSON header")
    expect_error([converted, out, "--names", "torchvision"], out, "has torchvision names", "torchvision names as input")

    missing = collections.OrderedDict((k, v) for k, v in tensors.items() if k != "blocks.3.dw.bn.running_var")
    expect_error([variant("missing", missing), out, "--names", "torchvision"], out,
                 "missing blocks.3.dw.bn.running_var", "missing tensor")
    wrong = collections.OrderedDict(tensors)
    wrong["blocks.2.se.reduce.weight"] = wrong["blocks.2.se.reduce.weight"].reshape(
        wrong["blocks.2.se.reduce.weight"].shape[:2])
    expect_error([variant("shape", wrong), out, "--names", "torchvision"], out,
                 "wrong shape blocks.2.se.reduce.weight", "SE weight without its 1x1 dims")
    wrong = collections.OrderedDict(tensors)
    wrong["head.bn.bias"] = np.zeros(3, np.float32)
    expect_error([variant("bnshape", wrong), out, "--names", "timm"], out, "wrong shape head.bn.bias", "BN of the wrong size")
    wrong = collections.OrderedDict(tensors)
    wrong["classifier.weight"] = wrong["classifier.weight"].astype(np.int64)
    expect_error([variant("dtype", wrong), out, "--names", "timm"], out, "not a float type", "integer weights")
    extra = collections.OrderedDict(tensors)
    extra["blocks.0.dw.extra"] = np.zeros(2, np.float32)
    expect_error([variant("extra", extra), out, "--names", "timm"], out, "unexpected blocks.0.dw.extra", "extra tensor")
    gap = collections.OrderedDict((k, v) for k, v in tensors.items() if not k.startswith("blocks.5."))
    expect_error([variant("gap", gap), out, "--names", "timm"], out, "block 5 is missing", "a block missing")
    counter = collections.OrderedDict(tensors)
    counter["stem.bn.num_batches_tracked"] = np.zeros(2, np.int64)
    expect_error([variant("counter", counter), out, "--names", "timm"], out,
                 "stem.bn.num_batches_tracked", "BN counter of the wrong shape")
    expect_error([variant("nostages", new_meta={k: v for k, v in meta.items() if k != "effnet.block_stages"}),
                  out, "--names", "timm"], out, "no metadata 'effnet.block_stages'", "no block stages")
    stages = meta["effnet.block_stages"].split(",")
    expect_error([variant("shortstages", new_meta=dict(meta, **{"effnet.block_stages": ",".join(stages[:-1])})),
                  out, "--names", "timm"], out, "lists", "block stages of the wrong length")
    merged = ["0"] * len(stages)
    expect_error([variant("onestage", new_meta=dict(meta, **{"effnet.block_stages": ",".join(merged)})),
                  out, "--names", "timm"], out, "not a repeat", "block stages that merge different blocks")
    expect_error([variant("badstages", new_meta=dict(meta, **{"effnet.block_stages": "0,x"})),
                  out, "--names", "timm"], out, "effnet.block_stages", "block stages not numbers")
    expect_error([variant("family", new_meta=dict(meta, **{"effnet.family": "timm"})), out, "--names", "timm"],
                 out, "effnet.family", "metadata naming another family")

    for label, header in (("duplicate key", b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                                             b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'),
                          ("overlapping tensors", b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
                                                  b'"b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}'),
                          ("offsets that do not fit the shape", b'{"a": {"dtype": "F32", "shape": [3], '
                                                                b'"data_offsets": [0, 8]}}'),
                          ("metadata that is not strings", b'{"__metadata__": {"effnet.block_stages": [0, 1]}}'),
                          ("unknown dtype", b'{"a": {"dtype": "U16", "shape": [1], "data_offsets": [0, 2]}}')):
        path = os.path.join(tmp, "crafted.safetensors")
        header += b" " * (-len(header) % 8)
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(header)) + header + bytes(8))
        expect = {"duplicate key": "twice", "overlapping tensors": "overlap", "unknown dtype": "dtype 'U16'",
                  "offsets that do not fit the shape": "needs 12", "metadata that is not strings": "metadata"}[label]
        expect_error([path, out, "--names", "timm"], out, expect, label)

    damaged = os.path.join(tmp, "damaged.safetensors")
    data = bytearray(blob)
    data[-3] ^= 0x40
    with open(damaged, "wb") as f:
        f.write(data)
    try:
        import xxhash  # noqa: F401
        expect_error([damaged, out, "--names", "timm"], out, "checksum", "damaged file (checksum)")
    except ImportError:
        skipped("damaged-file check", "Python package xxhash not installed")

    expect_error([canonical, canonical, "--names", "timm", "--format", "safetensors", "--force"], canonical,
                 "names the input", "output = input")
    link = os.path.join(tmp, "link.safetensors")
    os.symlink(canonical, link)
    expect_error([canonical, link, "--names", "timm", "--force"], link, "names the input", "output = a link to the input")
    exists = os.path.join(tmp, "exists.pth")
    with open(exists, "wb") as f:
        f.write(b"keep me")
    expect_error([canonical, exists, "--names", "timm"], exists, "exists (pass --force", "existing output")
    check(open(exists, "rb").read() == b"keep me", "existing output changed without --force")
    r = export(canonical, exists, "--names", "timm", "--force")
    check(r.returncode == 0 and zipfile.is_zipfile(exists), f"--force replaces an existing output: {r.stderr}")
    expect_error([canonical, os.path.join(tmp, "no", "such", "dir.pth"), "--names", "timm"],
                 os.path.join(tmp, "no", "such", "dir.pth"), "does not exist", "output folder missing")
    expect_error([canonical, os.path.join(tmp, "out.weights"), "--names", "timm"], os.path.join(tmp, "out.weights"),
                 "--format", "unknown output extension")
    r = export(canonical, out)
    check(r.returncode == 2 and "--names" in r.stderr and not os.path.exists(out), "--names is required")


def check_counters(tmp, canonical):
    tensors, meta = load_tensors(canonical)
    meta = {k: v for k, v in meta.items() if k != "effnet.checksum"}
    tensors["blocks.1.expand.bn.num_batches_tracked"] = np.array(7, np.int64)
    tensors["classifier.bias"] = tensors["classifier.bias"].astype(np.float16)  # dtypes are kept
    tensors["head.bn.weight"] = tensors["head.bn.weight"].astype(np.float64)
    src = os.path.join(tmp, "counters.safetensors")
    write_safetensors(src, tensors, meta)
    out = os.path.join(tmp, "counters.pth")
    r = export(src, out, "--names", "torchvision")
    check(r.returncode == 0, f"export with a BN counter: {r.stderr}")
    exported = {e[0]: e for e in read_pth(out)[0]}
    check(exported["classifier.1.bias"][1] == "HalfStorage"
          and exported["classifier.1.bias"][6] == tensors["classifier.bias"].tobytes()
          and exported["features.8.1.weight"][1] == "DoubleStorage"
          and exported["features.8.1.weight"][6] == tensors["head.bn.weight"].tobytes(),
          "F16 / F64 tensors are written in their own dtype, bit for bit")
    values = {k: np.frombuffer(e[6], np.int64) for k, e in exported.items() if k.endswith("num_batches_tracked")}
    check(values.get("features.2.0.block.0.1.num_batches_tracked", [None])[0] == 7
          and sum(int(v[0]) for v in values.values()) == 7,
          f"BN counters: the one in the input is written, the others are 0 ({len(values)} counters)")


def check_effnet_reads_export(tmp, name, canonical, out_st):
    golden, _ = read_safetensors(os.path.join(GOLDEN, name + "_golden.safetensors"))
    inp = os.path.join(tmp, name + ".input.safetensors")
    write_safetensors(inp, {"input": as_array(golden["input"])})
    a = effnet_logits(canonical, inp, os.path.join(tmp, name + ".logits-canonical.safetensors"))
    b = effnet_logits(out_st, inp, os.path.join(tmp, name + ".logits-export.safetensors"))
    check(np.array_equal(a, b), f"{name}: effnet's logits from the exported safetensors differ from the canonical file's")
    e = rel(a, as_array(golden["eval.logits"]))
    check(e <= LOGIT_TOLERANCE, f"{name}: effnet logits vs PyTorch's golden: {e:.2e}")
    print(f"{name}: effnet reads the exported safetensors: same logits bit for bit "
          f"(vs PyTorch's golden {e:.1e})", flush=True)
    return inp, a


def check_lukemelas(tmp):
    lite0 = os.path.join(SOURCE, "data", "efficientnet_lite0.safetensors")
    if not os.path.exists(lite0):
        skipped("lukemelas names against the real Lite0 file", "data/efficientnet_lite0.safetensors not fetched "
                "(weights/fetch.sh)")
        return
    canonical = os.path.join(tmp, "lite0.canonical.safetensors")
    r = run([RUN, "--weights", lite0, "--save-weights", canonical])
    check(r.returncode == 0, f"effnet-run --save-weights {lite0}: {r.stderr}")
    out = os.path.join(tmp, "lite0.export.safetensors")
    r = export(canonical, out, "--names", "lukemelas")
    check(r.returncode == 0, f"export --names lukemelas: {r.stderr}")
    a, _ = read_safetensors(lite0)
    b, _ = read_safetensors(out)
    check(set(a) == set(b) and all(a[k] == b[k] for k in a),
          f"lukemelas: {len(set(a) ^ set(b))} names differ, or tensors differ, from the fetched Lite0 file")
    print(f"lite0: {len(a)} tensors with lukemelas names, bit-exact with the fetched file", flush=True)


# ----------------------------------------------------------------------------------------------
# With torch (this script run by an interpreter that has it, with --torch-part)


def torch_part(tmp):
    """Runs under a Python with torch; prints lines and one final JSON line of results."""
    import torch
    results = []

    def record(ok, what):
        results.append((bool(ok), what))
        print(("ok: " if ok else "FAIL: ") + what, flush=True)

    def tiny_model(name):
        if name == "tv_tiny":
            from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf
            setting, last = _efficientnet_conf("efficientnet_b0", width_mult=0.25, depth_mult=0.34)
            return EfficientNet(setting, dropout=0.0, stochastic_depth_prob=0.0, num_classes=10, last_channel=last)
        from timm.models.efficientnet import _gen_efficientnet, _gen_efficientnet_lite
        common = dict(channel_multiplier=0.25, depth_multiplier=0.34, pretrained=False, num_classes=10,
                      drop_rate=0.0, drop_path_rate=0.0)
        if name == "timm_tiny":
            return _gen_efficientnet("efficientnet_b0", **common)
        if name == "timm_tf_tiny":
            return _gen_efficientnet("tf_efficientnet_b0", bn_eps=1e-3, pad_type="same", **common)
        return _gen_efficientnet_lite("tf_efficientnet_lite0", bn_eps=1e-3, pad_type="same", **common)

    def load_st(path):
        from safetensors.torch import load_file
        return load_file(path)

    def same_state(a, b):
        return list(a) == list(b) and all(
            a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].stride() == b[k].stride()
            and torch.equal(a[k], b[k]) for k in a)

    def full_size(label, names, build):
        torch.manual_seed(0)
        model = build().eval()
        g = torch.Generator().manual_seed(1)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                with torch.no_grad():
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                    m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
        original = model.state_dict()
        pth = os.path.join(tmp, label + ".pth")
        torch.save(original, pth)
        converted = os.path.join(tmp, label + ".safetensors")
        canonical = os.path.join(tmp, label + ".canonical.safetensors")
        out = os.path.join(tmp, label + ".export.pth")
        for cmd in ([sys.executable, CONVERT, pth, converted, "--preset", "b0"],
                    [RUN, "--weights", converted, "--save-weights", canonical],
                    [sys.executable, EXPORT, canonical, out, "--names", names]):
            r = run(cmd)
            if r.returncode != 0:
                record(False, f"{label}: {os.path.basename(str(cmd[1]))} failed: {r.stderr.strip()}")
                return
        sd = torch.load(out, weights_only=True)
        record(same_state(sd, original), f"{label} (full size): torch.save -> convert -> effnet -> export gives "
                                         f"the original state dict bit for bit ({len(sd)} tensors)")
        reloaded = build().eval()
        reloaded.load_state_dict(sd, strict=True)
        x = torch.randn(2, 3, 224, 224, generator=g)
        inp = os.path.join(tmp, label + ".input.safetensors")
        from safetensors.torch import save_file
        save_file({"input": x}, inp)
        logits_file = os.path.join(tmp, label + ".logits.safetensors")
        r = run([RUN, "--weights", canonical, "--input", inp, "--output", logits_file])
        with torch.no_grad():
            a, b = model(x), reloaded(x)
        record(torch.equal(a, b), f"{label}: the reloaded model gives the original's logits bit for bit")
        if r.returncode == 0:
            e = rel(b.numpy(), load_st(logits_file)["logits"].numpy())
            record(e <= LOGIT_TOLERANCE, f"{label}: torch logits vs effnet-run's {e:.2e} (bound {LOGIT_TOLERANCE:g})")
        else:
            record(False, f"{label}: effnet-run forward failed: {r.stderr.strip()}")

    try:
        import timm  # noqa: F401
        have_timm = True
    except ImportError:
        have_timm = False
        print("skipped: timm models (timm not importable)", flush=True)
    torch.set_num_threads(1)
    for name in FIXTURES:
        if name.startswith("timm") and not have_timm:
            continue
        pth = os.path.join(tmp, name + ".export.pth")
        sd = torch.load(pth, weights_only=True)
        original = torch.load(os.path.join(GOLDEN, name + ".pth"), weights_only=True)
        record(type(sd) is collections.OrderedDict and same_state(sd, original),
               f"{name}: torch.load(weights_only=True) of the .pth equals the original state dict "
               f"(names, order, dtypes, shapes, strides, values)")
        mm = torch.load(pth, weights_only=True, mmap=True)
        record(same_state(mm, original), f"{name}: torch.load(mmap=True) reads it too")
        from torch.utils.serialization import config
        config.load.calculate_storage_offsets = True
        try:
            off = torch.load(pth, weights_only=True, mmap=True)
            record(same_state(off, original), f"{name}: ... and with calculate_storage_offsets (torch's zip layout)")
        finally:
            config.load.calculate_storage_offsets = False
        st = load_st(os.path.join(tmp, name + ".export.safetensors"))
        golden = load_st(os.path.join(GOLDEN, name + "_golden.safetensors"))
        x = golden["input"].float()
        effnet = load_st(os.path.join(tmp, name + ".logits-canonical.safetensors"))["logits"] \
            if os.path.exists(os.path.join(tmp, name + ".logits-canonical.safetensors")) else None
        for label, state in (("pth", sd), ("safetensors", st)):
            model = tiny_model(name).eval()
            missing = model.load_state_dict(state, strict=True)
            record(not missing.missing_keys and not missing.unexpected_keys,
                   f"{name}: load_state_dict(strict=True) accepts the {label} output")
            with torch.no_grad():
                logits = model(x)
            e_gold = rel(logits.double().numpy(), golden["eval.logits"].numpy())
            msg = f"{name} ({label}): torch logits vs PyTorch's golden (fp64) {e_gold:.2e}"
            ok = e_gold <= LOGIT_TOLERANCE
            if effnet is not None:
                e = rel(logits.numpy(), effnet.numpy())
                msg += f", vs effnet-run {e:.2e}"
                ok = ok and e <= LOGIT_TOLERANCE
            record(ok, msg + f" (bound {LOGIT_TOLERANCE:g})")

    # Full size, random init (no download), BN statistics drawn at random: torchvision's
    # efficientnet_b0 and timm's (DepthwiseSeparable first block, timm's layout).
    import torchvision
    builders = [("tv_b0", "torchvision", lambda: torchvision.models.efficientnet_b0(weights=None))]
    if have_timm:
        import timm
        builders.append(("timm_b0", "timm", lambda: timm.create_model("efficientnet_b0", pretrained=False)))
    for label, names, build in builders:
        full_size(label, names, build)
    print("RESULTS " + json.dumps(results), flush=True)


def check_with_torch(tmp):
    python = os.environ.get("EFFNET_TORCH_PYTHON") or sys.executable
    probe = run([python, "-c", "import torch, torchvision, safetensors, numpy"])
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        skipped("torch checks: torch.load, load_state_dict(strict=True), logits, full-size B0",
                f"{python} cannot import torch, torchvision, safetensors, numpy: {last}; set EFFNET_TORCH_PYTHON")
        return
    r = run([python, os.path.abspath(__file__), "--torch-part", tmp], env=dict(os.environ, OMP_NUM_THREADS="1"))
    lines = [l for l in r.stdout.splitlines() if l.startswith("RESULTS ")]
    print("".join(l + "\n" for l in r.stdout.splitlines() if not l.startswith("RESULTS ")), end="", flush=True)
    if not check(r.returncode == 0 and lines, f"torch part failed ({r.returncode}): {r.stderr[-2000:]}"):
        return
    for ok, what in json.loads(lines[-1][len("RESULTS "):]):
        check(ok, what)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--torch-part":
        torch_part(sys.argv[2])
        return 0
    if not os.path.exists(RUN):
        print(f"FAIL: {RUN} is not built (the round trip needs effnet-run --save-weights)")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        steps = []
        canonical = {}
        for name, (names, options) in FIXTURES.items():
            steps.append((f"round trip {name}", lambda n=name, f=names, o=options:
                          canonical.__setitem__(n, check_round_trip(tmp, n, f, o))))
        steps += [
            ("pth layout", lambda: check_pth_layout(canonical["tv_tiny"][1], 228)),
            ("deterministic", lambda: check_deterministic(tmp, canonical["timm_tiny"][0])),
        ] + [
            (f"effnet reads the {name} export",
             lambda n=name: check_effnet_reads_export(tmp, n, canonical[n][0], canonical[n][2]))
            for name in FIXTURES
        ] + [
            ("counters", lambda: check_counters(tmp, canonical["tv_tiny"][0])),
            ("lukemelas", lambda: check_lukemelas(tmp)),
            ("mutations", lambda: check_mutations(tmp, canonical["timm_tiny"][0])),
            ("errors", lambda: check_errors(tmp, canonical["tv_tiny"][0],
                                            os.path.join(tmp, "tv_tiny.converted.safetensors"))),
            ("torch", lambda: check_with_torch(tmp)),
        ]
        for label, step in steps:
            try:
                step()
            except Exception:
                check(False, f"{label}: {traceback.format_exc()}")
    print(f"{passed} passed, {failed} failed" + (f", {len(skips)} skipped" if skips else ""))
    return 1 if failed else 0


def check_mutations(tmp, canonical, count=300):
    """export.py in this process on `count` damaged copies of a canonical file (header bytes
    changed, the file cut short): every one is written or refused with an error, never an
    exception (run without a checksum, so that the damage reaches the parser and the checks)."""
    import contextlib
    import io
    import random
    import export as export_module
    tensors, meta = load_tensors(canonical)
    clean = os.path.join(tmp, "mutate-base.safetensors")
    write_safetensors(clean, tensors, {k: v for k, v in meta.items() if k != "effnet.checksum"})
    blob = open(clean, "rb").read()
    (length,) = struct.unpack_from("<Q", blob, 0)
    rng = random.Random(16)
    src, out = os.path.join(tmp, "mutated.safetensors"), os.path.join(tmp, "mutated.pth")
    outcomes = collections.Counter()
    for i in range(count):
        data = bytearray(blob)
        if i % 5 == 4:
            data = data[:rng.randrange(0, len(data))]
        else:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(0, 8 + length)] = rng.choice(b'0123456789[]{},:".-ex \x00\xff')
        with open(src, "wb") as f:
            f.write(data)
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                status = export_module.main([src, out, "--names", "torchvision", "--force"])
        except BaseException as e:  # noqa: BLE001 - any exception is the failure this looks for
            check(False, f"mutation {i}: export raised {type(e).__name__}: {e}")
            continue
        lines = [l for l in err.getvalue().splitlines() if l.startswith("error: ")]
        check(status == 0 or (status == 1 and len(lines) == 1), f"mutation {i}: status {status}, {err.getvalue()!r}")
        outcomes["written" if status == 0 else "refused"] += 1
        if os.path.exists(out):
            os.unlink(out)
    print(f"{count} damaged inputs: {outcomes['written']} written, {outcomes['refused']} refused with one error "
          f"line, no exception", flush=True)


def check_deterministic(tmp, canonical):
    a, b = os.path.join(tmp, "det-a.pth"), os.path.join(tmp, "det-b.pth")
    for out in (a, b):
        r = export(canonical, out, "--names", "timm")
        check(r.returncode == 0, f"export {out}: {r.stderr}")
    check(open(a, "rb").read() == open(b, "rb").read(), "two exports of the same file differ")


if __name__ == "__main__":
    sys.exit(main())
