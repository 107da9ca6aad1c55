"""effnet.Model: loading (the converter's output of a real PyTorch state dict), parameters as
NumPy copies, save / reload, and the library's errors as effnet.Error."""
import os

import numpy as np
import pytest

import effnet


def test_version_and_flags():
    assert effnet.__version__ == "0.1.0"
    assert isinstance(effnet.cuda_available(), bool)
    assert isinstance(effnet.cuda_device_description(), str)
    assert "b0" in effnet.preset_names() and "lite4" in effnet.preset_names()
    assert issubclass(effnet.Error, RuntimeError)


def test_load_golden(golden):
    m = effnet.load_weights(golden.weights)
    assert m.path == golden.weights
    assert m.num_classes == 10
    assert m.padding == golden.meta["padding"]
    assert m.activation == golden.meta["activation"]
    assert m.bn_eps == pytest.approx(float(golden.meta["bn_eps"]))
    assert m.family in ("torchvision", "timm")
    assert m.num_stages == 7
    names = m.parameter_names
    assert names[0] == "stem.conv.weight" and names[-1] == "classifier.bias"
    # Every parameter equals the PyTorch state dict's (golden param.<source name>), bit for bit.
    src = m.source_names
    for name in names:
        ref = golden.tensors["param." + src[name]]
        got = m.parameter(name)
        assert got.dtype == np.float32 and got.shape == ref.shape, name
        assert np.array_equal(got, ref), name
    # Copies: writing to one changes nothing in the model.
    w = m.parameter("classifier.bias")
    w[:] = 123.0
    assert not np.array_equal(m.parameter("classifier.bias"), w)
    params = m.parameters()
    assert list(params) == names


def test_save_reload_and_set_parameter(tv_tiny, tmp_path):
    m = effnet.load_weights(tv_tiny.weights)
    b = m.parameter("classifier.bias") + 1.0
    m.set_parameter("classifier.bias", b)
    assert np.array_equal(m.parameter("classifier.bias"), b)
    out = tmp_path / "saved.safetensors"
    m.save(str(out))
    again = effnet.load_weights(out)
    assert again.family == "effnet"
    for name in m.parameter_names:
        assert np.array_equal(again.parameter(name), m.parameter(name)), name
    with pytest.raises(ValueError, match=r"has shape \[10\], got \[11\]"):
        m.set_parameter("classifier.bias", np.zeros(11, np.float32))
    with pytest.raises(TypeError, match="float32"):
        m.set_parameter("classifier.bias", np.zeros(10, np.float64))
    bad = np.zeros(10, np.float32)
    bad[3] = np.nan
    with pytest.raises(effnet.Error, match="not a valid value"):
        m.set_parameter("classifier.bias", bad)
    with pytest.raises(effnet.Error, match="no.such"):
        m.parameter("no.such")


def test_preprocess_property(tv_tiny):
    m = effnet.load_weights(tv_tiny.weights)
    p = m.preprocess
    assert (p.resize, p.crop, p.interpolation) == (256, 224, "bilinear")
    assert p.mean == pytest.approx((0.485, 0.456, 0.406))
    p.resize, p.crop = 40, 32
    m.preprocess = p
    assert (m.preprocess.resize, m.preprocess.crop) == (40, 32)
    p.interpolation = "nearest"
    with pytest.raises(effnet.Error, match="nearest"):
        m.preprocess = p


def test_random_preset():
    m = effnet.Model.random("b0", num_classes=7, seed=1)
    assert (m.name, m.num_classes, m.resolution, m.num_blocks) == ("b0", 7, 224, 16)
    assert m.num_parameters == sum(int(np.prod(a.shape)) for n, a in m.parameters().items() if "running" not in n)
    assert "Model b0" in repr(m)
    c = m.copy()
    c.set_parameter("classifier.bias", np.ones(7, np.float32))
    assert not np.array_equal(c.parameter("classifier.bias"), m.parameter("classifier.bias"))
    with pytest.raises(effnet.Error, match="b9"):
        effnet.Model.random("b9")


def test_load_errors(tmp_path, tv_tiny):
    missing = str(tmp_path / "nope.safetensors")
    with pytest.raises(effnet.Error) as e:
        effnet.load_weights(missing)
    assert missing in str(e.value)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(effnet.Error) as e:
        effnet.load_weights(junk)
    assert str(junk) in str(e.value)
    with pytest.raises(effnet.Error, match="b0"):
        effnet.load_weights(tv_tiny.weights, preset="b0")
    with pytest.raises(effnet.Error, match="sideways"):
        effnet.load_weights(tv_tiny.weights, padding="sideways")
    m = effnet.load_weights(tv_tiny.weights, padding="tf_same", bn_eps=1e-3, activation="relu6")
    assert (m.padding, m.activation) == ("tf_same", "relu6")
    assert m.bn_eps == pytest.approx(1e-3)
    assert os.path.exists(tv_tiny.weights)
