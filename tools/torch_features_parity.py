#!/usr/bin/env python3
"""Parity of effnet-run --features against timm's features_only and torchvision's stage outputs.

Models (random weights; BatchNorm randomised and calibrated as tools/torch_parity.py does, so a
BN that is skipped or mis-folded shows):
  torchvision efficientnet_b0..b7: the features are the outputs of features.1, .2, .3, .5, .7
    (stages 0, 1, 2, 4, 6), taken with forward hooks on the full model;
  timm efficientnet_b0 and tf_efficientnet_lite0 (TF "SAME" padding, ReLU6, BN eps 1e-3):
    timm.create_model(..., features_only=True) loaded with the full model's weights; its
    feature_info (channels, reductions) is checked against effnet's feature shapes too.
Each model is saved as a .pth, converted with weights/convert.py, and run by
`effnet-run --features 0,1,2,3,4 --features-only --device D --precision P`.

Reference: the PyTorch model in float64 on the CPU. Per feature the relative error
||ours - ref|| / ||ref|| must be <= 1e-4 (fp32), 2e-2 (fp16), 5e-2 (bf16), as in torch_parity.py;
PyTorch's own fp32 error against the same reference is reported alongside for scale.
Writes one JSON line per (model, precision, feature) to stdout and --json-out; exits 1 on any
failure, 3 when the time budget stopped it before every model ran.
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
from torch_parity import (convert_checkpoint, effnet_env, randomise_bn, read_safetensors,  # noqa: E402
                          rel_err, save_input)

TV_RESOLUTION = {"b0": 224, "b1": 240, "b2": 288, "b3": 300, "b4": 380, "b5": 456, "b6": 528, "b7": 600}
# timm models: (resolution, converter arguments)
TIMM = {
    "efficientnet_b0": (224, []),
    "tf_efficientnet_lite0": (224, ["--padding", "tf_same", "--bn-eps", "1e-3", "--activation", "relu6"]),
}
TV_NODES = ["features.1", "features.2", "features.3", "features.5", "features.7"]
TOL = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 5e-2}


def torchvision_model(torch, torchvision, variant):
    """(model, features(x) -> list of 5 tensors, feature_info or None, converter args)."""
    model = getattr(torchvision.models, f"efficientnet_{variant}")(weights=None)

    def features(m, x):
        out = {}
        hooks = [m.get_submodule(n).register_forward_hook(
            lambda _mod, _inp, y, n=n: out.__setitem__(n, y)) for n in TV_NODES]
        try:
            m(x)
        finally:
            for h in hooks:
                h.remove()
        return [out[n] for n in TV_NODES]

    return model, features, None, []


def timm_model(torch, timm, name):
    full = timm.create_model(name, pretrained=False)
    feat = timm.create_model(name, pretrained=False, features_only=True)
    info = {"channels": feat.feature_info.channels(), "reduction": feat.feature_info.reduction()}

    def features(m, x):
        # The features_only model with the (randomised) full model's weights: it has no head.
        f = feat.to(dtype=next(m.parameters()).dtype).eval()  # first: loading keeps f's dtype
        missing, _ = f.load_state_dict(m.state_dict(), strict=False)
        if missing:
            raise RuntimeError(f"timm features_only model lacks weights for {missing[:3]}")
        return list(f(x))

    return full, features, info, TIMM[name][1]


def run_model(torch, args, key, index, build, res, work):
    seed = args.seed * 100 + index
    torch.manual_seed(seed)
    model, features, info, conv_args = build()
    batch = args.batch
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, 3, res, res, generator=gen)
    calib = torch.randn(4, 3, res, res, generator=gen)
    randomise_bn(torch, model, calib, seed + 2)
    with torch.no_grad():
        f32 = [t.numpy().astype(np.float64) for t in features(model.float(), x)]
        m64 = model.double()
        ref = [t.numpy() for t in features(m64, x.double())]
    model = m64.float()
    pth, st = os.path.join(work, "m.pth"), os.path.join(work, "m.safetensors")
    inp = os.path.join(work, "input.safetensors")
    torch.save(model.state_dict(), pth)
    save_input(inp, x.numpy())
    base = {"tool": "features_parity", "model": key, "resolution": res, "batch": batch,
            "reference": "fp64 on the CPU"}
    if info:
        base["timm_feature_info"] = info
    failed = convert_checkpoint(args.convert, pth, st, args.step_timeout) if not conv_args else None
    if conv_args:  # tf_ models: padding / eps / activation the checkpoint does not say
        conv = subprocess.run([sys.executable, args.convert, pth, st] + conv_args, capture_output=True,
                              text=True, timeout=args.step_timeout)
        os.remove(pth)
        if conv.returncode != 0:
            failed = "convert failed: " + ((conv.stderr or conv.stdout).strip().splitlines() or ["?"])[-1][:300]
    rows = []
    if failed:
        return [dict(base, precision=p, passed=False, status=failed) for p in args.precisions]
    for prec in args.precisions:
        out = os.path.join(work, f"out_{prec}.safetensors")
        cmd = [args.effnet_run, "--weights", st, "--input", inp, "--output", out, "--device", args.device,
               "--precision", prec, "--features", "0,1,2,3,4", "--features-only"]
        t0 = time.time()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.step_timeout,
                               env=effnet_env(args.lib_path))
        except subprocess.TimeoutExpired:
            rows.append(dict(base, precision=prec, passed=False, status="effnet-run timed out"))
            continue
        if r.returncode != 0:
            msg = ((r.stderr or r.stdout).strip().splitlines() or ["(no output)"])[-1][:300]
            rows.append(dict(base, precision=prec, passed=False, status=f"effnet-run exit {r.returncode}: {msg}"))
            continue
        got = read_safetensors(out)
        os.remove(out)
        for k in range(5):
            row = dict(base, precision=prec, device=args.device, feature=k, run_s=round(time.time() - t0, 2))
            name = f"feature.{k}"
            if name not in got:
                rows.append(dict(row, passed=False, status=f"no tensor {name} in the output"))
                continue
            ours = got[name].astype(np.float64)
            row.update(shape=list(ours.shape), stride=res // ours.shape[2] if res % ours.shape[2] == 0 else None)
            if ours.shape != ref[k].shape:
                rows.append(dict(row, passed=False, status=f"shape {list(ours.shape)} != PyTorch {list(ref[k].shape)}"))
                continue
            ok = True
            status = "ok"
            if info and (ours.shape[1] != info["channels"][k] or ours.shape[2] * info["reduction"][k] < res):
                ok, status = False, f"timm feature_info says {info['channels'][k]} channels, reduction {info['reduction'][k]}"
            err = rel_err(ours, ref[k])
            ok = ok and err <= TOL[prec] and bool(np.all(np.isfinite(ours)))
            rows.append(dict(row, rel_err=err, tolerance=TOL[prec], torch_fp32_rel_err=rel_err(f32[k], ref[k]),
                             passed=bool(ok), status=status if ok else (status if status != "ok" else "FAILED")))
        if "logits" in got:
            rows.append(dict(base, precision=prec, passed=False, status="--features-only wrote logits"))
    for f in (st, inp):
        if os.path.exists(f):
            os.remove(f)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--effnet-run", required=True, help="path of the effnet-run binary")
    ap.add_argument("--variants", default="b0,b1,b2,b3,b4,b5,b6,b7", help="torchvision variants (or none)")
    ap.add_argument("--timm", default="efficientnet_b0,tf_efficientnet_lite0", help="timm models (or none)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where effnet-run computes")
    ap.add_argument("--precisions", default="fp32", help="fp32 on the CPU; fp32,fp16,bf16 with --device cuda")
    ap.add_argument("--size", type=int, default=0, help="input side (default: each model's resolution)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--convert", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                                      "weights", "convert.py"))
    ap.add_argument("--lib-path", default="", help="prepended to LD_LIBRARY_PATH for effnet-run only")
    ap.add_argument("--budget-s", type=float, default=1800, help="no new model starts after this")
    ap.add_argument("--step-timeout", type=float, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-out")
    args = ap.parse_args()
    variants = [v.strip().lower() for v in args.variants.split(",") if v.strip() and v.strip() != "none"]
    timms = [v.strip() for v in args.timm.split(",") if v.strip() and v.strip() != "none"]
    args.precisions = [p.strip().lower() for p in args.precisions.split(",") if p.strip()]
    for v in variants:
        if v not in TV_RESOLUTION:
            ap.error(f"unknown torchvision variant '{v}' (b0..b7)")
    for t in timms:
        if t not in TIMM:
            ap.error(f"unknown timm model '{t}' ({', '.join(TIMM)})")
    for p in args.precisions:
        if p not in TOL:
            ap.error(f"unknown precision '{p}'")
    if args.device == "cpu" and args.precisions != ["fp32"]:
        ap.error("--device cpu computes in fp32 only (use --precisions fp32)")
    if not os.access(args.effnet_run, os.X_OK):
        print(f"error: effnet-run not found or not executable: {args.effnet_run}", file=sys.stderr)
        return 1

    import torch
    import torchvision
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    jobs = [(f"torchvision efficientnet_{v}", lambda v=v: torchvision_model(torch, torchvision, v),
             args.size or TV_RESOLUTION[v]) for v in variants]
    if timms:
        import timm
        jobs += [(f"timm {t}", lambda t=t: timm_model(torch, timm, t), args.size or TIMM[t][0]) for t in timms]

    t_start = time.time()
    rows, stopped = [], False
    out = open(args.json_out, "w") if args.json_out else None
    with tempfile.TemporaryDirectory(prefix="effnet-features-") as work:
        for i, (key, build, res) in enumerate(jobs):
            if time.time() - t_start > args.budget_s:
                stopped = True
                print(f"note: time budget reached; {key} and later not run", file=sys.stderr)
                break
            for row in run_model(torch, args, key, i, build, res, work):
                rows.append(row)
                line = json.dumps(row)
                print(line, flush=True)
                if out:
                    out.write(line + "\n")
                    out.flush()
    if out:
        out.close()
    failed = [r for r in rows if not r.get("passed")]
    worst = max((r.get("rel_err", 0) for r in rows), default=0)
    print(f"{len(rows) - len(failed)}/{len(rows)} feature checks passed, worst rel err {worst:.2e}", file=sys.stderr)
    return 1 if failed else (3 if stopped else 0)


if __name__ == "__main__":
    sys.exit(main())
