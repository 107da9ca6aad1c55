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

Hostile and damaged files: every size the file declares is checked against the file itself and
against the limits below before anything is allocated for it; every failure is one line
`error: ...` naming the file (and member or tensor) and exit status 1, and nothing is left at the
output path. The output carries `effnet.checksum` (XXH3-64 of its data section) when the Python
package xxhash is installed; without it the file is written with a warning and no checksum.
"""
import argparse
import collections
import json
import math
import mmap
import os
import pickle
import struct
import sys
import tempfile
import zipfile

import numpy as np

try:
    import xxhash
except ImportError:  # the conversion still works; the output just carries no checksum
    xxhash = None

# ----------------------------------------------------------------------------------------------
# Limits. Each is checked before the memory it guards is allocated, and named in the error.

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

# The object pickle. A B7 state dict pickles to ~100 KB, a training checkpoint with optimizer
# and EMA state to a few MB; unpickling may take up to ~100x the pickle's size in memory.
MAX_PICKLE_BYTES = 16 * MiB
# The zip central directory, read whole by zipfile (~10x its size in Python objects). torch.save
# writes one member per storage: ~800 for B7, a few thousand for a checkpoint with optimizer state.
MAX_ZIP_ENTRIES = 100_000
MAX_ZIP_DIRECTORY_BYTES = 16 * MiB
# torch.save stores members uncompressed; trained weights deflate by far less than 2x. A member
# declaring more than this ratio (plus some slack for small all-zero buffers) is a zip bomb.
MAX_INFLATE_RATIO = 64
INFLATE_SLACK_BYTES = 64 * KiB
# Output: the largest EfficientNet (L2, 480M parameters) is 1.8 GiB in F32, B7 0.25 GiB.
MAX_OUTPUT_BYTES = 4 * GiB
# Storage bytes read from a zip archive (only storages that converted tensors use are read).
# Twice the output: tensors may view part of a larger storage, never much more.
MAX_READ_BYTES = 2 * MAX_OUTPUT_BYTES
# Safetensors header: the effnet loader refuses larger ones (limits::kMaxHeaderBytes).
MAX_HEADER_BYTES = 100_000_000
# Tensor rank: EfficientNet tensors have at most 4 dims (conv weights); numpy stops at 32/64.
MAX_DIMS = 8
# A size, stride or offset in a tensor record (2^48 elements is far past any real tensor).
MAX_INDEX = 1 << 48
# Arguments of a call in the pickle: torch's rebuild functions take at most 7.
MAX_CALL_ARGS = 8
# Items of a tuple used as a dict key or set element (checkpoints use str and int keys).
MAX_KEY_ITEMS = 16
# How much of a value from the file an error message quotes.
MAX_QUOTED_CHARS = 80


class ConvertError(Exception):
    """An expected failure: printed as one line, exit status 1."""


def quote(value):
    """A one-line, length-bounded rendering of any value read from a file. repr() is not safe
    here: a hostile pickle can build values whose repr is huge, deep or (for ints) refused."""
    text = _render(value, 0)
    return text if len(text) <= MAX_QUOTED_CHARS else text[:MAX_QUOTED_CHARS - 3] + "..."


def _render(value, depth):
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 128 else f"<{value.bit_length()}-bit integer>"
    if isinstance(value, (str, bytes)):
        return repr(value[:MAX_QUOTED_CHARS])  # repr escapes newlines: the message stays one line
    if isinstance(value, (tuple, list)) and depth < 3:
        items = [_render(v, depth + 1) for v in value[:6]] + (["..."] if len(value) > 6 else [])
        inner = ", ".join(items) + ("," if isinstance(value, tuple) and len(value) == 1 else "")
        return ("(%s)" if isinstance(value, tuple) else "[%s]") % inner
    if isinstance(value, (tuple, list, dict, set, frozenset)):
        return f"<{type(value).__name__} of {len(value)}>"
    if isinstance(value, StorageType):
        return f"torch.{value.name}"
    return f"<{type(value).__name__}>"


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
# The effnet loader reads I64 only among integer types; widening is exact.
WIDENED = ("I32", "I16", "I8", "U8", "BOOL")


class Frozen:
    """Objects the unpickler hands out must not be changed by a BUILD opcode."""

    def __setstate__(self, state):
        raise ConvertError(f"pickle tries to set the state of a {type(self).__name__}")


class StorageType(Frozen):
    """Stands in for torch.<X>Storage inside the pickle; never called."""

    def __init__(self, name):
        self.name = name
        self.dtype, self.st_dtype = STORAGE_TYPES[name]


class Storage(Frozen):
    """A typed storage: `numel` elements starting `offset` elements into a root storage. A root's
    bytes come from `load()`, called once, when a tensor is written (legacy files deliver them
    only after the object pickle; zip members are read only when needed)."""

    def __init__(self, key, storage_type, numel, root=None, offset=0):
        self.key = key
        self.type = storage_type
        self.numel = numel
        self.root = root if root is not None else self
        self.offset = offset
        self.load = None  # roots only: () -> bytes-like of exactly numel * itemsize bytes
        self._data = None

    def elements(self, source, byteorder):
        root = self.root
        if root._data is None:
            if root.load is None:
                raise ConvertError(f"{source}: storage {quote(root.key)} has no data")
            root._data = root.load()
        dtype = self.type.dtype.newbyteorder(">" if byteorder == "big" else "<")
        whole = np.frombuffer(root._data, dtype=dtype, count=root.numel)
        return whole[self.offset:self.offset + self.numel]


class LazyTensor(Frozen):
    """What the rebuild functions return: a strided view of a storage, materialised when written."""

    def __init__(self, storage, storage_offset, size, stride):
        self.storage = storage
        self.storage_offset = storage_offset
        self.size = size
        self.stride = stride

    def check(self, name, source):
        """Validates the view against its storage with Python integers (no overflow); returns the
        element count. Nothing is allocated here."""
        storage = self.storage
        numel = math.prod(self.size)
        if numel == 0:
            return 0
        where = (f"{source}: tensor {quote(name)} (size {list(self.size)}, stride "
                 f"{list(self.stride)}, offset {self.storage_offset})")
        # The last element the view touches must lie inside the storage: as_strided does not check.
        last = self.storage_offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if last >= storage.numel:
            raise ConvertError(f"{where} reaches element {last} of storage {quote(storage.key)} "
                               f"which holds {storage.numel}")
        # More elements than the storage holds means overlapping (stride-0, expanded) elements:
        # a state dict never holds such a tensor, and it would multiply the output.
        if numel > storage.numel:
            raise ConvertError(f"{where} has {numel} elements but its storage {quote(storage.key)} "
                               f"holds {storage.numel}: an expanded (stride 0) view, not a state "
                               f"dict tensor")
        return numel

    def materialize(self, source, byteorder):
        """A C-contiguous little-endian array of the view (call check() first)."""
        flat = self.storage.elements(source, byteorder)
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.storage_offset:], shape=self.size,
            strides=[s * itemsize for s in self.stride], writeable=False)
        return np.ascontiguousarray(view).astype(view.dtype.newbyteorder("<"), copy=False)


# Checks made while unpickling: their errors get the file and member from unpickle().
def _check_int(value, what):
    if type(value) is not int or not 0 <= value < MAX_INDEX:
        raise ConvertError(f"bad {what} {quote(value)} in a tensor record (limit 0 <= n < 2^48)")
    return value


def _check_ints(values, what):
    if not isinstance(values, tuple) or len(values) > MAX_DIMS:
        raise ConvertError(f"bad {what} {quote(values)} in a tensor record "
                           f"(a tuple of at most {MAX_DIMS} dims)")
    for v in values:
        _check_int(v, what)
    return values


# ----------------------------------------------------------------------------------------------
# The restricted unpickler
#
# Python's pure unpickler, not the C one: its memo is a dict (the C one allocates an array up to
# any memo index the file names) and its opcodes can be checked one by one. Dict keys and set
# items are limited to scalars and flat tuples of them: hashing a deeply nested tuple recurses in
# C until the stack overflows.

KEY_TYPES = (str, int, float, bool, bytes, type(None))


class _Window:
    """A read-only file over bytes[start:end] (mmap or bytes) without copying it."""

    def __init__(self, data, start=0, end=None):
        self.data = data
        self.pos = start
        self.end = len(data) if end is None else min(end, len(data))

    def read(self, n=-1):
        stop = self.end if n < 0 else min(self.end, self.pos + n)
        chunk = bytes(self.data[self.pos:stop])
        self.pos = stop
        return chunk

    def readline(self):
        newline = self.data.find(b"\n", self.pos, self.end)
        return self.read(self.end - self.pos if newline < 0 else newline + 1 - self.pos)


class _Dispatch(dict):
    def __missing__(self, opcode):
        raise ConvertError(f"unsupported pickle opcode 0x{opcode:02x}")


def _check_key(key):
    if isinstance(key, KEY_TYPES):
        return key
    if isinstance(key, tuple) and len(key) <= MAX_KEY_ITEMS and all(isinstance(k, KEY_TYPES) for k in key):
        return key
    raise ConvertError(f"dict key or set item {quote(key)} is not a string, number or flat tuple")


class RestrictedUnpickler(pickle._Unpickler):
    """Resolves only the globals a state dict needs; storages come from `storage_for(pid)`."""

    dispatch = _Dispatch(pickle._Unpickler.dispatch)
    # Opcodes that instantiate classes or use the copyreg extension registry: a state dict
    # needs none of them (torch pickles tensors and OrderedDicts through REDUCE).
    for _op in (pickle.INST, pickle.OBJ, pickle.NEWOBJ, pickle.NEWOBJ_EX,
                pickle.EXT1, pickle.EXT2, pickle.EXT4):
        del dispatch[_op[0]]
    del _op

    def __init__(self, stream, size, storage_for=None):
        super().__init__(stream)
        self.storage_for = storage_for
        # Items copied by calls (OrderedDict(pairs)): a file must not copy more than its size,
        # or a few bytes (GET, REDUCE) could copy one big list over and over.
        self.copy_budget = size
        self.allowed = {
            ("collections", "OrderedDict"): self._ordered_dict,
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
                f"refusing to load global {quote(module)[1:-1]}.{quote(name)[1:-1]}: a state "
                f"dict needs only tensors and plain containers, and loading must never run code")
        return target

    def persistent_load(self, pid):
        if self.storage_for is None:
            raise ConvertError(f"unexpected persistent id {quote(pid)}")
        return self.storage_for(pid)

    # Opcodes with checks added.
    def load_setitem(self):
        _check_key(self.stack[-2])
        super().load_setitem()

    def load_setitems(self):
        items = self.stack  # the items above the last mark
        for key in items[0::2]:
            _check_key(key)
        super().load_setitems()

    def load_dict(self):
        for key in self.stack[0::2]:
            _check_key(key)
        super().load_dict()

    def load_additems(self):
        for item in self.stack:
            _check_key(item)
        super().load_additems()

    def load_frozenset(self):
        for item in self.stack:
            _check_key(item)
        super().load_frozenset()

    def load_reduce(self):
        args = self.stack[-1]
        if type(args) is not tuple or len(args) > MAX_CALL_ARGS:
            raise ConvertError(f"call with arguments {quote(args)}: expected a tuple of at most "
                               f"{MAX_CALL_ARGS}")
        super().load_reduce()

    def load_build(self):
        # torch sets one attribute (_metadata) on state-dict OrderedDicts; nothing else is built.
        state, inst = self.stack[-1], self.stack[-2]
        if type(inst) is not collections.OrderedDict:
            raise ConvertError(f"pickle sets the state of a {type(inst).__name__}")
        parts = state if isinstance(state, tuple) and len(state) == 2 else (state,)
        for part in parts:
            if part is not None and not (isinstance(part, dict) and all(type(k) is str for k in part)):
                raise ConvertError(f"bad object state {quote(state)}")
        super().load_build()

    def load_bytearray8(self):
        # Python's version allocates the declared length before reading it.
        (length,) = struct.unpack("<Q", self.read(8))
        data = self.read(length)
        if len(data) != length:
            raise EOFError
        self.append(bytearray(data))

    # Globals, same signatures as in torch.
    def _ordered_dict(self, *args):
        if not args:
            return collections.OrderedDict()
        pairs = args[0]
        if len(args) != 1 or not isinstance(pairs, (list, tuple)):
            raise ConvertError(f"OrderedDict called with {quote(args)}")
        self.copy_budget -= len(pairs)
        if self.copy_budget < 0:
            raise ConvertError("pickle copies more items than it holds bytes (OrderedDict calls)")
        result = collections.OrderedDict()
        for pair in pairs:
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise ConvertError(f"OrderedDict item {quote(pair)} is not a pair")
            result[_check_key(pair[0])] = pair[1]
        return result

    def _rebuild_tensor(self, storage, storage_offset, size, stride):
        if not isinstance(storage, Storage):
            raise ConvertError("tensor record without a storage")
        size = _check_ints(size, "size")
        stride = _check_ints(stride, "stride")
        if len(size) != len(stride):
            raise ConvertError(f"tensor size {list(size)} and stride {list(stride)} disagree")
        offset = _check_int(storage_offset, "storage offset")
        return LazyTensor(storage, offset, size, stride)

    def _rebuild_tensor_v2(self, storage, storage_offset, size, stride, requires_grad=False,
                           backward_hooks=None, metadata=None):
        return self._rebuild_tensor(storage, storage_offset, size, stride)

    def _rebuild_parameter(self, data, requires_grad=False, backward_hooks=None):
        if not isinstance(data, LazyTensor):
            raise ConvertError("parameter record without a tensor")
        return data

    def _rebuild_parameter_with_state(self, data, requires_grad, backward_hooks, state):
        return self._rebuild_parameter(data)

    def _device(self, *args):
        if len(args) > 2 or not all(type(a) is int or (type(a) is str and len(a) <= 64) for a in args):
            raise ConvertError(f"torch.device called with {quote(args)}")
        return "device(" + ", ".join(str(a) for a in args) + ")"

    def _size(self, dims=()):
        if not isinstance(dims, (tuple, list)) or len(dims) > MAX_DIMS:
            raise ConvertError(f"torch.Size called with {quote(dims)}")
        return tuple(dims)


RestrictedUnpickler.dispatch.update({
    pickle.SETITEM[0]: RestrictedUnpickler.load_setitem,
    pickle.SETITEMS[0]: RestrictedUnpickler.load_setitems,
    pickle.DICT[0]: RestrictedUnpickler.load_dict,
    pickle.ADDITEMS[0]: RestrictedUnpickler.load_additems,
    pickle.FROZENSET[0]: RestrictedUnpickler.load_frozenset,
    pickle.REDUCE[0]: RestrictedUnpickler.load_reduce,
    pickle.BUILD[0]: RestrictedUnpickler.load_build,
    pickle.BYTEARRAY8[0]: RestrictedUnpickler.load_bytearray8,
})


def unpickle(data, start, source, storage_for=None):
    """Loads one pickle from data[start:] (at most MAX_PICKLE_BYTES of it) with the restricted
    unpickler. Returns (object, end offset); every failure is a ConvertError."""
    window = _Window(data, start, start + MAX_PICKLE_BYTES)
    size = window.end - start
    try:
        obj = RestrictedUnpickler(window, size, storage_for).load()
    except ConvertError as e:  # raised by the checks above, which do not know the file
        raise ConvertError(f"{source}: {e}")
    except EOFError:
        if size == MAX_PICKLE_BYTES:
            raise ConvertError(f"{source}: pickle longer than the limit of {MAX_PICKLE_BYTES} bytes")
        raise ConvertError(f"{source}: truncated file (pickle data ends early)")
    except MemoryError:
        raise ConvertError(f"{source}: out of memory while unpickling")
    except Exception as e:  # malformed opcodes surface as many different exception types
        raise ConvertError(f"{source}: corrupt pickle data ({type(e).__name__}: {quote(str(e))[1:-1]})")
    return obj, window.pos


# ----------------------------------------------------------------------------------------------
# The two container formats

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


def _storage_record(pid):
    """Validates ('storage', storage_type, key, location, numel[, view_metadata])."""
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
        raise ConvertError(f"unsupported persistent id {quote(pid)}")
    storage_type, key, _location, numel = pid[1:5]
    view = pid[5] if len(pid) == 6 else None
    if not isinstance(storage_type, StorageType):
        raise ConvertError(f"storage record without a storage type: {quote(pid)}")
    if not isinstance(key, str):
        raise ConvertError(f"bad storage key {quote(key)}")
    _check_int(numel, "storage size")
    return storage_type, key, numel, view


class Checkpoint:
    """The unpickled object and how to reach its storages' bytes (kept open until written)."""

    def __init__(self, obj, byteorder, resource):
        self.obj = obj
        self.byteorder = byteorder
        self.resource = resource

    def close(self):
        try:
            self.resource.close()
        except BufferError:  # an mmap still viewed by arrays: released when they are
            pass


