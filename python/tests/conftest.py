"""Shared fixtures of the effnet Python package's tests.

The golden fixtures (tests/data/golden: real PyTorch float64 outputs of four tiny EfficientNets,
see tests/data/golden/README.md) are converted by weights/convert.py once per session. Tests
comparing with the programs find effnet-run / effnet-classify under EFFNET_BINARY_DIR (default
build/) and are skipped when those are not built. Markers: `cuda` (skipped without a usable GPU
in a CUDA build), `torch` (skipped when PyTorch is not importable).
"""
import importlib.util
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

import effnet

SOURCE = os.environ.get("EFFNET_SOURCE_DIR",
                        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BINARY = os.environ.get("EFFNET_BINARY_DIR", os.path.join(SOURCE, "build"))
GOLDEN_DIR = os.path.join(SOURCE, "tests", "data", "golden")
FIXTURES = ["tv_tiny", "timm_tiny", "timm_tf_tiny", "timm_lite_tiny"]

_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "U8": "u1"}
_CODES = {np.dtype("<f4"): "F32", np.dtype("<f8"): "F64", np.dtype("<i8"): "I64"}


def read_safetensors(path):
    """({name: numpy array}, metadata) of a safetensors file (an independent reader)."""
    with open(path, "rb") as f:
        blob = f.read()
    (length,) = struct.unpack_from("<Q", blob, 0)
    header = json.loads(blob[8:8 + length].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    data = blob[8 + length:]
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        out[name] = np.frombuffer(data[begin:end], dtype=_DTYPES[info["dtype"]]).reshape(info["shape"])
    return out, meta


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        raw = a.tobytes()
        header[name] = {"dtype": _CODES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def rel(a, b):
    """||a - b|| / ||b|| in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def convert(pth, out, *extra):
    r = subprocess.run([sys.executable, os.path.join(SOURCE, "weights", "convert.py"), pth, out, *extra],
                       capture_output=True, text=True)
    assert r.returncode == 0, "convert.py %s: %s" % (pth, r.stderr)
    return out


def program(name):
    path = os.path.join(BINARY, "examples", name)
    if not os.access(path, os.X_OK):
        pytest.skip("%s is not built (EFFNET_BINARY_DIR=%s; tools/test.sh builds it)" % (name, BINARY))
    return path


class Golden:
    def __init__(self, name, weights, tensors, meta):
        self.name, self.weights, self.tensors, self.meta = name, weights, tensors, meta

    @property
    def input(self):
        return np.ascontiguousarray(self.tensors["input"], dtype=np.float32)


@pytest.fixture(scope="session")
def golden_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("golden")


_golden_cache = {}


def golden_fixture(name, tmp):
    """The fixture's tensors and its .pth converted with the settings it was made with."""
    if name not in _golden_cache:
        tensors, meta = read_safetensors(os.path.join(GOLDEN_DIR, name + "_golden.safetensors"))
        weights = convert(os.path.join(GOLDEN_DIR, name + ".pth"), str(tmp / (name + ".safetensors")),
                          "--padding", meta["padding"], "--bn-eps", meta["bn_eps"], "--activation", meta["activation"])
        _golden_cache[name] = Golden(name, weights, tensors, meta)
    return _golden_cache[name]


@pytest.fixture(scope="session", params=FIXTURES)
def golden(request, golden_dir):
    return golden_fixture(request.param, golden_dir)


@pytest.fixture(scope="session")
def tv_tiny(golden_dir):
    return golden_fixture("tv_tiny", golden_dir)


def pytest_collection_modifyitems(config, items):
    gpu = effnet.cuda_available()
    torch_ok = importlib.util.find_spec("torch") is not None
    no_gpu = pytest.mark.skip(reason="no usable CUDA GPU (%s; CUDA build: %s)" %
                              (effnet.cuda_device_description(), effnet.built_with_cuda))
    no_torch = pytest.mark.skip(reason="PyTorch is not importable")
    for item in items:
        if "cuda" in item.keywords and not gpu:
            item.add_marker(no_gpu)
        if "torch" in item.keywords and not torch_ok:
            item.add_marker(no_torch)
