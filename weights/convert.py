#!/usr/bin/env python3
"""Convert a PyTorch checkpoint (.pth / .pt / .bin) into safetensors, without importing torch.

    python3 weights/convert.py IN.pth OUT.safetensors [--family auto|torchvision|timm|lukemelas]
        [--padding symmetric|tf_same] [--bn-eps E] [--activation silu|relu6] [--preset NAME]
        [--meta KEY=VALUE ...]

Reads both formats torch.save has written:
  - the zip archive (torch >= 1.6): <dir>/data.pkl plus one file <dir>/data/<key> per storage;
  - the legacy stream: magic-number pickle, protocol pickle, sys_info pickle, the object pickle,
    a pickle of storage keys, then per key an 8-byte little-endian element count and raw bytes.

Loading never executes code from the file: the unpickler resolves only the handful of globals a
state dict needs (OrderedDict, torch's tensor-rebuild functions and storage types) and rebuilds
tensors itself with numpy. Any other global is refused with an error naming it.

The output holds every tensor in its original dtype (F64/F32/F16/BF16; integer and bool tensors
become I64, the only integer type the effnet loader reads) and string metadata: format, the
model family, padding rule, BN eps, activation, optional preset and any --meta pairs. The effnet
loader lets this metadata override its own defaults, so the defaults here follow each family:
  torchvision  symmetric, eps 1e-5 (1e-3 for B5..B7, told apart by their 2048+ channel heads), SiLU
  timm         symmetric, eps 1e-5, SiLU; ReLU6 when there is no squeeze-excite (Lite). timm's
               tf_* variants need --padding tf_same --bn-eps 1e-3: names cannot tell them apart.
  lukemelas    tf_same, eps 1e-3, SiLU; ReLU6 when there is no squeeze-excite (Lite)
A lite* --preset implies ReLU6; --padding / --bn-eps / --activation override everything.
"""
import argparse
import collections
import io
import json
import math
import os
import pickle
import struct
import sys
import tempfile
import zipfile
import zlib

import numpy as np


class ConvertError(Exception):
    """An expected failure: printed as one line, exit status 1."""


# ----------------------------------------------------------------------------------------------
# Storages and lazy tensors

# torch storage class -> (numpy dtype, safetensors dtype). BF16 has no numpy type: its raw 16-bit
# patterns travel as uint16 and are written back as BF16.
STORAGE_TYPES = {
    "FloatStorage": (np.dtype("float32"), "F32"),
    "DoubleStorage": (np.dtype("float64"), "F64"),
    "HalfStorage": (np.dtype("float16"), "F16"),
    "BFloat16Storage": (np.dtype("uint16"), "BF16"),
    "LongStorage": (np.dtype("int64"), "I64"),
    "IntStorage": (np.dtype("int32"), "I32"),
    "ShortStorage": (np.dtype("int16"), "I16"),
    "CharStorage": (np.dtype("int8"), "I8"),
    "ByteStorage": (np.dtype("uint8"), "U8"),
    "BoolStorage": (np.dtype("bool"), "BOOL"),
}


class StorageType:
    """Stands in for torch.<X>Storage inside the pickle; never called."""

    def __init__(self, name):
        self.name = name
        self.dtype, self.st_dtype = STORAGE_TYPES[name]


class Storage:
    """A typed storage: `numel` elements starting `offset` elements into a root buffer.

    The bytes of a root arrive after the pickle in the legacy format, so they are attached later
    through `root.data` (a bytes-like object holding at least numel * itemsize bytes)."""

    def __init__(self, key, storage_type, numel, root=None, offset=0):
        self.key = key
        self.type = storage_type
        self.numel = numel
        self.root = root if root is not None else self
        self.offset = offset
        self.data = None  # only on roots

    def elements(self, source, byteorder):
        root = self.root
        if root.data is None:
            raise ConvertError(f"{source}: storage '{root.key}' has no data")
        dtype = self.type.dtype.newbyteorder(">" if byteorder == "big" else "<")
        whole = np.frombuffer(root.data, dtype=dtype, count=root.numel)
        return whole[self.offset:self.offset + self.numel]


