"""An independent NumPy implementation of the EfficientNet-Lite eval forward, for checking
effnet-classify. Not a test by itself (tests/python/test_classify.py uses it).

It shares nothing with the C++ code: it reads the safetensors file with its own parser, uses the
lukemelas/PyPI tensor names as they are in the file, derives each block from the tensor shapes
plus the stage strides of the EfficientNet paper (Tan & Le 2019, table 1: 1, 2, 2, 2, 1, 2, 1),
and computes in float64: TF "SAME" padding, batch norm with running statistics, ReLU6, no
squeeze-excite (Lite), global average pool, fully connected.
"""
import json
import struct

import numpy as np

STAGE_STRIDES = [1, 2, 2, 2, 1, 2, 1]

_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64}


def read_safetensors(path):
    """-> (dict name -> float64 array, metadata dict)."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", {}) or {}
    data = memoryview(blob)[8 + n:]
    tensors = {}
    for name, info in header.items():
        if info["dtype"] not in _DTYPES:
            continue
        begin, end = info["data_offsets"]
        arr = np.frombuffer(data[begin:end], dtype=_DTYPES[info["dtype"]]).reshape(info["shape"])
        tensors[name] = arr.astype(np.float64)
    return tensors, meta


def same_padding(size, kernel, stride):
    """TF SAME: output ceil(size / stride); the odd pixel of padding goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x, kernel, stride):
    _, _, h, w = x.shape
    top, bottom = same_padding(h, kernel, stride)
    left, right = same_padding(w, kernel, stride)
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))


def conv_dense(x, weight, stride):
    """Full convolution by im2col. x [N, C, H, W], weight [O, C, k, k]."""
    o, c, k, _ = weight.shape
    xp = pad_same(x, k, stride)
    n, _, hp, wp = xp.shape
    ho, wo = (hp - k) // stride + 1, (wp - k) // stride + 1
    cols = np.empty((n, c, k, k, ho, wo))
    for dy in range(k):
        for dx in range(k):
            cols[:, :, dy, dx] = xp[:, :, dy:dy + stride * ho:stride, dx:dx + stride * wo:stride]
    return np.einsum("nckjhw,ockj->nohw", cols, weight, optimize=True)


def conv_pointwise(x, weight):
    return np.einsum("nchw,oc->nohw", x, weight[:, :, 0, 0], optimize=True)


def conv_depthwise(x, weight, stride):
    """weight [C, 1, k, k]."""
    k = weight.shape[-1]
    xp = pad_same(x, k, stride)
    n, c, hp, wp = xp.shape
    ho, wo = (hp - k) // stride + 1, (wp - k) // stride + 1
    out = np.zeros((n, c, ho, wo))
    for dy in range(k):
        for dx in range(k):
            patch = xp[:, :, dy:dy + stride * ho:stride, dx:dx + stride * wo:stride]
            out += patch * weight[None, :, 0, dy, dx, None, None]
    return out


def batch_norm(x, t, prefix, eps):
    scale = t[prefix + ".weight"] / np.sqrt(t[prefix + ".running_var"] + eps)
    shift = t[prefix + ".bias"] - t[prefix + ".running_mean"] * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


def relu6(x):
    return np.clip(x, 0.0, 6.0)


def lite_logits(tensors, meta, x):
    """x: float array [N, 3, H, W] (already normalised) -> logits [N, classes] (float64)."""
    t = tensors
    eps = float(meta.get("bn_eps", "1e-3"))
    x = np.asarray(x, dtype=np.float64)
    x = relu6(batch_norm(conv_dense(x, t["_conv_stem.weight"], 2), t, "_bn0", eps))

    num_blocks = 1 + max(int(k.split(".")[1]) for k in t if k.startswith("_blocks."))
    stage = -1
    for i in range(num_blocks):
        p = "_blocks.%d." % i
        assert p + "_se_reduce.weight" not in t, "squeeze-excite found: not a Lite model"
        dw = t[p + "_depthwise_conv.weight"]
        c_in = t[p + "_expand_conv.weight"].shape[1] if p + "_expand_conv.weight" in t else dw.shape[0]
        c_out = t[p + "_project_conv.weight"].shape[0]
        # A stage starts where the channel count changes (true of every EfficientNet stage).
        first_in_stage = c_in != c_out or i == 0
        if first_in_stage:
            stage += 1
        stride = STAGE_STRIDES[stage] if first_in_stage else 1

        h = x
        if p + "_expand_conv.weight" in t:
            h = relu6(batch_norm(conv_pointwise(h, t[p + "_expand_conv.weight"]), t, p + "_bn0", eps))
        h = relu6(batch_norm(conv_depthwise(h, dw, stride), t, p + "_bn1", eps))
        h = batch_norm(conv_pointwise(h, t[p + "_project_conv.weight"]), t, p + "_bn2", eps)
        if stride == 1 and c_in == c_out:
            h = h + x
        x = h
    assert stage == 6, "expected 7 stages, found %d" % (stage + 1)

    x = relu6(batch_norm(conv_pointwise(x, t["_conv_head.weight"]), t, "_bn1", eps))
    pooled = x.mean(axis=(2, 3))
    return pooled @ t["_fc.weight"].T + t["_fc.bias"]


def softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def load_npy_input(path):
    x = np.load(path)
    assert x.ndim == 4 and x.shape[1] == 3, "unexpected input shape %s" % (x.shape,)
    return x


if __name__ == "__main__":
    import sys

    tensors, meta = read_safetensors(sys.argv[1])
    batch = load_npy_input(sys.argv[2])
    probs = softmax(lite_logits(tensors, meta, batch))
    for row in probs:
        top = np.argsort(-row)[:5]
        print(" ".join("%d:%.4f" % (c, row[c]) for c in top))