def _zip_directory(f, path):
    """(entries, central directory bytes) from the end-of-central-directory record, found the
    way zipfile finds it, so both can be checked before zipfile reads the directory whole.
    None when there is no such record (zipfile then reports the archive as corrupt)."""
    f.seek(0, os.SEEK_END)
    size = f.tell()
    tail_start = max(0, size - (22 + 65535))
    f.seek(tail_start)
    tail = f.read()
    at = len(tail) - 22 if tail[-22:-18] == b"PK\x05\x06" and tail[-2:] == b"\0\0" else tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        return None
    (entries,) = struct.unpack_from("<H", tail, at + 10)
    cd_size, cd_offset = struct.unpack_from("<LL", tail, at + 12)
    if entries == 0xFFFF or cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF:
        # zip64: the locator sits just before the record and points at the zip64 record.
        locator = tail_start + at - 20
        if locator >= 0:
            f.seek(locator)
            loc = f.read(20)
            if len(loc) == 20 and loc[:4] == b"PK\x06\x07":
                f.seek(struct.unpack_from("<Q", loc, 8)[0])
                rec = f.read(56)
                if len(rec) == 56 and rec[:4] == b"PK\x06\x06":
                    entries, cd_size = struct.unpack_from("<QQ", rec, 32)
    return entries, cd_size