class LazyTensor:
    """What the rebuild functions return: a strided view of a storage, materialised at the end
    (legacy files deliver storage bytes only after the object pickle)."""

    def __init__(self, storage, storage_offset, size, stride):
        self.storage = storage
        self.storage_offset = storage_offset
        self.size = size
        self.stride = stride

    def materialize(self, name, source, byteorder):
        storage = self.storage
        numel = math.prod(self.size)
        if numel == 0:
            return np.zeros(self.size, dtype=storage.type.dtype), storage.type.st_dtype
        # The last element the view touches must lie inside the storage: as_strided does not check.
        last = self.storage_offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if last >= storage.numel:
            raise ConvertError(
                f"{source}: tensor '{name}' (size {list(self.size)}, stride {list(self.stride)}, "
                f"offset {self.storage_offset}) reaches element {last} of storage '{storage.key}' "
                f"which holds {storage.numel}")
        flat = storage.elements(source, byteorder)
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.storage_offset:], shape=self.size,
            strides=[s * itemsize for s in self.stride], writeable=False)
        array = np.array(view, dtype=view.dtype.newbyteorder("<"), order="C")  # contiguous copy
        return array, storage.type.st_dtype


def _check_int(value, what, source):
    if type(value) is not int or not 0 <= value < 2**48:
        raise ConvertError(f"{source}: bad {what} {value!r:.100} in a tensor record")
    return value


def _check_ints(values, what, source):
    if not isinstance(values, tuple) or any(type(v) is not int or not 0 <= v < 2**48 for v in values):
        raise ConvertError(f"{source}: bad {what} {values!r:.100} in a tensor record")
    return values


