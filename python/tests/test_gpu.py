"""The GPU paths: InferenceSession from Python (host arrays and DLPack device arrays without a
host copy), GPU features, and GpuTrainer.step. Marked `cuda` (skipped without a usable GPU in a
CUDA build) and, where PyTorch tensors are used, `torch`. Without CUDA, the trainer's and the
session's constructors raise the library's error (checked here and in test_session.py)."""
import numpy as np
import pytest

import effnet
from conftest import rel

# fp32 on the GPU against PyTorch's float64 (the C++ GPU tests' bound); fp16/bf16 against the
# CPU engine's fp32.
FP32_TOL = 1e-4
HALF_TOL = {"fp16": 2e-2, "bf16": 8e-2}


def test_trainer_without_cuda_raises_library_error(tv_tiny):
    if effnet.cuda_available():
        pytest.skip("a GPU is available: test_trainer_step covers the trainer")
    m = effnet.load_weights(tv_tiny.weights)
    with pytest.raises(effnet.Error) as e:
        effnet.GpuTrainer(m, 2, 64, 72, precision="fp32")
    print("GpuTrainer without CUDA: effnet.Error: %s" % e.value)
    with pytest.raises(ValueError, match="fp8"):
        effnet.GpuTrainer(m, 2, 64, 72, precision="fp8")
    with pytest.raises(ValueError, match="lamb"):
        effnet.GpuTrainer(m, 2, 64, 72, optimizer="lamb")


@pytest.mark.cuda
def test_gpu_session_matches_pytorch(golden):
    m = effnet.load_weights(golden.weights)
    x = golden.input
    s = effnet.Session(m, device="cuda", batch=2, height=x.shape[2], width=x.shape[3])
    assert s.device == "cuda" and s.peak_device_memory > 0
    e = rel(s.run(x), golden.tensors["eval.logits"])
    print("%s: GPU fp32 logits vs PyTorch float64: %.2e" % (golden.name, e))
    assert e <= FP32_TOL
    cpu = effnet.Session(m, device="cpu").run(x)
    for p, tol in HALF_TOL.items():
        h = effnet.Session(m, device="cuda", precision=p, batch=2, height=x.shape[2], width=x.shape[3])
        e = rel(h.run(x), cpu)
        print("%s: GPU %s logits vs the CPU engine: %.2e" % (golden.name, p, e))
        assert e <= tol
    with pytest.raises(ValueError, match="fixed batch"):
        s.run(x[:1])


@pytest.mark.cuda
def test_gpu_features_match_cpu(tv_tiny):
    m = effnet.load_weights(tv_tiny.weights)
    x = tv_tiny.input
    cpu = effnet.Session(m, device="cpu", features=[0, 2, 4]).features(x)
    s = effnet.Session(m, device="cuda", batch=2, height=64, width=72, features=[0, 2, 4])
    gpu, logits = s.features(x, with_logits=True)
    for a, b in zip(gpu, cpu):
        assert a.shape == b.shape and rel(a, b) <= FP32_TOL
    assert rel(logits, tv_tiny.tensors["eval.logits"]) <= FP32_TOL
    only = effnet.Session(m, device="cuda", batch=2, height=64, width=72, features_only=True)
    assert len(only.features(x)) == 5
    with pytest.raises(effnet.Error, match="features_only"):
        only.run(x)


@pytest.mark.cuda
@pytest.mark.torch
def test_torch_cuda_tensors_without_host_copy(tv_tiny):
    import torch

    m = effnet.load_weights(tv_tiny.weights)
    s = effnet.Session(m, device="cuda", batch=2, height=64, width=72)
    ref = s.run(tv_tiny.input)
    x = torch.from_numpy(tv_tiny.input).cuda()
    y = s.run(x)
    assert isinstance(y, torch.Tensor) and y.is_cuda and y.shape == (2, 10)
    assert rel(y.cpu().numpy(), ref) <= 1e-6
    out = torch.empty(2, 10, device="cuda")
    assert s.run(x, out=out) is out
    assert rel(out.cpu().numpy(), ref) <= 1e-6
    # On a side stream, ordered by stream=.
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        x2 = x * 1.0
        y2 = s.run(x2, stream=side.cuda_stream)
        z = y2 + 0
    torch.cuda.synchronize()
    assert rel(z.cpu().numpy(), ref) <= 1e-6
    maps = effnet.Session(m, device="cuda", batch=2, height=64, width=72, features=[1, 3]).features(x)
    assert all(isinstance(t, torch.Tensor) and t.is_cuda for t in maps)
    # A plain DLPack consumer: the generic device array.
    with pytest.raises(ValueError, match="fixed batch"):
        s.run(x[:1])
    with pytest.raises(ValueError, match="device mismatch"):
        effnet.Session(m, device="cpu").run(x)
    with pytest.raises(TypeError, match="float32"):
        s.run(x.half())


@pytest.mark.cuda
def test_trainer_step(tv_tiny):
    m = effnet.load_weights(tv_tiny.weights)
    x = tv_tiny.input
    labels = np.arange(2, dtype=np.int64) % 10
    t = effnet.GpuTrainer(m, 2, 64, 72, precision="fp32", optimizer="sgd", momentum=0.9)
    assert t.precision == "fp32" and not t.dynamic_loss_scale
    losses = [t.step(x, labels, lr=0.05) for _ in range(5)]
    print("GpuTrainer fp32 losses: %s" % ["%.4f" % v for v in losses])
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert t.optimizer_steps == 5 and t.last_step_finite
    before = m.parameter("classifier.weight")
    t.download(m)
    assert not np.array_equal(before, m.parameter("classifier.weight"))
    assert t.logits().shape == (2, 10)
    assert "classifier.weight" in t.gradients()
    amp = effnet.GpuTrainer(effnet.load_weights(tv_tiny.weights), 2, 64, 72)  # amp-fp16, dynamic scale
    assert amp.dynamic_loss_scale and amp.loss_scale == 65536.0
    assert np.isfinite(amp.step(x, labels.astype(np.int32), lr=0.01))
    with pytest.raises(ValueError, match="labels"):
        t.step(x, np.array([0, 10]), lr=0.1)
    with pytest.raises(ValueError, match=r"images must be \[2, 3, 64, 72\]"):
        t.step(x[:1], labels[:1], lr=0.1)