class ZipMembers:
    """Reads members of a torch.save zip archive, each checked before it is inflated."""

    def __init__(self, path):
        self.path = path
        self.read_total = 0
        try:
            with open(path, "rb") as f:
                directory = _zip_directory(f, path)
            if directory is not None:
                entries, cd_size = directory
                if entries > MAX_ZIP_ENTRIES or cd_size > MAX_ZIP_DIRECTORY_BYTES:
                    raise ConvertError(
                        f"{path}: zip directory of {entries} entries, {cd_size} bytes: past the "
                        f"limits of {MAX_ZIP_ENTRIES} entries, {MAX_ZIP_DIRECTORY_BYTES} bytes")
            self.archive = zipfile.ZipFile(path)
        except ConvertError:
            raise
        except MemoryError:
            raise
        except Exception as e:  # zipfile raises many types on corrupt input
            raise ConvertError(f"{path}: truncated or corrupt zip archive ({type(e).__name__}: "
                               f"{quote(str(e))[1:-1]})")

    def close(self):
        self.archive.close()

    def info(self, name):
        try:
            return self.archive.getinfo(name)
        except KeyError:
            return None

    def read(self, name, limit, exact=None):
        """The member's bytes, refused before inflating if its declared size is past `limit`
        (or differs from `exact`), if it claims an impossible compression ratio, or if it uses
        a method torch never writes; read with a cap, never trusting the declared size alone."""
        info = self.info(name)
        where = f"{self.path}: zip member {quote(name)}"
        if info is None:
            return None
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ConvertError(f"{where}: compression method {info.compress_type} (torch.save "
                               f"stores members; only stored and deflated ones are read)")
        declared = info.file_size
        if exact is not None and declared != exact:
            raise ConvertError(f"{where}: holds {declared} bytes, its storage record needs {exact}")
        if declared > limit:
            raise ConvertError(f"{where}: declares {declared} bytes, past the limit of {limit}")
        if declared > info.compress_size * MAX_INFLATE_RATIO + INFLATE_SLACK_BYTES:
            raise ConvertError(f"{where}: declares {declared} bytes from {info.compress_size} "
                               f"compressed: more than {MAX_INFLATE_RATIO}x, a zip bomb")
        if self.read_total + declared > MAX_READ_BYTES:
            raise ConvertError(f"{where}: reading it would pass the limit of {MAX_READ_BYTES} "
                               f"bytes read from the archive")
        try:
            with self.archive.open(info) as f:
                data = f.read(declared + 1)  # zipfile stops at the declared size; the cap is ours
        except ConvertError:
            raise
        except MemoryError:
            raise
        except Exception as e:
            raise ConvertError(f"{where}: corrupt ({type(e).__name__}: {quote(str(e))[1:-1]})")
        if len(data) != declared:
            raise ConvertError(f"{where}: inflates to {len(data)} bytes, declares {declared}")
        self.read_total += declared
        return data


