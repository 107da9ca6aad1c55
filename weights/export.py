#!/usr/bin/env python3
"""Write effnet weights back as a PyTorch state dict, without importing torch.

    python3 weights/export.py IN.safetensors OUT.pth --names torchvision|timm|lukemelas
        [--format pth|safetensors] [--force]

IN is an effnet weights file with effnet's canonical names (stem.conv.weight, blocks.N.dw.conv.weight,
..., classifier.weight): what effnet::save_weights writes, i.e. `effnet-train --export` and
`effnet-run --weights W --save-weights IN.safetensors` (which turns any file effnet loads, for
example a convert.py output with torchvision names, into canonical names). Files with another
family's names are refused with that hint. The stage of each block comes from the metadata
`effnet.block_stages` that save_weights writes (torchvision's and timm's names are nested by stage);
a file without it is refused.

OUT is written with the names and module order of the chosen family's own model, shapes exactly
as in its state dict, every tensor in the dtype it has in IN, plus each BatchNorm's
`num_batches_tracked` (int64 scalar): the value IN holds under the canonical name
(<module>.bn.num_batches_tracked) when it has one, else 0 (effnet does not count BN steps; the
counter only matters for BatchNorm with momentum=None, which these models do not use). So
`model.load_state_dict(torch.load(OUT), strict=True)` accepts it.
  --format pth          torch.save's zip format: archive/data.pkl (pickle protocol 2, an
                        OrderedDict of torch._utils._rebuild_tensor_v2 records whose storages are
                        persistent ids ('storage', torch.FloatStorage, key, 'cpu', numel)),
                        archive/data/<key> (raw little-endian bytes), byteorder, version, laid out
                        as torch's zip writer does (members stored, data 64-byte aligned, data
                        descriptors): torch.load(weights_only=True) reads it.
  --format safetensors  the same tensors in safetensors, with IN's metadata (effnet.family set to
                        the chosen names, a fresh effnet.checksum): effnet loads it back, and so
                        does safetensors.torch.load_file.
The format follows OUT's extension (.pth/.pt/.bin or .safetensors) unless --format is given.

Every failure is one line `error: ...` naming the file (and tensor) with exit status 1; the output
is written to a temporary file renamed into place, so nothing is left at OUT on failure. OUT may
not name IN, and an existing OUT is replaced only with --force. IN's effnet.checksum is verified
when the Python package xxhash is installed.
"""
import argparse
import collections
import hashlib
import json
import math
import mmap
import os
import re
import struct
import sys
import tempfile
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import convert  # noqa: E402  (weights/convert.py: ConvertError, quote, the safetensors writer)
from convert import ConvertError, quote  # noqa: E402

FAMILIES = ("torchvision", "timm", "lukemelas")
BN_FIELDS = ("weight", "bias", "running_mean", "running_var")
NBT = "num_batches_tracked"

# safetensors dtype -> (numpy dtype of its raw elements, torch storage class). BF16 travels as
# its raw 16-bit patterns.
DTYPES = {
    "F32": (np.dtype("<f4"), "FloatStorage"),
    "F64": (np.dtype("<f8"), "DoubleStorage"),
    "F16": (np.dtype("<f2"), "HalfStorage"),
    "BF16": (np.dtype("<u2"), "BFloat16Storage"),
    "I64": (np.dtype("<i8"), "LongStorage"),
}
FLOAT_DTYPES = ("F32", "F64", "F16", "BF16")

MAX_HEADER_BYTES = convert.MAX_HEADER_BYTES
MAX_DIMS = convert.MAX_DIMS
MAX_BLOCKS = 1000          # B7 has 55 blocks, EfficientNet-L2 ~100
MAX_STAGES = 7             # EfficientNet's seven stages (effnet's metadata limit: stages 0..6)
ZIP_ALIGNMENT = 64         # torch's default storage alignment
ZIP32_LIMIT = 0xFFFFFFFF   # torch's writer switches to zip64 records past this; ours refuses


# ----------------------------------------------------------------------------------------------
# Reading the input (safetensors), checked before anything is trusted


class SourceTensor:
    """One tensor of the input: a view of the mapped file, materialised when written."""

    def __init__(self, blob, begin, dtype, shape):
        self.blob = blob
        self.begin = begin
        self.dtype = dtype
        self.shape = shape
        self.numel = math.prod(shape)

    def materialize(self, source=None, byteorder=None):
        array = np.frombuffer(self.blob, dtype=DTYPES[self.dtype][0], count=self.numel, offset=self.begin)
        return array.reshape(self.shape)