# ----------------------------------------------------------------------------------------------
# The restricted unpickler


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals a state dict needs; storages come from `storage_for(pid)`."""

    def __init__(self, stream, source, storage_for=None):
        super().__init__(stream)
        self.source = source
        self.storage_for = storage_for
        self.allowed = {
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor"): self._rebuild_tensor,
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor_v2,
            ("torch._utils", "_rebuild_parameter"): self._rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): self._rebuild_parameter_with_state,
            ("torch", "device"): self._device,
            ("torch", "Size"): self._size,
        }
        for name in STORAGE_TYPES:
            self.allowed[("torch", name)] = StorageType(name)

    def find_class(self, module, name):
        target = self.allowed.get((module, name))
        if target is None:
            raise ConvertError(
                f"refusing to load global {module}.{name} from {self.source}: a state dict needs "
                f"only tensors and plain containers, and loading must never run code")
        return target

    def persistent_load(self, pid):
        if self.storage_for is None:
            raise ConvertError(f"{self.source}: unexpected persistent id {pid!r}")
        return self.storage_for(pid)

    # Rebuild functions, same signatures as torch._utils.
    def _rebuild_tensor(self, storage, storage_offset, size, stride):
        if not isinstance(storage, Storage):
            raise ConvertError(f"{self.source}: tensor record without a storage")
        size = _check_ints(size, "size", self.source)
        stride = _check_ints(stride, "stride", self.source)
        if len(size) != len(stride):
            raise ConvertError(f"{self.source}: tensor size {size} and stride {stride} disagree")
        offset = _check_int(storage_offset, "storage offset", self.source)
        return LazyTensor(storage, offset, size, stride)

    def _rebuild_tensor_v2(self, storage, storage_offset, size, stride, requires_grad=False,
                           backward_hooks=None, metadata=None):
        return self._rebuild_tensor(storage, storage_offset, size, stride)

    def _rebuild_parameter(self, data, requires_grad=False, backward_hooks=None):
        if not isinstance(data, LazyTensor):
            raise ConvertError(f"{self.source}: parameter record without a tensor")
        return data

    def _rebuild_parameter_with_state(self, data, requires_grad, backward_hooks, state):
        return self._rebuild_parameter(data)

    def _device(self, *args):
        return "device(" + ", ".join(str(a) for a in args) + ")"

    def _size(self, dims=()):
        return tuple(dims)


def unpickle(stream, source, storage_for=None):
    """Loads one pickle from `stream` with the restricted unpickler; every failure is a
    ConvertError."""
    try:
        return RestrictedUnpickler(stream, source, storage_for).load()
    except ConvertError:
        raise
    except EOFError:
        raise ConvertError(f"{source}: truncated file (pickle data ends early)")
    except RecursionError:
        raise ConvertError(f"{source}: pickle nests too deeply")
    except Exception as e:  # malformed opcodes surface as many different exception types
        raise ConvertError(f"{source}: corrupt pickle data ({type(e).__name__}: {e})")


# ----------------------------------------------------------------------------------------------
# The two container formats

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


def _storage_record(pid, source):
    """Validates ('storage', storage_type, key, location, numel[, view_metadata])."""
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
        raise ConvertError(f"{source}: unsupported persistent id {pid!r:.100}")
    storage_type, key, _location, numel = pid[1:5]
    view = pid[5] if len(pid) == 6 else None
    if not isinstance(storage_type, StorageType):
        raise ConvertError(f"{source}: storage record without a storage type: {pid!r:.100}")
    if not isinstance(key, str):
        raise ConvertError(f"{source}: bad storage key {key!r:.100}")
    _check_int(numel, "storage size", source)
    return storage_type, key, numel, view


def read_zip(path):
    """Returns (object, byteorder) from a torch.save zip archive."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise ConvertError(f"{path}: truncated or corrupt zip archive ({e})")
    with archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            found = "no" if not pickles else "several"
            raise ConvertError(f"{path}: zip archive with {found} <dir>/data.pkl: not a torch.save file")
        prefix = pickles[0][: -len("data.pkl")]

        def member(name):
            try:
                return archive.read(name)
            except KeyError:
                return None
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
                raise ConvertError(f"{path}: corrupt zip member {name} ({e})")

        byteorder = (member(prefix + "byteorder") or b"little").decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise ConvertError(f"{path}: unknown byteorder '{byteorder}'")

        storages = {}

        def storage_for(pid):
            storage_type, key, numel, _view = _storage_record(pid, path)
            storage = storages.get(key)
            if storage is None:
                data = member(prefix + "data/" + key)
                if data is None:
                    raise ConvertError(f"{path}: storage '{key}' is missing: no {prefix}data/{key} in the archive")
                need = numel * storage_type.dtype.itemsize
                if len(data) < need:
                    raise ConvertError(f"{path}: storage '{key}' holds {len(data)} bytes, "
                                       f"{numel} x {storage_type.name} needs {need}")
                storage = Storage(key, storage_type, numel)
                storage.data = data
                storages[key] = storage
            elif storage.type.dtype != storage_type.dtype:
                raise ConvertError(f"{path}: storage '{key}' used with two dtypes")
            return storage

        pickled = member(pickles[0])
        obj = unpickle(io.BytesIO(pickled), path, storage_for)
    return obj, byteorder


