"""effnet.Session on the CPU: logits against real PyTorch (the golden fixtures' float64
eval.logits) and against the effnet-run program on the same weights and input, backbone
features against PyTorch's per-stage outputs, DLPack input, and argument validation."""
import os
import subprocess

import numpy as np
import pytest

import effnet
from conftest import program, read_safetensors, rel, write_safetensors

# The eval forward in float32 against PyTorch's float64 (measured: 3.5e-8 .. 2.6e-7 relative
# norm error over the four fixtures, as the C++ golden tests); 1e-5 is the C++ tests' bound.
LOGITS_TOL = 1e-5
# Features are prefixes of the same forward (C++ tests: worst 4.0e-7, bound 2e-6).
FEATURE_TOL = 2e-6


def test_logits_match_pytorch(golden):
    model = effnet.load_weights(golden.weights)
    s = effnet.Session(model, device="cpu")
    assert (s.device, s.precision, s.height, s.width) == ("cpu", "fp32", None, None)
    logits = s.run(golden.input)
    assert isinstance(logits, np.ndarray) and logits.dtype == np.float32 and logits.shape == (2, 10)
    e = rel(logits, golden.tensors["eval.logits"])
    print("%s: logits vs PyTorch float64, relative error %.2e" % (golden.name, e))
    assert e <= LOGITS_TOL