class ValueTensor:
    """A tensor made here (a num_batches_tracked counter absent from the input)."""

    def __init__(self, array, dtype):
        self.array = np.array(array, dtype=DTYPES[dtype][0])  # a copy; keeps 0-d arrays 0-d
        self.dtype = dtype
        self.shape = list(self.array.shape)
        self.numel = self.array.size

    def materialize(self, source=None, byteorder=None):
        return self.array


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ConvertError(f"key {quote(key)} appears twice in the header")
        out[key] = value
    return out


class SafetensorsInput:
    """A safetensors file mapped read-only: metadata, and name -> SourceTensor in file order."""

    def __init__(self, path):
        self.path = path
        if not os.path.exists(path):
            raise ConvertError(f"{path}: no such file")
        if os.path.isdir(path):
            raise ConvertError(f"{path}: is a directory, not a weights file")
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                self.blob = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        except (OSError, ValueError) as e:
            raise ConvertError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})")
        try:
            self._parse(size)
        except ConvertError as e:
            self.close()
            text = str(e)
            raise ConvertError(text if text.startswith(path + ":") else f"{path}: {text}")
        except BaseException:
            self.close()
            raise

    def close(self):
        if isinstance(self.blob, mmap.mmap):
            try:
                self.blob.close()
            except BufferError:  # arrays still view it: released with them
                pass

    def _parse(self, size):
        what = "not a safetensors file"
        if size < 8:
            raise ConvertError(f"{what} ({size} bytes, shorter than the 8-byte header length)")
        (length,) = struct.unpack_from("<Q", self.blob, 0)
        if length > MAX_HEADER_BYTES:
            raise ConvertError(f"{what} (header length {length} is past the limit of {MAX_HEADER_BYTES})")
        if 8 + length > size:
            raise ConvertError(f"{what} or truncated (header of {length} bytes, the file has {size - 8} after "
                               f"its length)")
        raw = bytes(self.blob[8:8 + length])
        if not raw.lstrip().startswith(b"{"):
            raise ConvertError(f"{what} (its header is not a JSON object)")
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
        except ConvertError:
            raise
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise ConvertError(f"{what} (header is not valid JSON: {quote(str(e))[1:-1]})")
        if not isinstance(header, dict):
            raise ConvertError(f"{what} (its header is not a JSON object)")
        metadata = header.pop("__metadata__", {})
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise ConvertError("metadata '__metadata__' is not an object of strings")
        self.metadata = metadata
        self.data_start = 8 + length
        data_size = size - self.data_start
        self.tensors = {}
        spans = []
        for name, info in header.items():
            where = f"tensor {quote(name)}"
            if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
                raise ConvertError(f"{where}: entry {quote(info)} is not {{dtype, shape, data_offsets}}")
            dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
            if dtype not in DTYPES:
                raise ConvertError(f"{where}: dtype {quote(dtype)} (weights are {', '.join(FLOAT_DTYPES)} "
                                   f"or I64 for BN counters)")
            if (not isinstance(shape, list) or len(shape) > MAX_DIMS
                    or not all(type(d) is int and 0 <= d < 1 << 48 for d in shape)):
                raise ConvertError(f"{where}: bad shape {quote(shape)} (at most {MAX_DIMS} sizes >= 0)")
            if (not isinstance(offsets, list) or len(offsets) != 2
                    or not all(type(o) is int and 0 <= o for o in offsets) or offsets[0] > offsets[1]):
                raise ConvertError(f"{where}: bad data_offsets {quote(offsets)}")
            need = math.prod(shape) * DTYPES[dtype][0].itemsize
            if offsets[1] - offsets[0] != need:
                raise ConvertError(f"{where}: data_offsets {offsets} hold {offsets[1] - offsets[0]} bytes, "
                                   f"{dtype} {shape} needs {need}")
            if offsets[1] > data_size:
                raise ConvertError(f"{where}: data_offsets {offsets} reach past the end of the data "
                                   f"({data_size} bytes): truncated file")
            self.tensors[name] = SourceTensor(self.blob, self.data_start + offsets[0], dtype, shape)
            spans.append((offsets[0], offsets[1], name))
        spans.sort()
        for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
            if b1 < e0:
                raise ConvertError(f"tensors {quote(n0)} and {quote(n1)} overlap in the data section")

    def verify_checksum(self):
        value = self.metadata.get(convert.CHECKSUM_KEY)
        if value is None:
            return
        if not re.fullmatch(re.escape(convert.CHECKSUM_PREFIX) + "[0-9a-f]{16}", value):
            raise ConvertError(f"{self.path}: metadata '{convert.CHECKSUM_KEY}' is {quote(value)}, expected "
                               f"{convert.CHECKSUM_PREFIX} and 16 lowercase hex digits")
        if convert.xxhash is None:
            print(f"warning: Python package xxhash not installed: the checksum of {self.path} is not "
                  f"verified (pip install xxhash)", file=sys.stderr)
            return
        hasher = convert.xxhash.xxh3_64()
        view = memoryview(self.blob)
        try:
            step = 64 << 20
            for begin in range(self.data_start, len(self.blob), step):
                hasher.update(view[begin:begin + step])
        finally:
            view.release()
        if convert.CHECKSUM_PREFIX + hasher.hexdigest() != value:
            raise ConvertError(f"{self.path}: damaged file: the data does not match its checksum "
                               f"({value}, computed {convert.CHECKSUM_PREFIX}{hasher.hexdigest()})")