def read_legacy(path, blob):
    """Returns (object, byteorder) from the legacy (pre-1.6) torch.save stream."""
    stream = io.BytesIO(blob)
    magic = unpickle(stream, path)
    if magic != LEGACY_MAGIC:
        raise ConvertError(f"{path}: a pickle, but not a torch.save file (no torch magic number)")
    protocol = unpickle(stream, path)
    if protocol != LEGACY_PROTOCOL:
        raise ConvertError(f"{path}: unsupported legacy protocol version {protocol!r:.40}")
    sys_info = unpickle(stream, path)
    if not isinstance(sys_info, dict):
        raise ConvertError(f"{path}: bad sys_info record")
    byteorder = "little" if sys_info.get("little_endian", True) else "big"

    roots = {}   # root key -> Storage
    views = {}   # view key -> Storage viewing a root

    def storage_for(pid):
        storage_type, key, numel, view = _storage_record(pid, path)
        root = roots.get(key)
        if root is None:
            root = roots[key] = Storage(key, storage_type, numel)
        elif root.type.dtype != storage_type.dtype or root.numel != numel:
            raise ConvertError(f"{path}: storage '{key}' described two ways")
        if view is None:
            return root
        # (view_key, offset, size): a storage that is a slice of the root (torch < 0.4).
        if not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str)):
            raise ConvertError(f"{path}: bad storage view record {view!r:.100}")
        view_key = view[0]
        offset = _check_int(view[1], "storage view offset", path)
        size = _check_int(view[2], "storage view size", path)
        if offset + size > numel:
            raise ConvertError(f"{path}: storage view '{view_key}' [{offset}, {offset + size}) "
                               f"outside storage '{key}' of {numel} elements")
        if view_key not in views:
            views[view_key] = Storage(view_key, storage_type, size, root=root, offset=offset)
        return views[view_key]

    obj = unpickle(stream, path, storage_for)
    keys = unpickle(stream, path)
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise ConvertError(f"{path}: bad storage key list")

    position = stream.tell()
    for key in keys:
        root = roots.get(key)
        if root is None:
            raise ConvertError(f"{path}: storage '{key}' listed but never used")
        if position + 8 > len(blob):
            raise ConvertError(f"{path}: truncated file (storage '{key}' is missing)")
        (count,) = struct.unpack_from("<q" if byteorder == "little" else ">q", blob, position)
        position += 8
        if count != root.numel:
            raise ConvertError(f"{path}: storage '{key}' has {count} elements in the file, "
                               f"{root.numel} in the pickle")
        nbytes = count * root.type.dtype.itemsize
        if position + nbytes > len(blob):
            raise ConvertError(f"{path}: truncated file (storage '{key}' needs {nbytes} bytes, "
                               f"{len(blob) - position} left)")
        root.data = memoryview(blob)[position:position + nbytes]
        position += nbytes
    for key, root in roots.items():
        if root.data is None:
            raise ConvertError(f"{path}: storage '{key}' is missing: not in the storage key list")
    return obj, byteorder


def load_checkpoint(path):
    """Returns (object, byteorder) from a torch.save file of either format."""
    if not os.path.exists(path):
        raise ConvertError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ConvertError(f"{path}: is a directory, not a checkpoint file")
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        raise ConvertError(f"{path}: cannot read ({e.strerror})")
    if not head:
        raise ConvertError(f"{path}: empty file, not a torch checkpoint")
    if head.startswith(b"PK"):
        return read_zip(path)
    if head.startswith(b"\x80") and b"\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19" in head[:16]:
        try:
            with open(path, "rb") as f:
                blob = f.read()
        except OSError as e:
            raise ConvertError(f"{path}: cannot read ({e.strerror})")
        return read_legacy(path, blob)
    if len(head) > 262 and head[257:262] == b"ustar":
        raise ConvertError(f"{path}: tar-format checkpoint (torch < 0.1.10) is not supported")
    if head.startswith(b"\x80"):
        raise ConvertError(f"{path}: a pickle, but not a torch.save file (no torch magic number)")
    raise ConvertError(f"{path}: not a torch checkpoint (neither a torch.save zip archive nor a legacy torch.save file)")


# ----------------------------------------------------------------------------------------------
# From checkpoint object to named tensors

CONTAINER_KEYS = ("state_dict", "model", "state_dict_ema")


def find_state_dict(obj, source):
    """The dict of tensors: the object itself, or what it holds under a known key."""
    if not isinstance(obj, dict):
        raise ConvertError(f"{source}: top level is a {type(obj).__name__}, not a dict")
    if not any(isinstance(v, LazyTensor) for v in obj.values()):
        for key in CONTAINER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, dict) and any(isinstance(v, LazyTensor) for v in inner.values()):
                return inner, key
        raise ConvertError(f"{source}: no tensors at top level nor under any of "
                           f"{', '.join(repr(k) for k in CONTAINER_KEYS)}")
    return obj, None


