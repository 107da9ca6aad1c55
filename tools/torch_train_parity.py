#!/usr/bin/env python3
"""One training step of effnet against PyTorch (torchvision EfficientNet), every gradient.

For each variant: torchvision efficientnet_bN with random weights and randomised BatchNorm (as
tools/torch_parity.py does), saved, converted with weights/convert.py, then one train-mode
forward (batch statistics, no dropout, no stochastic depth) and backward of the mean
cross-entropy on the same input and targets, by PyTorch in float64 (the reference) and in
float32 (for scale), and by `effnet-run --train --device D --precision P` (on the GPU: the GPU
trainer's step; on the CPU: the reference engine). Compared: loss, logits and the gradient of
every parameter, every BN running mean and variance after the train-mode forward moved them
(momentum update with the batch statistics), and every parameter after one SGD step
(`effnet-run --lr`: momentum 0.9, weight decay 1e-4 on conv and linear weights only, as
torch.optim.SGD with two parameter groups), by relative norm error ||ours - ref|| / ||ref|| per
tensor. An update is compared as the step it took, (p_before - p_after) / lr, so the unchanged
bulk of p does not hide it; a tensor whose step is below float32's resolution of p is allowed 4x
the error of rounding the exact result to float32.

Biases of the batch norms that feed a train-mode batch norm through a 1x1 convolution (every
project BN) have an exactly zero gradient (the next BN removes per-channel constants), so their
reference is rounding noise: a bias whose reference gradient is below 1e-3 of its module's
weight gradient is measured against that weight gradient's norm instead.

Bounds (fp32): loss and logits 1e-4; every gradient 1e-3 and the median gradient 1e-4; every
running statistic 1e-4 (they are 0.9 x the old value + 0.1 x a batch mean or variance, which
fp32 gets to ~1e-6). The GPU
tests measured the B0 fp32 step against the CPU engine at worst 6.1e-5 (median 2.9e-5) at batch
2; train-mode BN divides by batch statistics, so the bound leaves 16x. AMP (fp16/bf16) is
reported against the float64 reference with PyTorch autocast's own error next to it, and
bounded by 10x autocast's error in the same measure (tools/amp_error_study.py explains why
AMP gradients at small batch are tens of percent off).

Prints a table, writes JSON lines (--json-out), exits 1 on any failure.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_parity import (RESOLUTION, convert_checkpoint, effnet_env, randomise_bn, read_safetensors,  # noqa: E402
                          rel_err, save_input, write_safetensors)

FP32_BOUNDS = {"loss": 1e-4, "logits": 1e-4, "worst_grad": 1e-3, "median_grad": 1e-4, "worst_running": 1e-4,
               "worst_update": 1e-3}
LR, MOMENTUM, WEIGHT_DECAY = 0.5, 0.9, 1e-4  # effnet-run --lr's optimizer (examples/run/main.cpp)
AMP_FACTOR = 10.0  # AMP: at most this many times PyTorch autocast's own error, per measure


def train_step(torch, model, x, target, dtype, device, autocast=None):
    """Loss, logits, {name: grad} and {name: running statistic after the forward} of one
    train-mode step of `model` (parameters not updated)."""
    m = model.to(device=device, dtype=dtype)
    m.train()
    for mod in m.modules():  # no dropout, no stochastic depth: deterministic as effnet-run
        if isinstance(mod, torch.nn.Dropout) or type(mod).__name__ == "StochasticDepth":
            mod.eval()
    m.zero_grad(set_to_none=True)
    xx = x.to(device=device, dtype=dtype)
    if autocast is not None:
        with torch.autocast(device_type=device, dtype=autocast):
            logits = m(xx)
        logits = logits.float()
    else:
        logits = m(xx)
    loss = torch.nn.functional.cross_entropy(logits, target.to(device))
    loss.backward()
    # Copies: in float64 on the CPU .numpy() would share the buffers, which the caller's next
    # load_state_dict overwrites.
    grads = {n: p.grad.detach().double().cpu().numpy().copy() for n, p in m.named_parameters()
             if p.grad is not None}
    running = {n: b.detach().double().cpu().numpy().copy() for n, b in m.named_buffers()
               if n.endswith(("running_mean", "running_var"))}
    return float(loss.detach().double().cpu()), logits.detach().double().cpu().numpy(), grads, running


def sgd_reference(torch, grads, params):
    """{name: parameter after one float64 SGD step}: PyTorch's SGD, decay on tensors of rank > 1
    (conv and linear weights; not BN parameters nor biases, effnet's default rule)."""
    ps = {n: torch.tensor(p, dtype=torch.float64, requires_grad=True) for n, p in params.items() if n in grads}
    for n, p in ps.items():
        p.grad = torch.tensor(grads[n], dtype=torch.float64)
    opt = torch.optim.SGD([{"params": [p for p in ps.values() if p.dim() > 1], "weight_decay": WEIGHT_DECAY},
                           {"params": [p for p in ps.values() if p.dim() <= 1], "weight_decay": 0.0}],
                          lr=LR, momentum=MOMENTUM)
    opt.step()
    return {n: p.detach().numpy().copy() for n, p in ps.items()}


def update_errors(ours, ref, before):
    """(worst, median, worst tensor) of the steps taken, (before - after) / LR, with the float32
    floor described in the module docstring and grad_errors' denominators for the zero-gradient
    BN biases."""
    step_ref = {n: (before[n] - r) / LR for n, r in ref.items()}
    errs = {}
    for name, r in ref.items():
        o = ours.get(name)
        if o is None or o.size != r.size:
            errs[name] = float("inf")
            continue
        o = np.asarray(o, np.float64).reshape(r.shape)
        err = np.linalg.norm((before[name] - o) / LR - step_ref[name])
        floor = np.linalg.norm((before[name] - r.astype(np.float32).astype(np.float64)) / LR - step_ref[name])
        denom = np.linalg.norm(step_ref[name])
        if name.endswith("bias"):
            w = step_ref.get(name[: -len("bias")] + "weight")
            if w is not None and denom < 1e-3 * np.linalg.norm(w):
                denom = np.linalg.norm(w)
        errs[name] = 0.0 if err <= 4 * floor else (float(err / denom) if denom > 0 else float("inf"))
    worst = max(errs, key=errs.get)
    return errs[worst], float(np.median(list(errs.values()))), worst


def running_errors(ours, ref):
    """(worst relative error, its tensor) over the running statistics; a missing one is inf."""
    errs = {}
    for name, r in ref.items():
        o = ours.get(name)
        errs[name] = float("inf") if o is None or o.size != r.size else rel_err(o.reshape(r.shape), r)
    worst = max(errs, key=errs.get)
    return errs[worst], worst


def grad_errors(ours, ref):
    """{name: relative error} with the zero-gradient BN biases measured against their weight."""
    errs = {}
    for name, r in ref.items():
        if name not in ours:
            errs[name] = float("inf")
            continue
        o = np.asarray(ours[name], np.float64).reshape(r.shape) if ours[name].size == r.size else None
        if o is None:
            errs[name] = float("inf")
            continue
        denom = np.linalg.norm(r)
        if name.endswith("bias"):
            w = ref.get(name[: -len("bias")] + "weight")
            if w is not None and denom < 1e-3 * np.linalg.norm(w):
                denom = np.linalg.norm(w)
        d = np.linalg.norm(o - r)
        errs[name] = float(d / denom) if denom > 0 and np.isfinite(d) else (0.0 if d == 0 else float("inf"))
    return errs


def summarise(errs):
    vals = np.array(list(errs.values()))
    worst = max(errs, key=errs.get)
    return {"worst_grad": float(vals.max()), "worst_grad_name": worst, "median_grad": float(np.median(vals)),
            "grads": len(vals)}


def run_variant(torch, torchvision, args, variant, index, work):
    res = args.resolution or RESOLUTION[variant]
    seed = args.seed * 100 + index
    torch.manual_seed(seed)
    model = getattr(torchvision.models, f"efficientnet_{variant}")(weights=None)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(args.batch, 3, res, res, generator=gen)
    calib = torch.randn(4, 3, res, res, generator=gen)
    target = torch.randint(0, 1000, (args.batch,), generator=gen)
    dev = args.device
    randomise_bn(torch, model.to(dev), calib.to(dev), seed + 2)
    model = model.cpu()
    pth = os.path.join(work, f"{variant}.pth")
    st = os.path.join(work, f"{variant}.safetensors")
    inp = os.path.join(work, f"{variant}_input.safetensors")
    tgt = os.path.join(work, f"{variant}_target.safetensors")
    torch.save(model.state_dict(), pth)
    save_input(inp, x.numpy())
    write_safetensors(tgt, {"target": target.numpy().astype(np.int64)})
    state = {k: v.clone() for k, v in model.state_dict().items()}

    t0 = time.time()
    before = {n: p.detach().double().cpu().numpy().copy() for n, p in model.named_parameters()}
    ref_loss, ref_logits, ref_grads, ref_running = train_step(torch, model, x, target, torch.float64, dev)
    ref_after = sgd_reference(torch, ref_grads, before)
    model.load_state_dict(state)  # the train-mode pass moved the running statistics
    f32 = train_step(torch, model, x, target, torch.float32, dev)
    torch_s = time.time() - t0
    f32_errs = grad_errors(f32[2], ref_grads)
    base = {"tool": "train_parity", "variant": variant, "resolution": res, "batch": args.batch,
            "reference": f"PyTorch fp64 on {dev}", "torch_s": round(torch_s, 2),
            "torch_fp32": dict(loss=rel_err([f32[0]], [ref_loss]), logits=rel_err(f32[1], ref_logits),
                               **summarise(f32_errs), worst_running=running_errors(f32[3], ref_running)[0])}
    failed = convert_checkpoint(args.convert, pth, st, args.step_timeout)
    if failed:
        return [dict(base, precision=p, passed=False, status=failed) for p in args.precisions]
    env = effnet_env(args.lib_path)
    rows = []
    for prec in args.precisions:
        out = os.path.join(work, f"{variant}_{prec}_train.safetensors")
        cmd = [args.effnet_run, "--weights", st, "--input", inp, "--output", out, "--train", "--target", tgt,
               "--device", args.effnet_device, "--precision", prec, "--lr", str(LR)]
        t1 = time.time()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.step_timeout, env=env)
        except subprocess.TimeoutExpired:
            rows.append(dict(base, precision=prec, passed=False, status=f"effnet-run timed out ({args.step_timeout} s)"))
            continue
        row = dict(base, precision=prec, run_s=round(time.time() - t1, 2), effnet_device=args.effnet_device)
        if r.returncode != 0:
            msg = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["(no output)"]
            rows.append(dict(row, passed=False, status=f"effnet-run exit {r.returncode}: {msg[0][:300]}"))
            continue
        t = read_safetensors(out)
        os.remove(out)
        ours = {k[len("grad."):]: v for k, v in t.items() if k.startswith("grad.") and k != "grad.input"}
        errs = grad_errors(ours, ref_grads)
        worst_running, worst_running_name = running_errors(
            {k[len("running."):]: v for k, v in t.items() if k.startswith("running.")}, ref_running)
        worst_update, median_update, worst_update_name = update_errors(
            {k[len("param."):]: v for k, v in t.items() if k.startswith("param.")}, ref_after, before)
        meas = dict(loss=rel_err(t["loss"].reshape(-1)[:1], [ref_loss]), logits=rel_err(t["logits"], ref_logits),
                    **summarise(errs), worst_running=worst_running, worst_update=worst_update)
        row.update(worst_running_name=worst_running_name, median_update=median_update,
                   worst_update_name=worst_update_name)
        if prec == "fp32":
            bounds = FP32_BOUNDS
        else:  # PyTorch autocast's own error in the same measures, times AMP_FACTOR
            model.load_state_dict(state)
            ac = train_step(torch, model, x, target, torch.float32, dev,
                            autocast=torch.float16 if prec == "fp16" else torch.bfloat16)
            ac_errs = grad_errors(ac[2], ref_grads)
            ac_meas = dict(loss=rel_err([ac[0]], [ref_loss]), logits=rel_err(ac[1], ref_logits), **summarise(ac_errs),
                           worst_running=running_errors(ac[3], ref_running)[0],
                           worst_update=update_errors(sgd_reference(torch, ac[2], before), ref_after, before)[0])
            row["torch_autocast"] = ac_meas
            bounds = {k: max(AMP_FACTOR * ac_meas[k], FP32_BOUNDS[k]) for k in FP32_BOUNDS}
        ok = all(meas[k] <= bounds[k] for k in bounds) and meas["grads"] == len(ref_grads)
        rows.append(dict(row, **meas, bounds=bounds, passed=bool(ok), status="ok" if ok else "FAILED"))
    for f in (st, inp, tgt):
        if os.path.exists(f):
            os.remove(f)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--effnet-run", required=True, help="path of the effnet-run binary")
    ap.add_argument("--variants", default="b0")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="where PyTorch runs")
    ap.add_argument("--effnet-device", default=None, choices=["cuda", "cpu"],
                    help="effnet-run's --device (default: --device)")
    ap.add_argument("--precisions", default="fp32", help="fp32 and, with --effnet-device cuda, fp16 / bf16 (AMP)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--resolution", type=int, default=0, help="default: the variant's native resolution")
    ap.add_argument("--convert", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "weights", "convert.py"))
    ap.add_argument("--lib-path", default="", help="prepended to LD_LIBRARY_PATH for effnet-run only")
    ap.add_argument("--step-timeout", type=float, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-out")
    args = ap.parse_args()
    args.precisions = [p for p in args.precisions.split(",") if p]
    args.effnet_device = args.effnet_device or args.device
    if args.batch < 2:
        ap.error("--batch must be >= 2 (train-mode batch norm needs more than one value per channel)")
    import torch
    import torchvision
    if args.device == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for i, v in enumerate(args.variants.split(",")):
            rows += run_variant(torch, torchvision, args, v, i, work)
    print(f"{'model':6} {'prec':5} {'loss':>9} {'logits':>9} {'worst grad':>11} {'median':>9}  {'worst tensor':40} "
          f"{'running':>9} {'update':>9} result")
    for r in rows:
        if "worst_grad" in r:
            print(f"{r['variant']:6} {r['precision']:5} {r['loss']:9.2e} {r['logits']:9.2e} {r['worst_grad']:11.2e} "
                  f"{r['median_grad']:9.2e}  {r['worst_grad_name'][:40]:40} {r['worst_running']:9.2e} "
                  f"{r['worst_update']:9.2e} {r['status']}")
        else:
            print(f"{r['variant']:6} {r['precision']:5} {r['status']}")
        t = r.get("torch_fp32")
        if t:
            print(f"{'':6} {'(PyTorch fp32)':14} loss {t['loss']:.1e}, logits {t['logits']:.1e}, "
                  f"worst grad {t['worst_grad']:.1e}, median {t['median_grad']:.1e}, running {t['worst_running']:.1e}")
    if args.json_out:
        with open(args.json_out, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return 0 if rows and all(r.get("passed") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