# ----------------------------------------------------------------------------------------------
# effnet's canonical layout: which blocks, which modules, shapes that fit together


class Block:
    def __init__(self, index):
        self.index = index
        self.has_expand = False
        self.has_se = False
        self.stage = 0
        self.index_in_stage = 0
        self.in_channels = self.expand_channels = self.out_channels = self.kernel = 0


def _bn_names(prefix):
    return [f"{prefix}.bn.{f}" for f in BN_FIELDS]


_BLOCK_NAME = re.compile(r"blocks\.(0|[1-9][0-9]{0,5})\.(expand|dw|se|project)\.(.+)")
_OTHER_FAMILIES = {"features.0.0.weight": "torchvision", "conv_stem.weight": "timm",
                   "_conv_stem.weight": "lukemelas"}


class Canonical:
    """The model an effnet file describes: blocks with stages, every tensor checked."""

    def __init__(self, weights):
        self.weights = weights
        path = weights.path
        names = list(weights.tensors)
        family = weights.metadata.get("effnet.family")
        for marker, other in _OTHER_FAMILIES.items():
            if marker in weights.tensors:
                raise ConvertError(
                    f"{path}: has {other} names, export.py reads effnet's canonical names: load it in "
                    f"effnet and save it first (effnet-run --weights {path} --save-weights CANONICAL.safetensors)")
        if family is not None and family != "effnet":
            raise ConvertError(f"{path}: metadata 'effnet.family' is {quote(family)}, export.py reads effnet's "
                               f"canonical names (effnet.family 'effnet', as effnet-run --save-weights and "
                               f"effnet-train --export write)")
        if "stem.conv.weight" not in weights.tensors:
            preview = ", ".join(quote(n) for n in names[:3]) or "none"
            raise ConvertError(f"{path}: not an effnet weights file with canonical names: no tensor "
                               f"'stem.conv.weight' (tensors: {preview}{', ...' if len(names) > 3 else ''})")

        # Blocks present, numbered densely from 0.
        indices = set()
        for name in names:
            m = _BLOCK_NAME.fullmatch(name)
            if m:
                indices.add(int(m.group(1)))
        if not indices:
            raise ConvertError(f"{path}: no blocks (no tensor named blocks.N....)")
        if max(indices) >= MAX_BLOCKS:
            raise ConvertError(f"{path}: block {max(indices)}: more than {MAX_BLOCKS} blocks")
        for i in range(max(indices) + 1):
            if i not in indices:
                raise ConvertError(f"{path}: block {i} is missing (blocks {min(indices)}..{max(indices)} "
                                   f"must be numbered densely from 0)")
        self.blocks = [Block(i) for i in range(len(indices))]
        for b in self.blocks:
            p = f"blocks.{b.index}."
            b.has_expand = any(n.startswith(p + "expand.") for n in names)
            b.has_se = any(n.startswith(p + "se.") for n in names)

        self._check_shapes()
        self._assign_stages()

    # Every tensor the blocks' structure needs, with the shape the neighbours imply.
    def _check_shapes(self):
        t = self.weights.tensors
        path = self.weights.path
        missing, misshaped, wrong_dtype = [], [], []
        expected = {}  # name -> shape, every parameter the structure needs

        def take(name, pattern):
            """The shape of `name` when it matches `pattern` (ints, or None for any size >= 1); else
            records what is wrong and returns None."""
            expected[name] = pattern
            info = t.get(name)
            if info is None:
                missing.append(name)
                return None
            ok = len(info.shape) == len(pattern) and all(
                d >= 1 and (want is None or d == want) for d, want in zip(info.shape, pattern))
            if not ok:
                shown = "[" + ", ".join("*" if w is None else str(w) for w in pattern) + "]"
                misshaped.append(f"{name} {info.shape} (expected {shown})")
                return None
            if info.dtype not in FLOAT_DTYPES:
                wrong_dtype.append(f"{name} {info.dtype}")
            return info.shape

        def bn(prefix, channels):
            for name in _bn_names(prefix):
                take(name, [channels])

        stem = take("stem.conv.weight", [None, None, None, None])
        if stem is not None and stem[2] != stem[3]:
            misshaped.append(f"stem.conv.weight {stem} (expected a square kernel)")
            stem = None
        if stem is None:
            self._fail(missing, misshaped, wrong_dtype, expected)
        self.stem_channels = channels = stem[0]
        bn("stem", channels)
        for b in self.blocks:
            p = f"blocks.{b.index}."
            b.in_channels = channels
            if b.has_expand:
                e = take(p + "expand.conv.weight", [None, channels, 1, 1])
                if e is None:
                    self._fail(missing, misshaped, wrong_dtype, expected)
                if e[0] == channels:
                    raise ConvertError(f"{path}: block {b.index} has an expand convolution that keeps "
                                       f"{channels} channels, which effnet does not make")
                channels = e[0]
                bn(p + "expand", channels)
            b.expand_channels = channels
            dw = take(p + "dw.conv.weight", [channels, 1, None, None])
            if dw is not None and dw[2] != dw[3]:
                misshaped.append(f"{p}dw.conv.weight {dw} (expected a square kernel)")
                dw = None
            b.kernel = dw[2] if dw is not None else 0
            bn(p + "dw", channels)
            if b.has_se:
                r = take(p + "se.reduce.weight", [None, channels, 1, 1])
                squeeze = r[0] if r is not None else None
                take(p + "se.reduce.bias", [squeeze])
                take(p + "se.expand.weight", [channels, squeeze, 1, 1])
                take(p + "se.expand.bias", [channels])
            proj = take(p + "project.conv.weight", [None, channels, 1, 1])
            if proj is None:
                self._fail(missing, misshaped, wrong_dtype, expected)
            channels = b.out_channels = proj[0]
            bn(p + "project", channels)
        head = take("head.conv.weight", [None, channels, 1, 1])
        if head is None:
            self._fail(missing, misshaped, wrong_dtype, expected)
        bn("head", head[0])
        fc = take("classifier.weight", [None, head[0]])
        take("classifier.bias", [fc[0] if fc is not None else None])

        # BN step counters: optional, int64 scalars, only next to a BN.
        self.counters = {}
        unexpected = []
        bn_prefixes = {n[: -len(".weight")] for n in expected if n.endswith(".bn.weight")}
        for name, info in t.items():
            if name in expected:
                continue
            prefix, _, last = name.rpartition(".")
            if last == NBT and prefix in bn_prefixes:
                if info.dtype != "I64" or info.shape != []:
                    misshaped.append(f"{name} {info.dtype} {info.shape} (expected an I64 scalar [])")
                else:
                    self.counters[prefix] = info
            else:
                unexpected.append(name)
        if missing or misshaped or wrong_dtype or unexpected:
            self._fail(missing, misshaped, wrong_dtype, expected, unexpected)
        self.num_classes = fc[0]
        self.head_channels = head[0]

    def _fail(self, missing, misshaped, wrong_dtype, expected, unexpected=()):
        def preview(items):
            return ", ".join(items[:3]) + (f", ... ({len(items)} in all)" if len(items) > 3 else "")

        parts = []
        if missing:
            parts.append("missing " + preview(missing))
        if misshaped:
            parts.append("wrong shape " + preview(misshaped))
        if wrong_dtype:
            parts.append(f"not a float type ({'/'.join(FLOAT_DTYPES)}): " + preview(wrong_dtype))
        if unexpected:
            parts.append("unexpected " + preview(list(unexpected)))
        raise ConvertError(f"{self.weights.path}: the tensors do not fit together as an EfficientNet: "
                           + "; ".join(parts))

    def _assign_stages(self):
        path = self.weights.path
        key = "effnet.block_stages"
        text = self.weights.metadata.get(key)
        n = len(self.blocks)
        if text is None:
            raise ConvertError(f"{path}: no metadata '{key}': the stage of each block is needed for "
                               f"torchvision's and timm's names (files from effnet-train --export and "
                               f"effnet-run --save-weights carry it)")
        items = text.split(",")
        if not all(re.fullmatch(r"[0-9]{1,3}", s.strip()) for s in items):
            raise ConvertError(f"{path}: metadata '{key}' is {quote(text)}: expected comma-separated "
                               f"stage numbers 0..{MAX_STAGES - 1}")
        stages = [int(s) for s in items]
        if len(stages) != n:
            raise ConvertError(f"{path}: metadata '{key}' lists {len(stages)} blocks, the tensors hold {n}")
        for i, s in enumerate(stages):
            previous = stages[i - 1] if i else -1
            if s >= MAX_STAGES or s not in (previous, previous + 1) or (i == 0 and s != 0):
                raise ConvertError(f"{path}: metadata '{key}' is {quote(text)}: stages must start at 0 and "
                                   f"go up by at most 1 from block to block, up to {MAX_STAGES - 1} "
                                   f"(block {i}: {s})")
        for i, b in enumerate(self.blocks):
            b.stage = stages[i]
            b.index_in_stage = self.blocks[i - 1].index_in_stage + 1 if i and stages[i - 1] == stages[i] else 0
            if b.index_in_stage:
                first = self.blocks[i - b.index_in_stage]
                same = (b.in_channels == b.out_channels == first.out_channels and b.kernel == first.kernel
                        and b.has_expand == first.has_expand and b.has_se == first.has_se)
                if not same:
                    raise ConvertError(f"{path}: metadata '{key}' puts block {i} in stage {b.stage} with "
                                       f"block {first.index}, but it is not a repeat of it (channels, "
                                       f"kernel or modules differ)")
        self.num_stages = stages[-1] + 1