def collect_tensors(state, source, byteorder):
    """name -> (contiguous little-endian array, safetensors dtype), 'module.' stripped."""
    tensors = {}
    skipped = []
    for name, value in state.items():
        if not isinstance(name, str):
            raise ConvertError(f"{source}: state dict key {name!r:.60} is not a string")
        if not isinstance(value, LazyTensor):
            skipped.append(name)
            continue
        clean = name[len("module."):] if name.startswith("module.") else name
        if clean in tensors:
            raise ConvertError(f"{source}: two tensors named '{clean}' once 'module.' is stripped")
        array, st_dtype = value.materialize(name, source, byteorder)
        if st_dtype in ("I32", "I16", "I8", "U8", "BOOL"):
            # The effnet loader reads I64 only; widening is exact.
            array, st_dtype = array.astype("<i8"), "I64"
        tensors[clean] = (array, st_dtype)
    if skipped:
        print(f"note: skipped {len(skipped)} non-tensor entries ({', '.join(skipped[:5])}"
              f"{', ...' if len(skipped) > 5 else ''})", file=sys.stderr)
    if not tensors:
        raise ConvertError(f"{source}: the state dict holds no tensors")
    return tensors


# ----------------------------------------------------------------------------------------------
# Family and metadata

FAMILIES = ("torchvision", "timm", "lukemelas")
PRESETS = [f"b{i}" for i in range(8)] + [f"lite{i}" for i in range(5)]
MANAGED_KEYS = ("format", "effnet.family", "padding", "bn_eps", "activation", "preset")


def detect_family(names):
    names = set(names)
    if "features.0.0.weight" in names:
        return "torchvision"
    if "conv_stem.weight" in names and any(n.startswith("blocks.") for n in names):
        return "timm"
    if "_conv_stem.weight" in names and any(n.startswith("_blocks.") for n in names):
        return "lukemelas"
    return None


def normalize_preset(name):
    short = name.lower()
    for prefix in ("efficientnet_", "efficientnet-"):
        if short.startswith(prefix):
            short = short[len(prefix):]
    if short not in PRESETS + ["custom"]:
        raise ConvertError(f"unknown preset '{name}' (expected one of {', '.join(PRESETS)} or custom)")
    return short


def format_float(value):
    return repr(float(value))  # 1e-05, 0.001: what Python and std::stod both read back


def build_metadata(tensors, args):
    names = list(tensors)
    detected = detect_family(names)
    family = detected if args.family == "auto" else args.family
    if family is None:
        raise ConvertError(f"{args.input}: cannot tell the model family from tensor names "
                           f"(first: {', '.join(names[:3])}); pass --family")
    if detected is not None and detected != family:
        print(f"note: names look like {detected}, converting as {family} as asked", file=sys.stderr)
    preset = normalize_preset(args.preset) if args.preset else None

    # Family defaults; explicit options win.
    if family == "lukemelas":
        padding, bn_eps = "tf_same", 1e-3
        has_se = any("_se_reduce" in n for n in names)
        activation = "silu" if has_se else "relu6"
    else:
        padding, bn_eps, activation = "symmetric", 1e-5, "silu"
        if family == "torchvision":
            # torchvision builds B5..B7 with BN eps 1e-3 (weights ported from TF); their heads are
            # the only ones with 2048 or more channels.
            head = tensors.get("features.8.0.weight")
            big = preset in ("b5", "b6", "b7") if preset else (
                head is not None and head[0].shape[0] >= 2048)
            if big:
                bn_eps = 1e-3
        if family == "timm":
            # No squeeze-excite anywhere: an EfficientNet-Lite, which always uses ReLU6.
            if not any(".se." in n for n in names):
                activation = "relu6"
            if args.padding is None:
                print("note: timm names do not tell tf_* variants apart: for those pass "
                      "--padding tf_same --bn-eps 1e-3", file=sys.stderr)
    if preset and preset.startswith("lite"):
        activation = "relu6"
    if args.padding is not None:
        padding = args.padding
    if args.bn_eps is not None:
        bn_eps = args.bn_eps
    if args.activation is not None:
        activation = args.activation

    metadata = {
        "format": "pt",
        "effnet.family": family,
        "padding": padding,
        "bn_eps": format_float(bn_eps),
        "activation": activation,
    }
    if preset:
        metadata["preset"] = preset
    for pair in args.meta or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConvertError(f"--meta expects KEY=VALUE, got '{pair}'")
        if key in MANAGED_KEYS:
            raise ConvertError(f"--meta {key}=...: set '{key}' with its own option")
        metadata[key] = value
    return metadata


