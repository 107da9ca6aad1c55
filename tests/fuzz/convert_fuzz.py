#!/usr/bin/env python3
"""Mutation fuzzer for weights/convert.py's readers (zip and legacy torch.save, the restricted
unpickler, the tensor checks and the writer).

    nice python3 tests/fuzz/convert_fuzz.py [--seed N] [--duration S] [--workers N]
        [--crash-dir DIR] [--corpus-dir DIR] [--converter PATH] [--mem-mb MB] [--timeout S]

Seeds are small valid checkpoints built here without torch (tests/python/convert_fixtures.py):
zip and legacy, several dtypes, views with offsets and strides, shared storages, OrderedDict
nesting with torch's `_metadata` attribute, parameters, big-endian, deflated members. Each input
is a seed or a corpus entry with 1..4 stacked mutations: byte flips, inserted / deleted /
duplicated bytes, splices; pickle opcode and argument mutations (interesting integers such as
2^31, 2^47, 2^63-1 in tensor records, swapped / deleted / duplicated / inserted opcodes, deep
nesting, other globals); zip header fields (sizes, compression method, CRC, offsets, entry
counts) and zip bombs (members inflating to up to 2 GiB); legacy storage record lengths.

Each input is converted by the converter's main() in a forked child (the converter and numpy are
imported once) under RLIMIT_AS (default 1 GiB) and a wall-clock limit (default 10 s). The
property: the conversion exits 0 with a well-formed safetensors file (data offsets tile the data
section, the effnet.checksum matches), or exits 1 with exactly one `error: ...` line on stderr
(besides `note:` / `warning:` lines), no traceback, no MemoryError or out-of-memory message, no
output file and no temporary file left. Anything else is a failure: the input is saved to the
crash directory with a .txt beside it (stderr, and the result of rerunning it as
`python3 convert.py IN OUT` in a subprocess under the same limits).

An input whose outcome (ok, or its error message with numbers and names blanked) was not seen
before joins the corpus: that is the only feedback (no coverage).

Exit status: 0 when no input failed, 1 otherwise. Prints executions, outcomes and failures.
"""
import argparse
import collections
import hashlib
import importlib.util
import io
import json
import os
import pickletools
import random
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # fewer threads, less address space per child
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "python"))
import convert_fixtures as fx  # noqa: E402

DEFAULT_CONVERTER = os.path.join(SOURCE_DIR, "weights", "convert.py")

# ----------------------------------------------------------------------------------------------
# Seeds


def _legacy_bytes(obj, little_endian=True):
    """A legacy torch.save stream (like fx.write_legacy_checkpoint, optionally big-endian)."""
    storages = fx._storages_in(obj)
    out = io.BytesIO()
    out.write(fx.dumps(fx.LEGACY_MAGIC))
    out.write(fx.dumps(1001))
    out.write(fx.dumps({"protocol_version": 1001, "little_endian": little_endian,
                        "type_sizes": {"short": 2, "int": 4, "long": 4}}))
    out.write(fx.dumps(obj, lambda o: o.record(True) if isinstance(o, fx.FakeStorage) else None))
    keys = list(storages)
    out.write(fx.dumps(keys))
    order = "<" if little_endian else ">"
    for key in keys:
        values = storages[key].values
        out.write(struct.pack(order + "q", values.size))
        out.write(values.astype(values.dtype.newbyteorder(order)).tobytes())
    return out.getvalue()


def _zip_bytes(obj, deflate=False, folder="archive"):
    storages = fx._storages_in(obj)
    pickled = fx.dumps(obj, lambda o: o.record(False) if isinstance(o, fx.FakeStorage) else None)
    members = [(f"{folder}/data.pkl", pickled), (f"{folder}/byteorder", b"little")]
    for key, storage in storages.items():
        members.append((f"{folder}/data/{key}", storage.values.astype(storage.values.dtype.newbyteorder("<")).tobytes()))
    members.append((f"{folder}/version", b"3\n"))
    return build_zip([zip_entry(n, d, 8 if deflate else 0) for n, d in members])