def read_zip(path):
    """A Checkpoint from a torch.save zip archive."""
    members = ZipMembers(path)
    try:
        names = members.archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            found = "no" if not pickles else "several"
            raise ConvertError(f"{path}: zip archive with {found} <dir>/data.pkl: not a torch.save file")
        prefix = pickles[0][: -len("data.pkl")]

        raw = members.read(prefix + "byteorder", limit=64)
        byteorder = (raw or b"little").decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise ConvertError(f"{path}: unknown byteorder {quote(byteorder)}")

        storages = {}

        def storage_for(pid):
            storage_type, key, numel, _view = _storage_record(pid)
            storage = storages.get(key)
            if storage is None:
                name = prefix + "data/" + key
                info = members.info(name)
                if info is None:
                    raise ConvertError(f"storage {quote(key)} is missing: no {quote(name)} in the archive")
                # torch.save writes exactly the storage's bytes; anything else is not its storage.
                need = numel * storage_type.dtype.itemsize
                if info.file_size != need:
                    raise ConvertError(f"storage {quote(key)}: member {quote(name)} holds "
                                       f"{info.file_size} bytes, {numel} x {storage_type.name} needs {need}")
                storage = Storage(key, storage_type, numel)
                storage.load = lambda: members.read(name, MAX_READ_BYTES, exact=need)
                storages[key] = storage
            elif storage.type.dtype != storage_type.dtype or storage.numel != numel:
                raise ConvertError(f"storage {quote(key)} described two ways")
            return storage

        pickled = members.read(pickles[0], limit=MAX_PICKLE_BYTES)
        obj, _ = unpickle(pickled, 0, f"{path}: {pickles[0]}", storage_for)
        return Checkpoint(obj, byteorder, members)
    except BaseException:
        members.close()
        raise


