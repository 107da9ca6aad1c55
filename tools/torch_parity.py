#!/usr/bin/env python3
"""Parity of effnet-run against torchvision for EfficientNet-B0..B7 (needs torch and a GPU).

For each variant: torchvision efficientnet_bN with random weights and randomised BatchNorm
(random affine weights, then running statistics calibrated on random data with them, all
seeded, so a BN that is skipped or mis-folded shows), saved as a .pth, converted with
weights/convert.py, run by `effnet-run --weights W --input IN --output OUT --device cuda
--precision P`, and compared with PyTorch on the same input (batch 2 for B0..B3, 1 for B4..B7,
at the native resolution).

Reference: the model in float64 on the GPU (float64 on the CPU if that fails).
Pass criteria, on the logits, relative error ||ours - ref|| / ||ref||:
  fp32: <= 1e-4. True fp32 with a different summation order lands near 1e-6; a TF32 path or a
        wrong BN eps (1e-5 vs 1e-3 moves every normalised value by ~5e-4) does not pass.
  fp16: <= 2e-2 (fp16 storage, fp32 accumulation, ~50-100 layers deep) and the same top-5
        classes for every image. Random weights give near-tied logits, so a top-5 difference is
        excused (and reported) only where every class that differs lies within 4 sigma of the
        reference's 5th/6th boundary, sigma = robust RMS error of that image's logits.
Prints a table, writes JSON lines (--json-out), exits 1 on any failure, 3 if the time budget
stopped it before every variant ran.
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

RESOLUTION = {"b0": 224, "b1": 240, "b2": 288, "b3": 300, "b4": 380, "b5": 456, "b6": 528, "b7": 600}
TOL = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 5e-2}

# ---------------------------------------------------------------------------------------------
# A tiny safetensors reader/writer (used when the safetensors package is not importable).

_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64,
           "I32": np.int32, "U8": np.uint8, "I8": np.int8}


def write_safetensors(path, tensors, metadata=None):
    header, offset, blobs = {}, 0, []
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        code = {np.dtype(v): k for k, v in _DTYPES.items()}[arr.dtype]
        blob = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": code, "shape": list(arr.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError(f"{path}: header length {n} exceeds the file")
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] == "BF16":
            raw = np.frombuffer(data, dtype="<u2", offset=8 + n + info["data_offsets"][0],
                                count=(info["data_offsets"][1] - info["data_offsets"][0]) // 2)
            arr = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            dt = np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
            b, e = info["data_offsets"]
            arr = np.frombuffer(data, dtype=dt, offset=8 + n + b, count=(e - b) // dt.itemsize)
        out[name] = arr.reshape(info["shape"])
    return out


def save_input(path, x):
    try:
        from safetensors.numpy import save_file
        save_file({"input": np.ascontiguousarray(x, dtype=np.float32)}, path)
    except ImportError:
        write_safetensors(path, {"input": np.ascontiguousarray(x, dtype=np.float32)})


# ---------------------------------------------------------------------------------------------
# Comparison


def rel_err(a, ref):
    a = np.asarray(a, np.float64)
    ref = np.asarray(ref, np.float64)
    d = np.linalg.norm(a - ref)
    r = np.linalg.norm(ref)
    if not np.isfinite(d):
        return float("inf")
    return float(d / r) if r > 0 else float(d)


def top5_check(ours, ref):
    """Returns (all_agree, excused_ties, details) over the images of a batch.

    A differing top-5 set is excused as a near-tie when every class in the symmetric
    difference has a reference logit within 4 sigma of the 5th/6th boundary, sigma being the
    robust RMS error of that image's logits: where rounding noise alone can reorder them."""
    agree, ties, details = True, 0, []
    for o, r in zip(np.asarray(ours, np.float64), np.asarray(ref, np.float64)):
        top_o = set(np.argsort(-o)[:5].tolist())
        order = np.argsort(-r)
        top_r = set(order[:5].tolist())
        if top_o == top_r:
            details.append("same")
            continue
        boundary = 0.5 * (r[order[4]] + r[order[5]])
        # Robust noise level (1.4826 x median absolute error: sigma for Gaussian noise), so
        # that one wildly wrong logit cannot excuse itself.
        sigma = float(1.4826 * np.median(np.abs(o - r))) if np.all(np.isfinite(o)) else 0.0
        far = max(abs(r[c] - boundary) for c in top_o ^ top_r)
        if far <= 4 * sigma:
            ties += 1
            details.append(f"near-tie (farthest differing class {far:.3g} from the boundary, sigma {sigma:.3g})")
        else:
            agree = False
            details.append(f"differ: ours {sorted(top_o)} ref {sorted(top_r)} "
                           f"(a differing class is {far:.3g} from the boundary, sigma {sigma:.3g})")
    return agree, ties, details