def _state(rng, prefix="features"):
    f32 = rng.standard_normal((4, 3)).astype(np.float32)
    base = np.arange(12, dtype=np.float32) * 0.5
    shared = fx.FakeStorage("s", np.arange(10, dtype=np.float64))
    state = collections.OrderedDict()
    state[f"{prefix}.0.0.weight"] = fx.contiguous("0", f32)
    state[f"{prefix}.0.1.weight"] = fx.contiguous("1", rng.standard_normal(5).astype(np.float16))
    state[f"{prefix}.0.1.num_batches_tracked"] = fx.FakeTensor(fx.FakeStorage("2", np.array([7], np.int64)), 0, (), ())
    state["strided"] = fx.FakeTensor(fx.FakeStorage("3", base), 2, (3, 2), (1, 3))
    state["shared_a"] = fx.FakeTensor(shared, 1, (2, 2), (2, 1))
    state["shared_b"] = fx.FakeTensor(shared, 7, (3,), (1,))
    state["empty"] = fx.FakeTensor(fx.FakeStorage("5", np.zeros(0, np.float32)), 0, (0, 4), (4, 1))
    return state


def make_seeds(rng):
    """name -> bytes of small valid checkpoints."""
    seeds = {}
    plain = _state(rng)
    seeds["zip_plain"] = _zip_bytes(plain)
    seeds["legacy_plain"] = _legacy_bytes(plain)

    dtypes = collections.OrderedDict()
    dtypes["conv_stem.weight"] = fx.contiguous("0", rng.standard_normal((2, 3, 1, 1)).astype(np.float32))
    dtypes["blocks.0.bf16"] = fx.contiguous("1", np.array([0x3F80, 0xC000, 0x7F80], np.uint16), bf16=True)
    dtypes["blocks.0.i32"] = fx.contiguous("2", np.array([[1, -2], [3, 2**31 - 1]], np.int32))
    dtypes["blocks.0.flags"] = fx.contiguous("3", np.array([True, False, True]))
    dtypes["blocks.0.u8"] = fx.contiguous("4", np.arange(6, dtype=np.uint8).reshape(2, 3))
    dtypes["blocks.0.f64"] = fx.contiguous("5", np.linspace(0, 1, 4))
    seeds["zip_dtypes"] = _zip_bytes(dtypes)
    seeds["zip_dtypes_deflated"] = _zip_bytes(dtypes, deflate=True)

    # A training checkpoint: OrderedDicts nested in a dict, torch's _metadata attribute (a BUILD
    # opcode), a parameter, 'module.' prefixes, non-tensor entries.
    inner = collections.OrderedDict()
    inner["module._conv_stem.weight"] = fx.contiguous("0", np.ones((4, 3, 3, 3), np.float32))
    w = fx.contiguous("1", np.full((4, 1, 3, 3), 0.5, np.float32))
    w.parameter = True
    inner["module._blocks.0._depthwise_conv.weight"] = w
    inner._metadata = collections.OrderedDict([("", {"version": 1}), ("_conv_stem", {"version": 1})])
    checkpoint = {"epoch": 3, "arch": "efficientnet-b0", "state_dict": inner,
                  "optimizer": {"lr": 0.1, "betas": (0.9, 0.999), "state": {0: {"step": 5}}}}
    seeds["zip_checkpoint"] = _zip_bytes(checkpoint, folder="ckpt")
    seeds["legacy_checkpoint"] = _legacy_bytes(checkpoint)

    legacy_view = _state(rng, "_blocks")
    root = np.arange(8, dtype=np.float32) + 100
    legacy_view["legacy_view"] = fx.FakeTensor(fx.FakeStorage("6", root, view=("6v", 2, 4)), 1, (2,), (2,))
    legacy_view["_conv_stem.weight"] = fx.contiguous("7", np.ones((2, 3, 3, 3), np.float32))
    seeds["legacy_view"] = _legacy_bytes(legacy_view)
    seeds["legacy_big_endian"] = _legacy_bytes(_state(rng), little_endian=False)
    return seeds


# ----------------------------------------------------------------------------------------------
# A zip writer that can lie (sizes, CRC, method) and store pre-compressed data


def zip_entry(name, data, method=0):
    payload = data
    if method == 8:
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        payload = c.compress(data) + c.flush()
    return {"name": name.encode("utf-8"), "method": method, "payload": payload,
            "crc": zlib.crc32(data), "size": len(data)}


def build_zip(entries):
    out = io.BytesIO()
    central = io.BytesIO()
    for e in entries:
        offset = out.tell()
        fields = (20, 0, e["method"], 0, 0x21, e["crc"] & 0xFFFFFFFF, len(e["payload"]) & 0xFFFFFFFF,
                  e["size"] & 0xFFFFFFFF, len(e["name"]), 0)
        out.write(b"PK\x03\x04" + struct.pack("<HHHHHLLLHH", *fields) + e["name"] + e["payload"])
        central.write(b"PK\x01\x02" + struct.pack("<HHHHHHLLLHHHHHLL", 20, 20, 0, e["method"], 0, 0x21,
                      e["crc"] & 0xFFFFFFFF, len(e["payload"]) & 0xFFFFFFFF, e["size"] & 0xFFFFFFFF,
                      len(e["name"]), 0, 0, 0, 0, 0, offset & 0xFFFFFFFF) + e["name"])
    cd = central.getvalue()
    cd_offset = out.tell()
    out.write(cd)
    out.write(b"PK\x05\x06" + struct.pack("<HHHHLLH", 0, 0, len(entries), len(entries), len(cd), cd_offset, 0))
    return out.getvalue()


