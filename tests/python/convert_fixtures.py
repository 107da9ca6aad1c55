"""Helpers for test_convert.py: a minimal safetensors reader and writers of torch.save-like
files (zip archive and legacy stream), built without torch.

torch pickles name globals such as `torch._utils._rebuild_tensor_v2` that do not exist here, so
the writers use the pure-Python pickler with a dispatch entry that emits a GLOBAL opcode for a
`Global(module, name)` marker instead of importing the real object.
"""
import collections
import io
import json
import pickle
import struct
import zipfile

import numpy as np

# ----------------------------------------------------------------------------------------------
# safetensors reader (independent of the converter's writer)

SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8"}


def read_safetensors(path):
    """Returns ({name: (dtype, shape, raw bytes)}, metadata). Checks that the data offsets tile
    the data section exactly, as the format requires."""
    with open(path, "rb") as f:
        blob = f.read()
    (length,) = struct.unpack_from("<Q", blob, 0)
    header = json.loads(blob[8:8 + length].decode("utf-8"))
    data = blob[8 + length:]
    metadata = header.pop("__metadata__", {})
    tensors = {}
    spans = []
    for name, info in header.items():
        begin, end = info["data_offsets"]
        dtype = info["dtype"]
        count = int(np.prod(info["shape"], dtype=np.int64))
        assert end - begin == count * np.dtype(SAFETENSORS_DTYPES[dtype]).itemsize, name
        tensors[name] = (dtype, list(info["shape"]), data[begin:end])
        spans.append((begin, end))
    spans.sort()
    position = 0
    for begin, end in spans:
        assert begin == position, f"{path}: hole or overlap at byte {begin}"
        position = end
    assert position == len(data), f"{path}: {len(data) - position} bytes after the last tensor"
    return tensors, metadata


def as_array(entry):
    dtype, shape, raw = entry
    return np.frombuffer(raw, dtype=SAFETENSORS_DTYPES[dtype]).reshape(shape)


# ----------------------------------------------------------------------------------------------
# Pickling torch-like objects without torch


class Global:
    """Pickled as GLOBAL `module name`; never called here."""

    def __init__(self, module, name):
        self.module = module
        self.name = name

    def __call__(self, *args):
        raise RuntimeError("a Global marker is only for pickling")


class TorchLikePickler(pickle._Pickler):
    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, stream, persistent_id=None):
        super().__init__(stream, protocol=2)
        self._persistent_id = persistent_id

    def persistent_id(self, obj):
        return self._persistent_id(obj) if self._persistent_id else None

    def _save_global_marker(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
        self.memoize(obj)

    dispatch[Global] = _save_global_marker


def dumps(obj, persistent_id=None):
    stream = io.BytesIO()
    TorchLikePickler(stream, persistent_id).dump(obj)
    return stream.getvalue()


STORAGE_NAMES = {
    np.dtype("float32"): "FloatStorage",
    np.dtype("float64"): "DoubleStorage",
    np.dtype("float16"): "HalfStorage",
    np.dtype("int64"): "LongStorage",
    np.dtype("int32"): "IntStorage",
    np.dtype("uint8"): "ByteStorage",
    np.dtype("bool"): "BoolStorage",
}


class FakeStorage:
    """A typed storage holding `values` (1-D). `bf16=True` marks uint16 values as BFloat16 bits.
    `view` = (view_key, offset, size) makes it a legacy storage view of this root."""

    def __init__(self, key, values, bf16=False, view=None):
        self.key = key
        self.values = np.ascontiguousarray(values).reshape(-1)
        self.type_name = "BFloat16Storage" if bf16 else STORAGE_NAMES[self.values.dtype]
        self.view = view

    def record(self, legacy):
        record = ("storage", Global("torch", self.type_name), self.key, "cpu", self.values.size)
        return record + (self.view,) if legacy else record


class FakeTensor:
    def __init__(self, storage, offset, size, stride, parameter=False):
        self.storage = storage
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())
        self.parameter = parameter

    def __reduce__(self):
        rebuilt = (Global("torch._utils", "_rebuild_tensor_v2"), self.args)
        if not self.parameter:
            return rebuilt
        return (Global("torch._utils", "_rebuild_parameter"),
                (_Reduced(*rebuilt), True, collections.OrderedDict()))


class _Reduced:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def contiguous(key, array, bf16=False):
    """A FakeTensor owning its own storage, row-major."""
    array = np.asarray(array)
    strides = [s // array.itemsize for s in np.ascontiguousarray(array).strides]
    return FakeTensor(FakeStorage(key, array, bf16=bf16), 0, array.shape, strides)


class Payload:
    """Unpickling this calls `module.name(*args)`: what a hostile checkpoint does."""

    def __init__(self, module, name, args):
        self.module, self.name, self.args = module, name, args

    def __reduce__(self):
        return (Global(self.module, self.name), self.args)


def _storages_in(obj):
    """Every FakeStorage reachable from obj (dicts, lists, tuples, tensors), each once."""
    found = {}

    def walk(o):
        if isinstance(o, FakeTensor):
            found.setdefault(o.storage.key, o.storage)
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)

    walk(obj)
    return found


def write_zip_checkpoint(path, obj, folder="archive", omit_storages=(), omit_pickle=False):
    storages = _storages_in(obj)
    pickled = dumps(obj, lambda o: o.record(False) if isinstance(o, FakeStorage) else None)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        if not omit_pickle:
            z.writestr(f"{folder}/data.pkl", pickled)
        z.writestr(f"{folder}/byteorder", "little")
        for key, storage in storages.items():
            if key not in omit_storages:
                z.writestr(f"{folder}/data/{key}", storage.values.astype(storage.values.dtype.newbyteorder("<")).tobytes())
        z.writestr(f"{folder}/version", "3\n")


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def write_legacy_checkpoint(path, obj):
    """torch < 1.6 layout: magic, protocol, sys_info, object, storage keys, then per root
    storage an int64 element count and its bytes."""
    storages = _storages_in(obj)
    out = io.BytesIO()
    out.write(dumps(LEGACY_MAGIC))
    out.write(dumps(1001))
    out.write(dumps({"protocol_version": 1001, "little_endian": True,
                     "type_sizes": {"short": 2, "int": 4, "long": 4}}))
    out.write(dumps(obj, lambda o: o.record(True) if isinstance(o, FakeStorage) else None))
    keys = list(storages)
    out.write(dumps(keys))
    for key in keys:
        values = storages[key].values
        out.write(struct.pack("<q", values.size))
        out.write(values.astype(values.dtype.newbyteorder("<")).tobytes())
    with open(path, "wb") as f:
        f.write(out.getvalue())