# ----------------------------------------------------------------------------------------------
# Target names, in the order the family's model registers its modules (the state dict order)


def _modules(family, model):
    """[(kind, target module, canonical module)] in state-dict order; kind is conv, bn, se or linear."""
    out = []
    if family == "torchvision":
        top = ("features.0.0", "features.0.1", f"features.{model.num_stages + 1}.0",
               f"features.{model.num_stages + 1}.1", "classifier.1")
    elif family == "timm":
        top = ("conv_stem", "bn1", "conv_head", "bn2", "classifier")
    else:
        top = ("_conv_stem", "_bn0", "_conv_head", "_bn1", "_fc")
    out += [("conv", top[0], "stem.conv"), ("bn", top[1], "stem.bn")]
    for b in model.blocks:
        c = f"blocks.{b.index}."
        if family == "torchvision":
            p = f"features.{b.stage + 1}.{b.index_in_stage}.block."
            k = 0
            names = {}
            if b.has_expand:
                names["expand"] = (f"{p}{k}.0", f"{p}{k}.1")
                k += 1
            names["dw"] = (f"{p}{k}.0", f"{p}{k}.1")
            k += 1
            if b.has_se:
                names["se"] = (f"{p}{k}.fc1", f"{p}{k}.fc2")
                k += 1
            names["project"] = (f"{p}{k}.0", f"{p}{k}.1")
        elif family == "timm":
            p = f"blocks.{b.stage}.{b.index_in_stage}."
            if b.has_expand:  # InvertedResidual
                names = {"expand": (p + "conv_pw", p + "bn1"), "dw": (p + "conv_dw", p + "bn2"),
                         "project": (p + "conv_pwl", p + "bn3")}
            else:             # DepthwiseSeparable: its conv_pw is the project
                names = {"dw": (p + "conv_dw", p + "bn1"), "project": (p + "conv_pw", p + "bn2")}
            names["se"] = (p + "se.conv_reduce", p + "se.conv_expand")
        else:
            p = f"_blocks.{b.index}."
            names = {"expand": (p + "_expand_conv", p + "_bn0"), "dw": (p + "_depthwise_conv", p + "_bn1"),
                     "se": (p + "_se_reduce", p + "_se_expand"), "project": (p + "_project_conv", p + "_bn2")}
        # expand, dw, se, project: the registration order of all three families' blocks.
        for part in ("expand", "dw", "se", "project"):
            if part == "expand" and not b.has_expand or part == "se" and not b.has_se:
                continue
            first, second = names[part]
            if part == "se":
                out += [("se", first, c + "se.reduce"), ("se", second, c + "se.expand")]
            else:
                out += [("conv", first, c + part + ".conv"), ("bn", second, c + part + ".bn")]
    out += [("conv", top[2], "head.conv"), ("bn", top[3], "head.bn"), ("linear", top[4], "classifier")]
    return out