def read_zip_entries(data):
    """The members of a zip we can parse (via the central directory), or None."""
    import zipfile
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            if len(z.infolist()) > 64:
                return None
            return [(i.filename, z.read(i)) for i in z.infolist() if i.file_size < (1 << 22)]
    except Exception:
        return None


_ZERO_CRC = {}


def zeros_deflated(size):
    """A raw deflate stream of `size` zero bytes (size a multiple of 1 MiB) and its CRC, built by
    repeating one fully flushed 1 MiB block: a few KB per GiB, made in milliseconds."""
    mib = 1 << 20
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(mib)) + c.flush(zlib.Z_FULL_FLUSH)
    stream = block * (size // mib) + b"\x03\x00"  # an empty final fixed-Huffman block
    if size not in _ZERO_CRC:
        crc, chunk = 0, bytes(mib)
        for _ in range(size // mib):
            crc = zlib.crc32(chunk, crc)
        _ZERO_CRC[size] = crc
    return stream, _ZERO_CRC[size]


# ----------------------------------------------------------------------------------------------
# Mutations

INTERESTING = [0, 1, 2, 3, 7, 8, 255, 256, 0x7FFF, 0xFFFF, 0x10000, 2**28, 2**31 - 1, 2**31, 2**32 - 1,
               2**32, 2**47, 2**48 - 1, 2**48, 2**62, 2**63 - 1, 2**63, 2**64, -1, -2**31, -2**63]


def encode_int(value):
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if 0 <= value < 65536:
        return b"M" + struct.pack("<H", value)
    if -2**31 <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    n = (value.bit_length() + 8) // 8
    return b"\x8a" + bytes([n]) + value.to_bytes(n, "little", signed=True)


def pick_int(rng, old=None):
    r = rng.random()
    if old is not None and r < 0.2:
        return old + rng.choice([-1, 1, -2, 2, 8, -8])
    if old is not None and r < 0.3:
        return old * rng.choice([2, 256, 65536, 2**20])
    if r < 0.85:
        return rng.choice(INTERESTING)
    return rng.randrange(-2**64, 2**64) >> rng.randrange(0, 64)


def _str_op(text):
    raw = text.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(raw)) + raw


GLOBALS = [("torch", "FloatStorage"), ("torch", "HalfStorage"), ("torch", "BoolStorage"),
           ("torch", "LongStorage"), ("torch", "BFloat16Storage"), ("torch", "Size"), ("torch", "device"),
           ("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
           ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_parameter"),
           ("torch._utils", "_rebuild_parameter_with_state"), ("builtins", "getattr"), ("os", "system"),
           ("torch", "Tensor"), ("collections", "Counter")]


def insert_snippet(rng):
    """A small opcode sequence to insert into a pickle."""
    choice = rng.randrange(14)
    if choice == 0:  # deep nesting: tuples, lists or dicts
        depth = rng.choice([100, 1000, 10**4, 10**5, 3 * 10**5])
        return rng.choice([b")" + b"\x85" * depth, b"]" * depth + b"a" * (depth - 1), b"(" * depth])
    if choice == 1:
        return encode_int(pick_int(rng))
    if choice == 2:
        return _str_op(rng.choice(["module.", "__metadata__", "features.8.0.weight", "x" * 200,
                                   "a\nb", "\udcff", "storage", "cpu", "0", "state_dict"]))
    if choice == 3:
        module, name = rng.choice(GLOBALS)
        return b"c" + module.encode() + b"\n" + name.encode() + b"\n"
    if choice == 4:  # memo with a huge index
        return rng.choice([b"r", b"j"]) + struct.pack("<I", rng.choice([2**31 - 1, 2**32 - 1, 10**6, 255]))
    if choice == 5:  # counted strings / bytes with lengths past the data
        return rng.choice([b"X", b"B", b"T"]) + struct.pack("<I", rng.choice([2**31, 2**32 - 1, 10**6])) + b"abc"
    if choice == 6:
        return rng.choice([b"\x8d", b"\x8e", b"\x96"]) + struct.pack("<Q", rng.choice([2**40, 2**62, 10**9])) + b"ab"
    if choice == 7:  # FRAME with a huge size
        return b"\x95" + struct.pack("<Q", rng.choice([2**63, 2**32, 10**6]))
    if choice == 8:  # big LONG4
        n = rng.choice([100, 10**4, 10**6])
        return b"\x8b" + struct.pack("<i", n) + bytes([rng.randrange(256)]) * n
    if choice == 9:  # a tuple of many ints (sizes / strides / args)
        n = rng.choice([0, 1, 2, 9, 40, 70, 1000])
        return b"(" + b"".join(encode_int(pick_int(rng)) for _ in range(n)) + b"t"
    if choice == 10:  # a list copied many times through memo + OrderedDict / Size calls
        return (b"c" + rng.choice([b"collections\nOrderedDict\n", b"torch\nSize\n", b"torch\ndevice\n"])
                + b"(" + b"]" + b"(" + b"K\x01" * 2000 + b"e" + b"\x85R")
    if choice == 11:
        return bytes([rng.randrange(256)])
    if choice == 12:
        return rng.choice([b"N", b"}", b")", b"]", b"(", b"t", b"\x85", b"\x86", b"\x87", b"R", b"b", b"s",
                           b"u", b"a", b"e", b"0", b"1", b"2", b"Q", b"P0\n", b"h\x00", b"h\x05", b"\x8f",
                           b"\x90", b"\x91", b"\x94", b"\x93", b".", b"\x88", b"\x89", b"G" + bytes(8)])
    return b"(" + b"\x8c\x07storage" + b"c" + b"torch\nFloatStorage\n" + _str_op("0") + _str_op("cpu") \
        + encode_int(pick_int(rng)) + b"tQ"


def pickle_ops(data):
    """[(position, length, opcode name, arg)] of the pickle at data[0:], up to STOP."""
    ops = []
    try:
        for op, arg, pos in pickletools.genops(data):
            ops.append([pos, op, arg])
            if op.name == "STOP":
                break
    except Exception:
        pass
    if not ops:
        return []
    result = []
    for i, (pos, op, arg) in enumerate(ops):
        end = ops[i + 1][0] if i + 1 < len(ops) else pos + 1
        result.append((pos, end - pos, op.name, arg))
    return result


def mutate_pickle(data, rng):
    """One opcode-aware mutation of the pickle starting at data[0]; the rest follows unchanged."""
    ops = pickle_ops(data)
    if not ops:
        return mutate_bytes(data, rng)
    pos, length, name, arg = rng.choice(ops)
    kind = rng.randrange(8)
    ints = [o for o in ops if o[2] in ("BININT", "BININT1", "BININT2", "LONG1", "INT", "LONG")]
    if kind <= 1 and ints:  # an integer argument: tensor sizes, strides, offsets, storage sizes
        pos, length, name, arg = rng.choice(ints)
        return data[:pos] + encode_int(pick_int(rng, arg if isinstance(arg, int) else None)) + data[pos + length:]
    if kind == 2:  # another opcode byte, same argument bytes
        return data[:pos] + bytes([rng.randrange(256)]) + data[pos + 1:]
    if kind == 3:  # delete an opcode
        return data[:pos] + data[pos + length:]
    if kind == 4:  # duplicate one, or a run of several
        run = rng.choice([1, 1, 2, 3, 8])
        end = min(len(ops), ops.index((pos, length, name, arg)) + run)
        stop = ops[end - 1][0] + ops[end - 1][1]
        return data[:stop] + data[pos:stop] * rng.choice([1, 1, 2, 100]) + data[stop:]
    if kind == 5:  # swap two opcodes
        other = rng.choice(ops)
        a, b = sorted([(pos, length), other[:2]])
        if a[0] + a[1] <= b[0]:
            return data[:a[0]] + data[b[0]:b[0] + b[1]] + data[a[0] + a[1]:b[0]] + data[a[0]:a[0] + a[1]] + data[b[0] + b[1]:]
        return data
    if kind == 6:  # a string argument
        strs = [o for o in ops if isinstance(o[3], str)]
        if strs:
            pos, length, name, arg = rng.choice(strs)
            if name == "GLOBAL":
                module, gname = rng.choice(GLOBALS)
                return data[:pos] + b"c" + f"{module}\n{gname}\n".encode() + data[pos + length:]
            text = rng.choice(["", "0", "storage", "module." + arg, arg * rng.choice([2, 1000]), "__metadata__",
                               "features.8.0.weight", arg[:-1], "\n", "cuda"])
            return data[:pos] + _str_op(text) + data[pos + length:]
    return data[:pos] + insert_snippet(rng) + data[pos:]


def mutate_bytes(data, rng):
    if not data:
        return bytes([rng.randrange(256)])
    kind = rng.randrange(7)
    i = rng.randrange(len(data))
    if kind == 0:
        return data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1:]
    if kind == 1:
        return data[:i] + bytes([rng.randrange(256)]) + data[i + 1:]
    if kind == 2:
        return data[:i] + rng.randbytes(rng.choice([1, 2, 4, 8, 32])) + data[i:]
    if kind == 3:
        return data[:i] + data[i + rng.choice([1, 2, 4, 8, 64]):]
    if kind == 4:
        j = min(len(data), i + rng.choice([1, 4, 16, 256]))
        return data[:j] + data[i:j] + data[j:]
    if kind == 5:
        return data[:i]
    width = rng.choice([1, 2, 4, 8])
    return data[:i] + (pick_int(rng) % (1 << (8 * width))).to_bytes(width, "little") + data[i + width:]


ZIP_LOCAL_FIELDS = [(8, "H"), (14, "L"), (18, "L"), (22, "L"), (26, "H"), (28, "H"), (6, "H")]
ZIP_CENTRAL_FIELDS = [(10, "H"), (16, "L"), (20, "L"), (24, "L"), (28, "H"), (30, "H"), (42, "L"), (8, "H")]
ZIP_END_FIELDS = [(8, "H"), (10, "H"), (12, "L"), (16, "L"), (20, "H")]
METHODS = [0, 8, 1, 9, 12, 14, 93, 99, 0xFFFF]


def mutate_zip_header(data, rng):
    """A field of a local header, central directory entry or end record: sizes, method, CRC,
    name lengths, offsets, entry counts."""
    sigs = [(b"PK\x03\x04", ZIP_LOCAL_FIELDS), (b"PK\x01\x02", ZIP_CENTRAL_FIELDS), (b"PK\x05\x06", ZIP_END_FIELDS)]
    sig, fields = rng.choice(sigs)
    spots = [m.start() for m in re.finditer(re.escape(sig), data)]
    if not spots:
        return mutate_bytes(data, rng)
    at = rng.choice(spots)
    offset, fmt = rng.choice(fields)
    width = struct.calcsize("<" + fmt)
    if at + offset + width > len(data):
        return data
    (old,) = struct.unpack_from("<" + fmt, data, at + offset)
    if offset in (8, 10) and sig != b"PK\x05\x06" and rng.random() < 0.7:
        value = rng.choice(METHODS)
    else:
        value = pick_int(rng, old)
    value %= 1 << (8 * width)
    return data[:at + offset] + struct.pack("<" + fmt, value) + data[at + offset + width:]


def mutate_zip_member(data, rng):
    """Rebuild the archive (valid CRCs) with one member's content mutated, deflated, replaced by
    a zip bomb, duplicated or dropped."""
    members = read_zip_entries(data)
    if not members:
        return mutate_bytes(data, rng)
    entries = [zip_entry(n, d, 0) for n, d in members]
    i = rng.randrange(len(entries))
    name, content = members[i]
    kind = rng.randrange(7)
    pkl = [j for j, (n, _) in enumerate(members) if n.endswith("data.pkl")]
    if kind <= 2 and pkl:  # the pickle: most of the logic is there
        j = rng.choice(pkl)
        entries[j] = zip_entry(members[j][0], mutate_pickle(members[j][1], rng), rng.choice([0, 0, 8]))
    elif kind == 3:
        entries[i] = zip_entry(name, mutate_bytes(content, rng), rng.choice([0, 8]))
    elif kind == 4:  # a zip bomb: zeros inflating to up to 2 GiB, sizes true or not
        size = rng.choice([1 << 26, 1 << 29, 1 << 31])
        stream, crc = zeros_deflated(size)
        declared = rng.choice([size, size, len(content), 2**32 - 1])
        entries[i] = {"name": name.encode(), "method": 8, "payload": stream, "crc": crc, "size": declared}
    elif kind == 5:
        entries.insert(rng.randrange(len(entries) + 1), dict(entries[i]))
    else:
        del entries[i]
    return build_zip(entries)


def legacy_layout(data):
    """(pickle boundaries, storage record offsets) of a legacy stream, as far as it parses."""
    bounds, pos = [], 0
    for _ in range(5):
        ops = pickle_ops(data[pos:])
        if not ops or ops[-1][2] != "STOP":
            break
        end = pos + ops[-1][0] + 1
        bounds.append((pos, end))
        pos = end
    return bounds, pos


def mutate_legacy(data, rng):
    bounds, pos = legacy_layout(data)
    if len(bounds) == 5 and rng.random() < 0.3 and pos + 8 <= len(data):
        # A storage record's element count: walk the records as the converter does.
        records = []
        keys_start, keys_end = bounds[4]
        while pos + 8 <= len(data) and len(records) < 64:
            records.append(pos)
            (count,) = struct.unpack_from("<q", data, pos)
            step = 8 + max(0, count) * 8
            if count < 0 or pos + step > len(data):
                break
            pos += 8 + count * (4 if rng.random() < 0.5 else 8)  # itemsize unknown here: guess
        at = rng.choice(records)
        (old,) = struct.unpack_from("<q", data, at)
        value = pick_int(rng, old) % (1 << 64)
        return data[:at] + struct.pack("<Q", value) + data[at + 8:]
    if bounds and rng.random() < 0.8:
        start, end = rng.choice(bounds[2:] if len(bounds) > 2 and rng.random() < 0.8 else bounds)
        return data[:start] + mutate_pickle(data[start:end], rng) + data[end:]
    return mutate_bytes(data, rng)


def mutate(data, corpus, rng):
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3, 4])):
        r = rng.random()
        if data.startswith(b"PK"):
            if r < 0.45:
                data = mutate_zip_member(data, rng)
            elif r < 0.7:
                data = mutate_zip_header(data, rng)
            elif r < 0.95:
                data = mutate_bytes(data, rng)
            else:
                other = rng.choice(corpus)
                data = data[:rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1):]
        else:
            if r < 0.7:
                data = mutate_legacy(data, rng)
            elif r < 0.95:
                data = mutate_bytes(data, rng)
            else:
                other = rng.choice(corpus)
                data = data[:rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1):]
    return data


