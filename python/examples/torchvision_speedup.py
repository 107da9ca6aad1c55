#!/usr/bin/env python3
"""A torchvision EfficientNet run through effnet from Python, timed next to PyTorch.

    pip install .            # effnet (with CUDA where nvcc is), into an environment with torch + torchvision
    python python/examples/torchvision_speedup.py                      # B0, random weights, GPU if usable
    python python/examples/torchvision_speedup.py --weights efficientnet_b0_rwightman-7f5810bc.pth \
        --batch 64 --precision fp16 --device cuda

What it does: builds torchvision's efficientnet_bN (random weights with randomised batch norm,
or the state dict given with --weights), saves its state dict with torch.save, converts it with
weights/convert.py (no torch needed there), loads it with effnet.load_weights, runs both on the
same batch, checks that the logits agree, and prints both times and the speed-up. On the GPU the
batch is a torch CUDA tensor that effnet reads in place through DLPack (no host copy) and the
logits come back as a torch CUDA tensor.

PyTorch runs eagerly in inference mode at the same precision (fp16: model.half()); on the CPU
both use every core. Timings on a shared machine vary: compare runs made back to back.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CONVERT = os.path.join(os.path.dirname(os.path.dirname(HERE)), "weights", "convert.py")
RESOLUTION = {"b0": 224, "b1": 240, "b2": 288, "b3": 300, "b4": 380, "b5": 456, "b6": 528, "b7": 600}
# Relative norm error of effnet's logits against PyTorch's (same weights, same input). fp32:
# a different summation order, ~1e-6 seen; half precision: storage rounding through ~80 layers.
TOL = {"fp32": 1e-4, "fp16": 3e-2, "bf16": 8e-2}


def randomise_bn(torch, model, x, seed):
    """Random BN affine weights, then running statistics from one train-mode pass over x (as
    tools/torch_parity.py): activations stay O(1) and a mis-handled BN would show."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            c = m.num_features
            m.weight.copy_(0.6 + 0.8 * torch.rand(c, generator=g))
            m.bias.copy_(0.1 * torch.randn(c, generator=g))
            m.reset_running_stats()
            m.momentum = None
            m.train()
        model(x)
        for m in bns:
            m.momentum = 0.1
    model.eval()


def timed(fn, reps, sync):
    fn()  # warm-up (and, for effnet's first GPU run, nothing more: the session was built already)
    sync()
    best = float("inf")
    total = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        dt = time.perf_counter() - t0
        best = min(best, dt)
        total += dt
    return total / reps, best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default="b0", choices=sorted(RESOLUTION))
    ap.add_argument("--weights", help="a torchvision state dict (.pth); default: random weights")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    import torchvision

    import effnet

    device = args.device
    if device == "auto":
        device = "cuda" if (torch.cuda.is_available() and effnet.cuda_available()) else "cpu"
    if device == "cpu" and args.precision != "fp32":
        sys.exit("error: --precision %s needs --device cuda (the CPU engine runs fp32)" % args.precision)
    res = RESOLUTION[args.variant]
    torch.manual_seed(args.seed)
    tv = getattr(torchvision.models, "efficientnet_" + args.variant)(weights=None)
    tv.eval()
    x = torch.randn(args.batch, 3, res, res, generator=torch.Generator().manual_seed(args.seed + 1))
    if args.weights:
        tv.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
        source = args.weights
    else:
        randomise_bn(torch, tv, torch.randn(4, 3, res, res, generator=torch.Generator().manual_seed(args.seed + 2)),
                     args.seed + 3)
        source = "random weights (seed %d)" % args.seed

    with tempfile.TemporaryDirectory() as tmp:
        pth, st = os.path.join(tmp, "tv.pth"), os.path.join(tmp, "tv.safetensors")
        torch.save(tv.state_dict(), pth)
        subprocess.run([sys.executable, CONVERT, pth, st, "--preset", args.variant], check=True,
                       stdout=subprocess.DEVNULL)
        model = effnet.load_weights(st, preset=args.variant)

    print("torchvision efficientnet_%s, %s; batch %d at %dx%d, %s %s" %
          (args.variant, source, args.batch, res, res, device, args.precision))
    t_build = time.perf_counter()
    session = effnet.Session(model, device=device, precision=args.precision, batch=args.batch, height=res, width=res)
    t_build = time.perf_counter() - t_build
    print("effnet: %s (session built in %.1f s)" % (session.description, t_build))

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.precision]
    if device == "cuda":
        tv = tv.cuda().to(dtype)
        xt = x.cuda()
        xt_torch = xt.to(dtype)
        sync = torch.cuda.synchronize
        run_effnet = lambda: session.run(xt)  # noqa: E731  torch CUDA tensor in and out, no host copy
    else:
        xt = x.numpy()
        xt_torch = x
        sync = lambda: None  # noqa: E731
        run_effnet = lambda: session.run(xt)  # noqa: E731

    with torch.inference_mode():
        ref = tv(xt_torch).float().cpu().numpy()
        torch_mean, torch_best = timed(lambda: tv(xt_torch), args.reps, sync)
    ours = run_effnet()
    ours = ours.cpu().numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours)
    effnet_mean, effnet_best = timed(run_effnet, args.reps, sync)

    err = float(np.linalg.norm(ours.astype(np.float64) - ref) / np.linalg.norm(ref))
    top1 = float(np.mean(ours.argmax(1) == ref.argmax(1)))
    ok = err <= TOL[args.precision]
    print("logits: relative error %.2e vs PyTorch (bound %.0e), top-1 agreement %.0f%%: %s" %
          (err, TOL[args.precision], 100 * top1, "agree" if ok else "DISAGREE"))
    print("PyTorch %s: %8.2f ms/batch (best %.2f), %8.1f images/s" %
          (torch.__version__, 1e3 * torch_mean, 1e3 * torch_best, args.batch / torch_mean))
    print("effnet  %s: %8.2f ms/batch (best %.2f), %8.1f images/s" %
          (effnet.__version__, 1e3 * effnet_mean, 1e3 * effnet_best, args.batch / effnet_mean))
    print("speed-up: %.2fx (PyTorch time / effnet time, means over %d runs)" % (torch_mean / effnet_mean, args.reps))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