def read_legacy(path, blob):
    """A Checkpoint from the legacy (pre-1.6) torch.save stream in `blob` (an mmap)."""
    magic, position = unpickle(blob, 0, path)
    if magic != LEGACY_MAGIC:
        raise ConvertError(f"{path}: a pickle, but not a torch.save file (no torch magic number)")
    protocol, position = unpickle(blob, position, path)
    if protocol != LEGACY_PROTOCOL:
        raise ConvertError(f"{path}: unsupported legacy protocol version {quote(protocol)}")
    sys_info, position = unpickle(blob, position, path)
    if not isinstance(sys_info, dict):
        raise ConvertError(f"{path}: bad sys_info record")
    byteorder = "little" if sys_info.get("little_endian", True) else "big"

    roots = {}   # root key -> Storage
    views = {}   # view key -> Storage viewing a root

    def storage_for(pid):
        storage_type, key, numel, view = _storage_record(pid)
        root = roots.get(key)
        if root is None:
            root = roots[key] = Storage(key, storage_type, numel)
        elif root.type.dtype != storage_type.dtype or root.numel != numel:
            raise ConvertError(f"storage {quote(key)} described two ways")
        if view is None:
            return root
        # (view_key, offset, size): a storage that is a slice of the root (torch < 0.4).
        if not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str)):
            raise ConvertError(f"bad storage view record {quote(view)}")
        view_key = view[0]
        offset = _check_int(view[1], "storage view offset")
        size = _check_int(view[2], "storage view size")
        if offset + size > numel:
            raise ConvertError(f"storage view {quote(view_key)} [{offset}, {offset + size}) "
                               f"outside storage {quote(key)} of {numel} elements")
        known = views.get(view_key)
        if known is None:
            known = views[view_key] = Storage(view_key, storage_type, size, root=root, offset=offset)
        elif known.root is not root or (known.offset, known.numel) != (offset, size):
            raise ConvertError(f"storage view {quote(view_key)} described two ways")
        return known

    obj, position = unpickle(blob, position, path, storage_for)
    keys, position = unpickle(blob, position, path)
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise ConvertError(f"{path}: bad storage key list")

    for key in keys:
        root = roots.get(key)
        if root is None:
            raise ConvertError(f"{path}: storage {quote(key)} listed but never used")
        if root.load is not None:
            raise ConvertError(f"{path}: storage {quote(key)} listed twice")
        if position + 8 > len(blob):
            raise ConvertError(f"{path}: truncated file (storage {quote(key)} is missing)")
        (count,) = struct.unpack_from("<q" if byteorder == "little" else ">q", blob, position)
        position += 8
        if count != root.numel:
            raise ConvertError(f"{path}: storage {quote(key)} has {count} elements in the file, "
                               f"{root.numel} in the pickle")
        nbytes = count * root.type.dtype.itemsize
        if position + nbytes > len(blob):
            raise ConvertError(f"{path}: truncated file (storage {quote(key)} needs {nbytes} bytes, "
                               f"{len(blob) - position} left)")
        root.load = (lambda begin, end: lambda: memoryview(blob)[begin:end])(position, position + nbytes)
        position += nbytes
    for key, root in roots.items():
        if root.load is None:
            raise ConvertError(f"{path}: storage {quote(key)} is missing: not in the storage key list")
    return Checkpoint(obj, byteorder, blob)