# ----------------------------------------------------------------------------------------------
# Running one input and judging it


def load_converter(path):
    spec = importlib.util.spec_from_file_location("convert_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def limit_memory(mem_bytes):
    resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_forked(converter, workdir, data, mem_bytes, timeout):
    """Converts `data` in a forked child. Returns (status, stderr text, elapsed) where status is
    ('exit', code), ('signal', n) or ('timeout', None)."""
    src = os.path.join(workdir, "in.pth")
    out = os.path.join(workdir, "out.safetensors")
    err = os.path.join(workdir, "stderr.txt")
    for name in os.listdir(workdir):
        os.unlink(os.path.join(workdir, name))
    with open(src, "wb") as f:
        f.write(data)
    sys.stdout.flush()
    sys.stderr.flush()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 1
        try:
            fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 2)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            limit_memory(mem_bytes)
            try:
                code = converter.main([src, out])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:  # what `python3 convert.py` would print
                traceback.print_exc()
                code = 1
            sys.stderr.flush()
            sys.stdout.flush()
        finally:
            os._exit(code if isinstance(code, int) else 1)
    delay = 0.0005
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - start > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = None
            break
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
    elapsed = time.monotonic() - start
    with open(err, "rb") as f:
        text = f.read(1 << 20).decode("utf-8", "replace")
    if status is None:
        return ("timeout", None), text, elapsed
    if os.WIFSIGNALED(status):
        return ("signal", os.WTERMSIG(status)), text, elapsed
    return ("exit", os.WEXITSTATUS(status)), text, elapsed