def state_dict_plan(model, family):
    """OrderedDict target name -> tensor (SourceTensor or ValueTensor), in state-dict order."""
    tensors = model.weights.tensors
    plan = collections.OrderedDict()
    for kind, target, canonical in _modules(family, model):
        if kind == "conv":
            fields = [("weight", "weight")]
        elif kind in ("se", "linear"):
            fields = [("weight", "weight"), ("bias", "bias")]
        else:
            fields = [(f, f) for f in BN_FIELDS]
        for out_field, in_field in fields:
            plan[f"{target}.{out_field}"] = tensors[f"{canonical}.{in_field}"]
        if kind == "bn":
            plan[f"{target}.{NBT}"] = model.counters.get(canonical) or ValueTensor(np.array(0), "I64")
    return plan


def settings_note(metadata, family, head_channels):
    """A note when the weights were made for settings the family's usual model does not have
    (the state dict loads either way; the logits then differ)."""
    padding = metadata.get("padding", "symmetric")
    activation = metadata.get("activation", "silu")
    try:
        eps = float(metadata.get("bn_eps", "nan"))
    except ValueError:
        eps = float("nan")
    notes = []
    if family == "torchvision":
        if padding != "symmetric":
            notes.append(f"padding {padding} (torchvision's EfficientNet pads symmetrically; timm's "
                         f"tf_* models pad TF 'SAME': --names timm)")
        if activation != "silu":
            notes.append(f"activation {activation} (torchvision's EfficientNet uses SiLU)")
    elif family == "timm":
        if padding == "tf_same":
            notes.append("padding tf_same: load it into timm's tf_* model (tf_efficientnet_*, "
                         "tf_efficientnet_lite*)")
    elif padding != "tf_same":
        notes.append(f"padding {padding} (lukemelas' EfficientNet-PyTorch pads TF 'SAME')")
    # torchvision builds B5..B7 (heads of 2048+ channels) with eps 1e-3, timm its tf_* models.
    usual = 1e-3 if (family == "lukemelas" or family == "timm" and padding == "tf_same"
                     or family == "torchvision" and head_channels >= 2048) else 1e-5
    if math.isfinite(eps) and abs(eps / usual - 1) > 0.01:
        notes.append(f"BN eps {eps:.3g} (the {family} model these names fit has {usual:g} unless built "
                     f"with another)")
    if notes:
        print(f"note: these weights need: {'; '.join(notes)}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# Output: temporary file in the destination folder, renamed into place when complete


def _temp_output(path):
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ConvertError(f"{path}: folder {folder} does not exist")
    try:
        fd, temp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    except OSError as e:
        raise ConvertError(f"{path}: cannot create a file in {folder} ({e.strerror})")
    return fd, temp


def _tensor_bytes(tensor, name, path):
    if tensor.dtype not in DTYPES:
        raise ConvertError(f"{path}: tensor {quote(name)}: dtype {tensor.dtype}")
    array = np.ascontiguousarray(tensor.materialize())
    data = memoryview(array.reshape(-1).view(np.uint8))
    if len(data) != tensor.numel * DTYPES[tensor.dtype][0].itemsize:  # a bug here, not in the input
        raise ConvertError(f"{path}: tensor {quote(name)}: {len(data)} bytes for shape {tensor.shape}")
    return data


# The pickle: written opcode by opcode (protocol 2, as torch.save does), so that it names exactly
# the globals a state dict needs and torch.load(weights_only=True) allows: collections.OrderedDict,
# torch._utils._rebuild_tensor_v2 and torch.<X>Storage.

class _PickleWriter:
    def __init__(self):
        self.out = bytearray(b"\x80\x02")  # PROTO 2
        self.memo = {}

    def _put(self, key):
        index = self.memo[key] = len(self.memo)
        self.out += b"q" + bytes([index]) if index < 256 else b"r" + struct.pack("<I", index)

    def _memoized(self, key):
        index = self.memo.get(key)
        if index is None:
            return False
        self.out += b"h" + bytes([index]) if index < 256 else b"j" + struct.pack("<I", index)
        return True

    def glob(self, module, name):
        if not self._memoized(("global", module, name)):
            self.out += b"c" + f"{module}\n{name}\n".encode("ascii")
            self._put(("global", module, name))

    def string(self, text, memo=False):
        if memo and self._memoized(("str", text)):
            return
        data = text.encode("utf-8")
        self.out += b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE
        if memo:
            self._put(("str", text))

    def integer(self, value):
        if 0 <= value < 256:
            self.out += b"K" + bytes([value])                    # BININT1
        elif 0 <= value < 65536:
            self.out += b"M" + struct.pack("<H", value)          # BININT2
        elif -(1 << 31) <= value < 1 << 31:
            self.out += b"J" + struct.pack("<i", value)          # BININT
        else:
            data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
            self.out += b"\x8a" + bytes([len(data)]) + data      # LONG1

    def int_tuple(self, values):
        if not values:
            self.out += b")"                                     # EMPTY_TUPLE
            return
        if len(values) > 3:
            self.out += b"("                                     # MARK
        for v in values:
            self.integer(v)
        self.out += {1: b"\x85", 2: b"\x86", 3: b"\x87"}.get(len(values), b"t")

    def empty_ordered_dict(self):
        self.glob("collections", "OrderedDict")
        self.out += b")R"                                        # EMPTY_TUPLE, REDUCE

    def tensor(self, storage_class, key, shape):
        """torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())"""
        strides = [math.prod(shape[i + 1:]) for i in range(len(shape))]
        self.glob("torch._utils", "_rebuild_tensor_v2")
        self.out += b"("                                          # MARK (the call's arguments)
        self.out += b"("                                          # MARK (the persistent id)
        self.string("storage", memo=True)
        self.glob("torch", storage_class)
        self.string(key)
        self.string("cpu", memo=True)
        self.integer(math.prod(shape))
        self.out += b"tQ"                                         # TUPLE, BINPERSID
        self.integer(0)
        self.int_tuple(shape)
        self.int_tuple(strides)
        self.out += b"\x89"                                       # NEWFALSE (requires_grad)
        self.empty_ordered_dict()                                 # backward hooks
        self.out += b"tR"                                         # TUPLE, REDUCE

    def state_dict(self, items):
        """items: [(name, storage class, key, shape)] -> the pickled OrderedDict."""
        self.empty_ordered_dict()
        for start in range(0, len(items), 1000):                  # pickle batches SETITEMS by 1000
            self.out += b"("
            for name, storage_class, key, shape in items[start:start + 1000]:
                self.string(name)
                self.tensor(storage_class, key, shape)
            self.out += b"u"                                      # SETITEMS
        self.out += b"."                                          # STOP
        return bytes(self.out)


class _ZipWriter:
    """Members as torch's zip writer (miniz) lays them out: stored, each local header's extra field
    'FB' padded so the data starts 64-byte aligned, sizes and CRC in a data descriptor after the
    data, a zip64 end record before the classic one."""

    def __init__(self, f, path):
        self.f = f
        self.path = path
        self.entries = []
        self.offset = 0

    def _write(self, data):
        self.f.write(data)
        self.offset += len(data)

    def add(self, name, chunks):
        """chunks: bytes-like pieces of the member, written as they come."""
        encoded = name.encode("utf-8")
        header_offset = self.offset
        start = header_offset + 30 + len(encoded) + 4
        pad = -start % ZIP_ALIGNMENT
        extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
        self._write(struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 0, 0x0808, 0, 0, 0, 0, 0, 0,
                                len(encoded), len(extra)) + encoded + extra)
        crc, size = 0, 0
        for chunk in chunks:
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
            self._write(chunk)
        if size == 0 or size >= ZIP32_LIMIT or self.offset >= ZIP32_LIMIT:
            raise ConvertError(f"{self.path}: member {name} of {size} bytes at offset {header_offset}: "
                               f"archives past 4 GiB (zip64) are not written")
        self._write(struct.pack("<4sIII", b"PK\x07\x08", crc, size, size))
        self.entries.append((encoded, crc, size, header_offset))
        return crc

    def finish(self):
        cd_offset = self.offset
        for encoded, crc, size, header_offset in self.entries:
            self._write(struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 0, 0, 0x0808, 0, 0, 0, crc, size,
                                    size, len(encoded), 0, 0, 0, 0, 0, header_offset) + encoded)
        cd_size = self.offset - cd_offset
        n = len(self.entries)
        if n >= 0xFFFF or self.offset >= ZIP32_LIMIT:
            raise ConvertError(f"{self.path}: {n} members, {self.offset} bytes: archives this large "
                               f"(zip64) are not written")
        zip64_offset = self.offset
        self._write(struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 0x031E, 45, 0, 0, n, n, cd_size, cd_offset))
        self._write(struct.pack("<4sIQI", b"PK\x06\x07", 0, zip64_offset, 1))
        self._write(struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, n, n, cd_size, cd_offset, 0))