def load_checkpoint(path):
    """A Checkpoint from a torch.save file of either format (close it when done)."""
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
                blob = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # no copy in memory
        except (OSError, ValueError) as e:
            raise ConvertError(f"{path}: cannot read ({e})")
        try:
            return read_legacy(path, blob)
        except BaseException:
            Checkpoint(None, None, blob).close()
            raise
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


class Planned:
    """A tensor to write: its view, output dtype and shape, and size in bytes."""

    def __init__(self, tensor, st_dtype, numel):
        self.tensor = tensor
        self.st_dtype = st_dtype
        self.shape = list(tensor.size)
        self.nbytes = numel * SAFETENSORS_ITEMSIZE[st_dtype]


SAFETENSORS_ITEMSIZE = {"F64": 8, "I64": 8, "F32": 4, "F16": 2, "BF16": 2}


def plan_tensors(state, source):
    """name -> Planned, 'module.' stripped; every view checked and the total output bounded
    before any tensor is materialised."""
    planned = {}
    skipped = []
    total = 0
    for name, value in state.items():
        if not isinstance(name, str):
            raise ConvertError(f"{source}: state dict key {quote(name)} is not a string")
        if not isinstance(value, LazyTensor):
            skipped.append(name)
            continue
        clean = name[len("module."):] if name.startswith("module.") else name
        if clean in planned:
            raise ConvertError(f"{source}: two tensors named {quote(clean)} once 'module.' is stripped")
        if clean == "__metadata__":
            raise ConvertError(f"{source}: a tensor named '__metadata__', the safetensors metadata key")
        numel = value.check(name, source)
        st_dtype = value.storage.type.st_dtype
        entry = planned[clean] = Planned(value, "I64" if st_dtype in WIDENED else st_dtype, numel)
        total += entry.nbytes
        if total > MAX_OUTPUT_BYTES:
            raise ConvertError(f"{source}: tensors up to {quote(name)} need {total} bytes, past the "
                               f"output limit of {MAX_OUTPUT_BYTES}")
    if skipped:
        print(f"note: skipped {len(skipped)} non-tensor entries ({', '.join(quote(s) for s in skipped[:5])}"
              f"{', ...' if len(skipped) > 5 else ''})", file=sys.stderr)
    if not planned:
        raise ConvertError(f"{source}: the state dict holds no tensors")
    return planned


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
                           f"(first: {', '.join(quote(n) for n in names[:3])}); pass --family")
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
                head is not None and len(head.shape) >= 1 and head.shape[0] >= 2048)
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
CHECKSUM_KEY = "effnet.checksum"
CHECKSUM_PREFIX = "xxh3_64:"  # then 16 lowercase hex digits: XXH3-64, seed 0, of the data section