def run_subprocess(converter_path, workdir, data, mem_bytes, timeout):
    """The same input through `python3 convert.py IN OUT` (used to confirm a failure)."""
    src = os.path.join(workdir, "confirm.pth")
    out = os.path.join(workdir, "confirm.safetensors")
    with open(src, "wb") as f:
        f.write(data)
    try:
        r = subprocess.run([sys.executable, converter_path, src, out], capture_output=True,
                           timeout=timeout * 3, preexec_fn=lambda: limit_memory(mem_bytes))
        result = f"exit {r.returncode}" if r.returncode >= 0 else f"signal {-r.returncode}"
        text = r.stderr.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        result, text = "timeout", ""
    left = os.path.exists(out)
    for name in (src, out):
        if os.path.exists(name):
            os.unlink(name)
    return f"{result}{', output left' if left else ''}\n{text[-4000:]}"


def check_safetensors(path):
    """None if `path` is a well-formed safetensors file with a matching checksum, else why not."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        return "output shorter than 8 bytes"
    (n,) = struct.unpack_from("<Q", blob, 0)
    try:
        header = json.loads(blob[8:8 + n])
    except Exception as e:
        return f"output header is not JSON ({e})"
    data = blob[8 + n:]
    meta = header.pop("__metadata__", {})
    spans = sorted(tuple(v["data_offsets"]) for v in header.values())
    position = 0
    for begin, end in spans:
        if begin != position:
            return f"output data offsets leave a hole or overlap at {begin}"
        position = end
    if position != len(data):
        return f"output data section {len(data)} bytes, offsets cover {position}"
    checksum = meta.get("effnet.checksum")
    try:
        import xxhash
    except ImportError:
        return None
    if checksum != "xxh3_64:" + xxhash.xxh3_64_hexdigest(data):
        return f"output checksum {checksum!r} does not match its data"
    return None


def normalize(line, src):
    """An error line with the file, member, quoted values, numbers and global names blanked:
    one outcome class per kind of error."""
    line = line.replace(src, "IN")
    line = re.sub(r"^error: IN: (\S*data\.pkl: )?", "error: ", line)
    line = re.sub(r"'[^']*'|\"[^\"]*\"|<[^>]*>|\([^()]*\)|\[[^\]]*\]", "Q", line)
    line = re.sub(r"global \S+", "global G", line)
    line = re.sub(r"0x[0-9a-fA-F]+|\d+", "N", line)
    return line[:70]


def judge(status, stderr, workdir):
    """(outcome class, failure or None)."""
    src = os.path.join(workdir, "in.pth")
    out = os.path.join(workdir, "out.safetensors")
    leftovers = [n for n in os.listdir(workdir) if n.endswith(".tmp")]
    kind, value = status
    lines = [l for l in stderr.splitlines() if not l.startswith(("note:", "warning:"))]
    if kind == "timeout":
        return "timeout", "timeout"
    if kind == "signal":
        return f"signal {value}", f"killed by signal {value}"
    if "Traceback" in stderr:
        last = [l for l in stderr.splitlines() if l.strip()][-1]
        return "traceback", "traceback: " + normalize(last, src)
    if "MemoryError" in stderr or "out of memory" in stderr:
        return "memory", "out of memory: " + normalize(stderr.strip().splitlines()[-1], src)
    if leftovers:
        return "leftover", f"temporary file left: {leftovers}"
    if value == 0:
        if not os.path.exists(out):
            return "ok-no-output", "exit 0 without an output file"
        why = check_safetensors(out)
        return ("ok", None) if why is None else ("bad-output", why)
    if value != 1:
        return f"exit {value}", f"exit status {value}"
    if len(lines) != 1 or not lines[0].startswith("error: "):
        return "bad-stderr", f"stderr is not one error line: {stderr[:300]!r}"
    if os.path.exists(out):
        return "output-left", "error, but the output file exists"
    return normalize(lines[0], src), None


# ----------------------------------------------------------------------------------------------
# The loop


def fuzz_worker(index, args, stats_path):
    rng = random.Random(args.seed * 1000 + index)
    converter = load_converter(args.converter)
    seeds = make_seeds(np.random.default_rng(args.seed))
    corpus = list(seeds.values())
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    workdir = tempfile.mkdtemp(prefix=f"convert_fuzz{index}.", dir=base)
    mem = args.mem_mb << 20
    outcomes = collections.Counter()
    failures = collections.Counter()
    saved = collections.Counter()
    examples = {}
    execs = 0
    slowest = 0.0
    deadline = time.monotonic() + args.duration
    try:
        # Every seed must convert: otherwise the fuzzer would test nothing.
        for name, data in seeds.items():
            status, text, _ = run_forked(converter, workdir, data, mem, args.timeout)
            outcome, failure = judge(status, text, workdir)
            execs += 1
            outcomes[outcome] += 1
            if outcome != "ok":
                failures[f"seed {name} does not convert: {failure or outcome}"] += 1
        while time.monotonic() < deadline and (args.max_execs == 0 or execs < args.max_execs):
            parent = rng.choice(corpus) if rng.random() < 0.7 else rng.choice(list(seeds.values()))
            data = mutate(parent, corpus, rng)
            if len(data) > args.max_input:
                continue
            status, text, elapsed = run_forked(converter, workdir, data, mem, args.timeout)
            slowest = max(slowest, elapsed)
            execs += 1
            outcome, failure = judge(status, text, workdir)
            if outcome not in outcomes:
                examples[outcome] = len(data)
                if len(corpus) < 4000:
                    corpus.append(data)
                if args.corpus_dir:
                    os.makedirs(args.corpus_dir, exist_ok=True)
                    with open(os.path.join(args.corpus_dir, hashlib.sha1(data).hexdigest()[:16] + ".pth"), "wb") as f:
                        f.write(data)
            outcomes[outcome] += 1
            if failure is not None:
                failures[failure] += 1
                if saved[failure] < 3:
                    saved[failure] += 1
                    save_crash(args, converter, workdir, data, failure, text)
            if args.progress and execs % args.progress == 0:
                print(f"[worker {index}] {execs} execs, {len(outcomes)} outcomes, "
                      f"{sum(failures.values())} failures, corpus {len(corpus)}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    with open(stats_path, "w") as f:
        json.dump({"execs": execs, "outcomes": outcomes, "failures": failures,
                   "corpus": len(corpus), "slowest_s": slowest}, f)


def save_crash(args, converter, workdir, data, failure, stderr):
    os.makedirs(args.crash_dir, exist_ok=True)
    digest = hashlib.sha1(data).hexdigest()[:16]
    path = os.path.join(args.crash_dir, f"crash-{digest}.pth")
    with open(path, "wb") as f:
        f.write(data)
    confirm = run_subprocess(args.converter, workdir, data, args.mem_mb << 20, args.timeout)
    with open(path + ".txt", "w") as f:
        f.write(f"failure: {failure}\n\nstderr (forked run):\n{stderr[-4000:]}\n\n"
                f"rerun as python3 {args.converter} IN OUT: {confirm}\n")
    print(f"FAILURE {failure}\n  saved {path}", flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--duration", type=float, default=60, help="seconds")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--crash-dir", default="convert_fuzz_crashes")
    p.add_argument("--corpus-dir", help="also write each input with a new outcome here")
    p.add_argument("--converter", default=DEFAULT_CONVERTER)
    p.add_argument("--mem-mb", type=int, default=1024, help="RLIMIT_AS per conversion")
    p.add_argument("--timeout", type=float, default=10, help="seconds per conversion")
    p.add_argument("--max-execs", type=int, default=0)
    p.add_argument("--max-input", type=int, default=8 << 20, help="bytes")
    p.add_argument("--progress", type=int, default=0, help="print a line every N executions")
    p.add_argument("--stats-json", help="write the merged statistics here")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    args.converter = os.path.abspath(args.converter)
    start = time.monotonic()
    stats_dir = tempfile.mkdtemp(prefix="convert_fuzz_stats.")
    pids = []
    for i in range(args.workers):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                fuzz_worker(i, args, os.path.join(stats_dir, f"{i}.json"))
            except BaseException:
                traceback.print_exc()
                code = 2
            finally:
                os._exit(code)
        pids.append(pid)
    broken = 0
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        broken += status != 0
    merged = {"execs": 0, "outcomes": collections.Counter(), "failures": collections.Counter(),
              "corpus": 0, "slowest_s": 0.0}
    for name in os.listdir(stats_dir):
        with open(os.path.join(stats_dir, name)) as f:
            s = json.load(f)
        merged["execs"] += s["execs"]
        merged["outcomes"].update(s["outcomes"])
        merged["failures"].update(s["failures"])
        merged["corpus"] += s["corpus"]
        merged["slowest_s"] = max(merged["slowest_s"], s["slowest_s"])
    shutil.rmtree(stats_dir, ignore_errors=True)
    wall = time.monotonic() - start
    merged.update(seed=args.seed, workers=args.workers, wall_s=round(wall, 1), converter=args.converter)
    print(f"seed {args.seed}, {args.workers} worker(s), {wall:.0f} s: {merged['execs']} executions "
          f"({merged['execs'] / max(wall, 1e-9):.1f}/s), {len(merged['outcomes'])} distinct outcomes, "
          f"corpus {merged['corpus']}, slowest input {merged['slowest_s']:.2f} s")
    for outcome, n in merged["outcomes"].most_common():
        print(f"  {n:8d}  {outcome}")
    if merged["failures"]:
        print(f"{sum(merged['failures'].values())} failing inputs, {len(merged['failures'])} distinct:")
        for failure, n in merged["failures"].most_common():
            print(f"  {n:8d}  {failure}")
        print(f"saved to {os.path.abspath(args.crash_dir)}")
    elif not broken:
        print("no failures")
    if broken:
        print(f"{broken} worker(s) died: see the traceback above")
    if args.stats_json:
        with open(args.stats_json, "w") as f:
            json.dump(merged, f, indent=1)
    return 1 if merged["failures"] or broken else 0


if __name__ == "__main__":
    sys.exit(main())