# ---------------------------------------------------------------------------------------------


def convert_checkpoint(convert, pth, st, timeout):
    """weights/convert.py pth -> st, then removes pth. Returns None, or why it failed (one line)."""
    conv = subprocess.run([sys.executable, convert, pth, st], capture_output=True, text=True, timeout=timeout)
    os.remove(pth)
    if conv.returncode == 0:
        return None
    msg = (conv.stderr or conv.stdout).strip().splitlines()[-1:] or ["(no output)"]
    return f"convert failed: {msg[0][:300]}"


def effnet_env(lib_path):
    """The environment for effnet-run: lib_path prepended to LD_LIBRARY_PATH (effnet-run only, so
    that torch keeps its own library resolution)."""
    env = dict(os.environ)
    if lib_path:
        env["LD_LIBRARY_PATH"] = lib_path + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    return env


def randomise_bn(torch, model, x, seed):
    """Random BN weight and bias first, then running statistics from one train-mode pass over x,
    so that every layer's eval-mode output is normalised for the inputs it really gets and
    activations stay O(1) through the whole depth. (Perturbing the statistics or the affine
    weights after calibration compounds layer after layer: on the H200 run of 2026-11-27 it
    blew B7's logits up to ~1e9, where even PyTorch's own fp32 was 94% off its fp64.) The
    calibrated statistics are far from 0/1, so a BN that is skipped or mis-folded still shows.
    Everything else stays in eval mode (no dropout, no stochastic depth)."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    model.eval()
    momenta = []
    with torch.no_grad():
        for m in bns:
            c = m.num_features
            dev = m.weight.device
            m.weight.copy_((0.6 + 0.8 * torch.rand(c, generator=g)).to(dev))
            m.bias.copy_((0.1 * torch.randn(c, generator=g)).to(dev))
            momenta.append(m.momentum)
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one pass sets the batch statistics exactly
            m.train()
        model(x)
        for m, mom in zip(bns, momenta):
            m.momentum = mom
    model.eval()


def reference_logits(torch, model, x, device):
    """float64 logits and where they came from."""
    if device != "cuda":
        m64 = model.double().cpu()
        with torch.no_grad():
            return m64(x.double().cpu()).numpy(), "fp64 on the CPU"
    try:
        m64 = model.double().cuda()
        with torch.no_grad():
            y = m64(x.double().cuda()).cpu().numpy()
        return y, "fp64 on the GPU"
    except Exception as e:  # fall back to the CPU
        print(f"note: fp64 on the GPU failed ({type(e).__name__}: {e}); using the CPU", file=sys.stderr)
        m64 = model.double().cpu()
        with torch.no_grad():
            y = m64(x.double().cpu()).numpy()
        return y, "fp64 on the CPU"


def run_variant(torch, torchvision, args, variant, index, work):
    res = RESOLUTION[variant]
    batch = 2 if variant in ("b0", "b1", "b2", "b3") else 1
    seed = args.seed * 100 + index
    torch.manual_seed(seed)
    t0 = time.time()
    model = getattr(torchvision.models, f"efficientnet_{variant}")(weights=None)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, 3, res, res, generator=gen)
    calib = torch.randn(4, 3, res, res, generator=gen)
    dev = args.device
    model = model.to(dev)
    randomise_bn(torch, model, calib.to(dev), seed + 2)

    # PyTorch fp32 with TF32 off, for scale: how far true fp32 lands from the fp64 reference.
    with torch.no_grad():
        y32 = model.float()(x.to(dev)).cpu().numpy().astype(np.float64)
    model = model.cpu()
    pth = os.path.join(work, f"{variant}.pth")
    st = os.path.join(work, f"{variant}.safetensors")
    inp = os.path.join(work, f"{variant}_input.safetensors")
    torch.save(model.state_dict(), pth)
    save_input(inp, x.numpy())
    ref, ref_how = reference_logits(torch, model, x, dev)
    del model
    if dev == "cuda":
        torch.cuda.empty_cache()
    t_torch = time.time() - t0

    rows = []
    base = {"tool": "parity", "variant": variant, "resolution": res, "batch": batch,
            "reference": ref_how, "torch_fp32_rel_err": rel_err(y32, ref)}
    t1 = time.time()
    failed = convert_checkpoint(args.convert, pth, st, args.step_timeout)
    t_convert = time.time() - t1
    if failed:
        for prec in args.precisions:
            rows.append(dict(base, precision=prec, passed=False, status=failed))
        return rows
    env = effnet_env(args.lib_path)
    for prec in args.precisions:
        out = os.path.join(work, f"{variant}_{prec}_out.safetensors")
        cmd = [args.effnet_run, "--weights", st, "--input", inp, "--output", out, "--device", args.device,
               "--precision", prec] + args.run_arg
        t2 = time.time()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.step_timeout, env=env)
        except subprocess.TimeoutExpired:
            rows.append(dict(base, precision=prec, passed=False, status=f"effnet-run timed out ({args.step_timeout} s)"))
            continue
        row = dict(base, precision=prec, run_s=round(time.time() - t2, 2),
                   torch_s=round(t_torch, 2), convert_s=round(t_convert, 2))
        if r.returncode != 0:
            msg = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["(no output)"]
            rows.append(dict(row, passed=False, status=f"effnet-run exit {r.returncode}: {msg[0][:300]}"))
            continue
        try:
            logits = read_safetensors(out)["logits"].astype(np.float64)
        except Exception as e:
            rows.append(dict(row, passed=False, status=f"cannot read logits: {type(e).__name__}: {e}"))
            continue
        if logits.shape != ref.shape:
            rows.append(dict(row, passed=False, status=f"logits shape {list(logits.shape)} != {list(ref.shape)}"))
            continue
        err = rel_err(logits, ref)
        agree, ties, details = top5_check(logits, ref)
        ok = err <= TOL[prec] and np.all(np.isfinite(logits))
        if prec != "fp32":
            ok = ok and agree
        rows.append(dict(row, rel_err=err, tolerance=TOL[prec], top5_agree=agree, top5_ties=ties,
                         top5=details, passed=bool(ok), status="ok" if ok else "FAILED"))
        os.remove(out)
    for f in (st, inp):
        if os.path.exists(f):
            os.remove(f)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--effnet-run", required=True, help="path of the effnet-run binary")
    ap.add_argument("--variants", default="b0,b1,b2,b3,b4,b5,b6,b7")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="where PyTorch and effnet-run compute (cpu: fp32 only, checks the CPU engine)")
    ap.add_argument("--precisions", default="fp32,fp16")
    ap.add_argument("--convert", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "weights", "convert.py"))
    ap.add_argument("--lib-path", default="", help="prepended to LD_LIBRARY_PATH for effnet-run only")
    ap.add_argument("--run-arg", action="append", default=[], help="extra argument for effnet-run")
    ap.add_argument("--work", default="", help="scratch folder (default: a temporary one)")
    ap.add_argument("--budget-s", type=float, default=90, help="no new variant starts after this")
    ap.add_argument("--step-timeout", type=float, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-out")
    args = ap.parse_args()
    args.variants = [v.strip().lower() for v in args.variants.split(",") if v.strip()]
    args.precisions = [p.strip().lower() for p in args.precisions.split(",") if p.strip()]
    for v in args.variants:
        if v not in RESOLUTION:
            ap.error(f"unknown variant '{v}' (b0..b7)")
    for p in args.precisions:
        if p not in TOL:
            ap.error(f"unknown precision '{p}' (fp32, fp16, bf16)")
    if not os.path.isfile(args.effnet_run) or not os.access(args.effnet_run, os.X_OK):
        print(f"error: effnet-run not found or not executable: {args.effnet_run}", file=sys.stderr)
        return 1
    if not os.path.isfile(args.convert):
        print(f"error: converter not found: {args.convert}", file=sys.stderr)
        return 1

    t_start = time.time()
    import torch
    import torchvision
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: torch sees no CUDA device (use --device cpu to check the CPU engine)", file=sys.stderr)
        return 1
    if args.device == "cpu" and args.precisions != ["fp32"]:
        print("error: --device cpu checks fp32 only (use --precisions fp32)", file=sys.stderr)
        return 1
    # The PyTorch side must be true fp32: cuDNN convolutions default to TF32 otherwise.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = False

    jf = open(args.json_out, "a") if args.json_out else None
    work = args.work or tempfile.mkdtemp(prefix="effnet-parity-")
    os.makedirs(work, exist_ok=True)
    rows, incomplete = [], False
    try:
        for i, v in enumerate(args.variants):
            if time.time() - t_start > args.budget_s:
                incomplete = True
                for p in args.precisions:
                    rows.append({"tool": "parity", "variant": v, "precision": p, "passed": False,
                                 "status": "not run: time budget"})
                    if jf:
                        jf.write(json.dumps(rows[-1]) + "\n")
                continue
            try:
                new = run_variant(torch, torchvision, args, v, i, work)
            except Exception as e:  # one variant failing must not stop the others
                new = [{"tool": "parity", "variant": v, "precision": p, "passed": False,
                        "status": f"error: {type(e).__name__}: {str(e)[:300]}"} for p in args.precisions]
            for r in new:
                r["elapsed_s"] = round(time.time() - t_start, 1)
                print(json.dumps(r), flush=True)
                if jf:
                    jf.write(json.dumps(r) + "\n")
                    jf.flush()
            rows += new
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"{'model':6} {'prec':5} {'rel err':>10} {'tol':>8} {'top5':>6} {'torch fp32':>10}  result")
    for r in rows:
        e = r.get("rel_err")
        es = f"{e:10.2e}" if isinstance(e, float) else f"{'-':>10}"
        t5 = "-" if "top5_agree" not in r else ("yes" if r["top5_agree"] else "NO") + ("*" if r.get("top5_ties") else "")
        tf = r.get("torch_fp32_rel_err")
        tfs = f"{tf:10.2e}" if isinstance(tf, float) else f"{'-':>10}"
        print(f"{r['variant']:6} {r['precision']:5} {es} {TOL.get(r['precision'], 0):8.0e} {t5:>6} {tfs}  "
              f"{'pass' if r.get('passed') else r.get('status', 'FAILED')}")
    failed = [r for r in rows if not r.get("passed")]
    print(f"parity: {len(rows) - len(failed)}/{len(rows)} passed in {time.time() - t_start:.1f} s"
          + (" (* = top-5 near-tie excused)" if any(r.get("top5_ties") for r in rows) else ""))
    if any(not r.get("status", "").startswith("not run") for r in failed):
        return 1
    return 3 if incomplete else 0


if __name__ == "__main__":
    sys.exit(main())