def test_logits_equal_effnet_run(golden, tmp_path):
    """An independent path to the same engine: the effnet-run program."""
    run = program("effnet-run")
    x = golden.input
    inp, out = str(tmp_path / "in.safetensors"), str(tmp_path / "out.safetensors")
    write_safetensors(inp, {"input": x})
    r = subprocess.run([run, "--weights", golden.weights, "--input", inp, "--output", out, "--device", "cpu"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    ref = read_safetensors(out)[0]["logits"]
    ours = effnet.Session(effnet.load_weights(golden.weights), device="cpu", engine="reference").run(x)
    diff = float(np.max(np.abs(ours - ref)))
    print("%s: logits vs effnet-run, max abs difference %.3g" % (golden.name, diff))
    assert diff <= 1e-6 * max(1.0, float(np.max(np.abs(ref))))


def test_fast_engine_matches_reference(golden):
    """The default CPU engine (the fast path: folded BN, reassociated sums, polynomial exp) against
    the reference engine it is built from, at the fixture's size, one image, and an odd size
    (the session is rebuilt for each). Measured in the C++ tests: <= 3e-6; bound 1e-5."""
    model = effnet.load_weights(golden.weights)
    fast = effnet.Session(model, device="cpu", threads=2)
    ref = effnet.Session(model, device="cpu", engine="reference")
    assert fast.description.startswith("cpu fast path") and "reference" in ref.description
    odd = np.random.default_rng(0).standard_normal((3, 3, 41, 37)).astype(np.float32)
    for x in (golden.input, golden.input[:1], odd):
        e = rel(fast.run(x), ref.run(x))
        print("%s %s: fast vs reference engine %.2e" % (golden.name, x.shape, e))
        assert e <= LOGITS_TOL
    assert "2 threads" in fast.description
    with pytest.raises(ValueError, match="engine"):
        effnet.Session(model, device="cpu", engine="turbo")
    with pytest.raises(ValueError, match="threads"):
        effnet.Session(model, device="cpu", threads=-1)


def test_batch_rows_and_out(tv_tiny):
    s = effnet.Session(effnet.load_weights(tv_tiny.weights), device="cpu", batch=4)
    x = tv_tiny.input
    both = s.run(x)
    for i in range(2):
        one = s.run(x[i:i + 1])
        assert rel(one[0], both[i]) <= 1e-6
    out = np.zeros((2, 10), np.float32)
    r = s.run(x, out=out)
    assert r is out and np.array_equal(out, both)
    # Any size on a CPU session without a fixed one.
    assert s.run(np.zeros((3, 3, 40, 48), np.float32)).shape == (3, 10)


def test_features_match_pytorch(golden):
    if not effnet.has_features:
        pytest.fail("this build has no backbone-feature API")
    model = effnet.load_weights(golden.weights)
    s = effnet.Session(model, device="cpu", features=[0, 1, 2, 3, 4])
    info = s.feature_info
    assert [f["stride"] for f in info] == [2, 4, 8, 16, 32]
    stages = [0, 1, 2, 4, 6]  # timm's features_only stages
    assert [f["name"] for f in info] == ["stage.%d" % k for k in stages]
    maps, logits = s.features(golden.input, with_logits=True)
    assert rel(logits, golden.tensors["eval.logits"]) <= LOGITS_TOL
    worst = 0.0
    for f, fmap, stage in zip(info, maps, stages):
        key = ("eval.act.features.%d" % (stage + 1) if model.family == "torchvision"
               else "eval.act.blocks.%d" % stage)
        ref = golden.tensors[key]
        assert fmap.shape == ref.shape and fmap.shape[1] == f["channels"]
        e = rel(fmap, ref)
        worst = max(worst, e)
        assert e <= FEATURE_TOL, (key, e)
    print("%s: 5 features vs PyTorch, worst relative error %.2e" % (golden.name, worst))


def test_features_only_and_selection(tv_tiny):
    if not effnet.has_features:
        pytest.fail("this build has no backbone-feature API")
    model = effnet.load_weights(tv_tiny.weights)
    full = effnet.Session(model, device="cpu", features_only=True)
    assert full.feature_indices == [0, 1, 2, 3, 4] and full.features_only
    maps = full.features(tv_tiny.input)
    assert len(maps) == 5
    with pytest.raises(effnet.Error, match="features_only"):
        full.run(tv_tiny.input)
    some = effnet.Session(model, device="cpu", features=[1, 4])
    two = some.features(tv_tiny.input)
    assert len(two) == 2
    assert np.array_equal(two[0], maps[1]) and np.array_equal(two[1], maps[4])
    with pytest.raises(effnet.Error, match="5|index|increasing"):
        effnet.Session(model, device="cpu", features=[4, 1])
    with pytest.raises(effnet.Error):
        effnet.Session(model, device="cpu", features=[5])
    with pytest.raises(ValueError, match="no features"):
        effnet.Session(model, device="cpu").features(tv_tiny.input)


class DLPackOnly:
    """An object that offers only the DLPack protocol (no buffer protocol, not NumPy)."""

    def __init__(self, a):
        self._a = a

    def __dlpack__(self, **kwargs):
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


def test_dlpack_input(tv_tiny):
    s = effnet.Session(effnet.load_weights(tv_tiny.weights), device="cpu")
    ref = s.run(tv_tiny.input)
    got = s.run(DLPackOnly(tv_tiny.input))
    assert np.array_equal(got, ref)
    # The output speaks DLPack too.
    assert np.array_equal(np.from_dlpack(got), ref)
    # Read-only input is fine.
    ro = tv_tiny.input.copy()
    ro.flags.writeable = False
    assert np.array_equal(s.run(ro), ref)


@pytest.mark.torch
def test_torch_cpu_tensor(tv_tiny):
    import torch

    s = effnet.Session(effnet.load_weights(tv_tiny.weights), device="cpu")
    y = s.run(torch.from_numpy(tv_tiny.input))
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    assert np.array_equal(y.numpy(), s.run(tv_tiny.input))
    # A tensor that requires grad is read as its data (inference only).
    assert np.array_equal(s.run(torch.from_numpy(tv_tiny.input.copy()).requires_grad_()).numpy(), y.numpy())
    with pytest.raises(ValueError, match="C-contiguous"):
        s.run(torch.from_numpy(tv_tiny.input).permute(0, 1, 3, 2))


def test_bad_arrays(tv_tiny):
    s = effnet.Session(effnet.load_weights(tv_tiny.weights), device="cpu", height=64, width=72)
    x = tv_tiny.input
    with pytest.raises(TypeError, match="float32, got float64"):
        s.run(x.astype(np.float64))
    with pytest.raises(TypeError, match="must be an array"):
        s.run([[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\].*\[2, 4, 64, 72\]"):
        s.run(np.zeros((2, 4, 64, 72), np.float32))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        s.run(np.zeros((3, 64, 72), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        s.run(np.asfortranarray(x))
    with pytest.raises(ValueError, match="C-contiguous"):
        s.run(np.zeros((2, 3, 64, 144), np.float32)[:, :, :, ::2])
    with pytest.raises(ValueError, match="height 64"):
        s.run(np.zeros((1, 3, 32, 72), np.float32))
    with pytest.raises(ValueError, match=r"out must be \[2, 10\]"):
        s.run(x, out=np.zeros((2, 9), np.float32))
    with pytest.raises(TypeError, match="out must be float32"):
        s.run(x, out=np.zeros((2, 10), np.float64))
    with pytest.raises(ValueError, match="stream"):
        s.run(x, stream=0)


def test_bad_session_arguments(tv_tiny):
    m = effnet.load_weights(tv_tiny.weights)
    with pytest.raises(ValueError, match="device must be"):
        effnet.Session(m, device="gpu")
    with pytest.raises(ValueError, match="fp8"):
        effnet.Session(m, device="cpu", precision="fp8")
    with pytest.raises(ValueError, match="needs device='cuda'"):
        effnet.Session(m, device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="batch must be >= 1"):
        effnet.Session(m, device="cpu", batch=0)
    with pytest.raises(TypeError, match="batch must be an integer"):
        effnet.Session(m, device="cpu", batch=1.5)
    with pytest.raises(TypeError, match="effnet.Model"):
        effnet.Session("model.safetensors")


def test_cuda_session_without_gpu_raises_library_error(tv_tiny):
    if effnet.cuda_available():
        pytest.skip("a GPU is available: the CUDA tests cover this session")
    with pytest.raises(effnet.Error) as e:
        effnet.Session(effnet.load_weights(tv_tiny.weights), device="cuda")
    assert "CUDA" in str(e.value) or "cuda" in str(e.value)
    print("Session(device='cuda') here: effnet.Error: %s" % e.value)


def test_non_finite_logits_are_an_error(tv_tiny):
    m = effnet.load_weights(tv_tiny.weights)
    w = m.parameter("head.conv.weight")
    m.set_parameter("head.conv.weight", np.full_like(w, 3e38))
    with pytest.raises(effnet.Error, match="non-finite") as e:
        effnet.Session(m, device="cpu").run(tv_tiny.input)
    print("non-finite logits: effnet.Error: %s" % e.value)


def test_session_copies_the_weights(tv_tiny):
    m = effnet.load_weights(tv_tiny.weights)
    s = effnet.Session(m, device="cpu")
    before = s.run(tv_tiny.input)
    m.set_parameter("classifier.bias", m.parameter("classifier.bias") + 5)
    assert np.array_equal(s.run(tv_tiny.input), before)
    assert s.model is m
    assert os.path.basename(m.path) == "tv_tiny.safetensors"