def write_pth(path, plan):
    items = []
    for key, (name, tensor) in enumerate(plan.items()):
        items.append((name, DTYPES[tensor.dtype][1], str(key), list(tensor.shape)))
    pickled = _PickleWriter().state_dict(items)
    fd, temp = _temp_output(path)
    try:
        with os.fdopen(fd, "wb") as f:
            z = _ZipWriter(f, path)
            z.add("archive/data.pkl", [pickled])
            z.add("archive/.format_version", [b"1"])
            z.add("archive/.storage_alignment", [str(ZIP_ALIGNMENT).encode()])
            z.add("archive/byteorder", [b"little"])
            digest = hashlib.sha256(pickled)
            for key, (name, tensor) in enumerate(plan.items()):
                crc = z.add(f"archive/data/{key}", [_tensor_bytes(tensor, name, path)])
                digest.update(struct.pack("<I", crc))
            z.add("archive/version", [b"3\n"])
            # torch writes a random 40-digit id here (logged by torch.load, never checked); ours
            # comes from the contents, so that the same input gives the same file.
            z.add("archive/.data/serialization_id", [b"%040d" % int.from_bytes(digest.digest()[:16], "big")])
            z.finish()
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException as e:
        if os.path.exists(temp):
            os.unlink(temp)
        if isinstance(e, OSError):
            raise ConvertError(f"{path}: cannot write ({e.strerror or e})")
        raise