# ----------------------------------------------------------------------------------------------
# safetensors writer

DTYPE_ORDER = {"F64": 0, "I64": 0, "F32": 1, "F16": 2, "BF16": 2}


def write_safetensors(path, tensors, metadata):
    """Header: 8-byte LE length + JSON padded with spaces to a multiple of 8. Data: 8-byte types
    first, then 4-, then 2-byte ones, so every tensor starts aligned to its element size with no
    holes. Written to a temporary file in the same folder, then renamed over `path`."""
    order = sorted(tensors, key=lambda n: DTYPE_ORDER[tensors[n][1]])  # stable: keeps file order
    header = {"__metadata__": metadata}
    offset = 0
    for name in order:
        array, st_dtype = tensors[name]
        header[name] = {"dtype": st_dtype, "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ConvertError(f"{path}: folder {folder} does not exist")
    try:
        fd, temp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    except OSError as e:
        raise ConvertError(f"{path}: cannot create a file in {folder} ({e.strerror})")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for name in order:
                f.write(tensors[name][0].tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException as e:
        if os.path.exists(temp):
            os.unlink(temp)
        if isinstance(e, OSError):
            raise ConvertError(f"{path}: cannot write ({e.strerror})")
        raise


# ----------------------------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Convert a PyTorch EfficientNet checkpoint to safetensors (no torch needed).")
    parser.add_argument("input", help="checkpoint written by torch.save (.pth, .pt, .bin)")
    parser.add_argument("output", help="safetensors file to write")
    parser.add_argument("--family", choices=("auto",) + FAMILIES, default="auto")
    parser.add_argument("--padding", choices=("symmetric", "tf_same"))
    parser.add_argument("--bn-eps", type=float, dest="bn_eps")
    parser.add_argument("--activation", choices=("silu", "relu6"))
    parser.add_argument("--preset", help="b0..b7, lite0..lite4 or custom, recorded for the loader to check")
    parser.add_argument("--meta", nargs="+", action="extend", metavar="KEY=VALUE",
                        help="extra metadata, e.g. preprocess.resize=256 preprocess.crop=224")
    args = parser.parse_args(argv)
    if args.bn_eps is not None and not (math.isfinite(args.bn_eps) and args.bn_eps > 0):
        parser.error(f"--bn-eps must be a positive number, got {args.bn_eps}")
    return args


def convert(args):
    obj, byteorder = load_checkpoint(args.input)
    state, container = find_state_dict(obj, args.input)
    tensors = collect_tensors(state, args.input, byteorder)
    metadata = build_metadata(tensors, args)
    write_safetensors(args.output, tensors, metadata)
    where = f" (from '{container}')" if container else ""
    print(f"wrote {args.output}: {len(tensors)} tensors{where}, family {metadata['effnet.family']}, "
          f"padding {metadata['padding']}, bn_eps {metadata['bn_eps']}, activation {metadata['activation']}")


def main(argv=None):
    args = parse_args(argv)
    try:
        convert(args)
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"error: {args.input}: out of memory while converting", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