def _header(planned, order, metadata, checksum):
    """The JSON header padded with spaces to a multiple of 8 (so the data section is aligned)."""
    if checksum is not None:
        metadata = dict(metadata, **{CHECKSUM_KEY: CHECKSUM_PREFIX + checksum})
    header = {"__metadata__": metadata}
    offset = 0
    for name in order:
        entry = planned[name]
        header[name] = {"dtype": entry.st_dtype, "shape": entry.shape,
                        "data_offsets": [offset, offset + entry.nbytes]}
        offset += entry.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return text + b" " * (-len(text) % 8)


def _tensor_bytes(entry, name, source, byteorder):
    """The tensor's bytes as written: little-endian, integer types widened to I64."""
    if entry.nbytes == 0:
        return b""
    array = entry.tensor.materialize(source, byteorder)
    if entry.st_dtype == "I64":
        array = array.astype("<i8", copy=False)
    data = memoryview(array.reshape(-1).view(np.uint8))
    if len(data) != entry.nbytes:  # planned from the same shape: a mismatch is a bug here
        raise ConvertError(f"{source}: tensor {quote(name)}: {len(data)} bytes, planned {entry.nbytes}")
    return data


def write_safetensors(path, planned, metadata, source, byteorder):
    """Header: 8-byte LE length + JSON. Data: 8-byte types first, then 4-, then 2-byte ones, so
    every tensor starts aligned to its element size with no holes. Tensors are materialised one
    at a time. The header is written first with a placeholder checksum of the same length and
    rewritten at the end. Everything goes to a temporary file in the same folder, renamed over
    `path` only once complete; on any failure the temporary file is removed."""
    order = sorted(planned, key=lambda n: DTYPE_ORDER[planned[n].st_dtype])  # stable: file order
    hasher = xxhash.xxh3_64() if xxhash is not None else None
    text = _header(planned, order, metadata, "0" * 16 if hasher else None)
    if len(text) > MAX_HEADER_BYTES:
        raise ConvertError(f"{path}: header of {len(text)} bytes, past the limit of {MAX_HEADER_BYTES} "
                           f"the effnet loader reads")

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
                data = _tensor_bytes(planned[name], name, source, byteorder)
                f.write(data)
                if hasher:
                    hasher.update(data)
            if hasher:
                final = _header(planned, order, metadata, hasher.hexdigest())
                assert len(final) == len(text)
                f.seek(8)
                f.write(final)
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
    if os.path.exists(args.output) and os.path.exists(args.input) and os.path.samefile(args.input, args.output):
        raise ConvertError(f"{args.output}: the output names the input file")
    checkpoint = load_checkpoint(args.input)
    try:
        state, container = find_state_dict(checkpoint.obj, args.input)
        planned = plan_tensors(state, args.input)
        metadata = build_metadata(planned, args)
        if xxhash is None:
            print(f"warning: Python package xxhash not installed: {args.output} carries no "
                  f"{CHECKSUM_KEY} (pip install xxhash)", file=sys.stderr)
        write_safetensors(args.output, planned, metadata, args.input, checkpoint.byteorder)
    finally:
        checkpoint.close()
    where = f" (from '{container}')" if container else ""
    print(f"wrote {args.output}: {len(planned)} tensors{where}, family {metadata['effnet.family']}, "
          f"padding {metadata['padding']}, bn_eps {metadata['bn_eps']}, activation {metadata['activation']}")


def main(argv=None):
    args = parse_args(argv)
    try:
        convert(args)
    except ConvertError as e:
        print("error: " + str(e).replace("\n", "\\n"), file=sys.stderr)  # always one line
        return 1
    except MemoryError:
        print(f"error: {args.input}: out of memory while converting", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