class _Planned:
    """What convert.write_safetensors takes: tensor (with materialize), st_dtype, shape, nbytes."""

    def __init__(self, tensor):
        self.tensor = tensor
        self.st_dtype = tensor.dtype
        self.shape = list(tensor.shape)
        self.nbytes = tensor.numel * DTYPES[tensor.dtype][0].itemsize


def write_safetensors(path, plan, metadata, family):
    metadata = {k: v for k, v in metadata.items() if k != convert.CHECKSUM_KEY}
    metadata["format"] = "pt"
    metadata["effnet.family"] = family
    if convert.xxhash is None:
        print(f"warning: Python package xxhash not installed: {path} carries no "
              f"{convert.CHECKSUM_KEY} (pip install xxhash)", file=sys.stderr)
    planned = collections.OrderedDict((name, _Planned(t)) for name, t in plan.items())
    convert.write_safetensors(path, planned, metadata, path, "little")


# ----------------------------------------------------------------------------------------------

FORMAT_BY_EXTENSION = {".pth": "pth", ".pt": "pth", ".bin": "pth", ".safetensors": "safetensors"}


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Write effnet weights (canonical names) as a torchvision / timm / lukemelas state "
                    "dict, in torch.save's .pth format or safetensors (no torch needed).")
    parser.add_argument("input", help="effnet weights with canonical names (effnet-train --export, "
                                      "effnet-run --save-weights)")
    parser.add_argument("output", help="file to write: .pth / .pt / .bin or .safetensors")
    parser.add_argument("--names", required=True, choices=FAMILIES,
                        help="whose module names and layout the state dict gets")
    parser.add_argument("--format", choices=("pth", "safetensors"),
                        help="output format (default: from the output's extension)")
    parser.add_argument("--force", action="store_true", help="replace an existing output file")
    return parser.parse_args(argv)


def export(args):
    out, src = args.output, args.input
    if os.path.exists(out) and os.path.exists(src) and os.path.samefile(src, out):
        raise ConvertError(f"{out}: the output names the input file")
    fmt = args.format or FORMAT_BY_EXTENSION.get(os.path.splitext(out)[1].lower())
    if fmt is None:
        raise ConvertError(f"{out}: cannot tell the format from the extension (.pth, .pt, .bin or "
                           f".safetensors); pass --format pth|safetensors")
    if os.path.isdir(out):
        raise ConvertError(f"{out}: is a directory")
    if os.path.lexists(out) and not args.force:
        raise ConvertError(f"{out}: exists (pass --force to replace it)")
    weights = SafetensorsInput(src)
    try:
        weights.verify_checksum()
        model = Canonical(weights)
        plan = state_dict_plan(model, args.names)
        settings_note(weights.metadata, args.names, model.head_channels)
        if fmt == "pth":
            write_pth(out, plan)
        else:
            write_safetensors(out, plan, weights.metadata, args.names)
        count, kept = len(plan), len(model.counters)
        del plan
    finally:
        weights.close()
    print(f"wrote {out}: {count} tensors with {args.names} names ({fmt}), {len(model.blocks)} blocks in "
          f"{model.num_stages} stages; num_batches_tracked {'from the input' if kept else 'set to 0'}")


def main(argv=None):
    args = parse_args(argv)
    try:
        export(args)
    except ConvertError as e:
        print("error: " + str(e).replace("\n", "\\n"), file=sys.stderr)  # always one line
        return 1
    except MemoryError:
        print(f"error: {args.input}: out of memory while exporting", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
