#!/usr/bin/env python3
"""PyTorch training-step baseline: torchvision EfficientNet, channels_last, SGD momentum,
cross-entropy, fp32 or AMP fp16 (GradScaler). Random input and targets on the device.

  python3 bench/pytorch_train_bench.py --spec b0:128:amp-fp16 --spec b0:128:fp32 --json-out R.jsonl

One JSON line per spec: {"tool": "pytorch-train", variant, batch, resolution, precision,
images_per_s (batch / median step), step_ms_median, peak_memory_bytes (max_memory_allocated over
the timed steps, after a reset)}. fp32 keeps PyTorch's defaults (cuDNN convolutions may use TF32).
"""
import argparse
import json
import statistics
import sys
import time

RESOLUTION = {"b0": 224, "b1": 240, "b2": 288, "b3": 300, "b4": 380, "b5": 456, "b6": 528, "b7": 600}


def bench(torch, torchvision, variant, batch, precision, iters, warmup):
    import torch.nn.functional as F
    res = RESOLUTION[variant]
    model = getattr(torchvision.models, f"efficientnet_{variant}")(num_classes=1000)
    model = model.cuda().to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, res, res, device="cuda").to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device="cuda")
    amp = precision == "amp-fp16"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        loss = step()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    med = statistics.median(times)
    return {"tool": "pytorch-train", "variant": variant, "batch": batch, "resolution": res, "precision": precision,
            "images_per_s": batch * 1000.0 / med, "step_ms_median": med,
            "peak_memory_bytes": torch.cuda.max_memory_allocated(), "loss_last": float(loss.detach())}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", action="append", required=True, help="variant:batch:fp32|amp-fp16")
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--json-out")
    args = ap.parse_args()
    import torch
    import torchvision
    torch.backends.cudnn.benchmark = True
    rc = 0
    for spec in args.spec:
        try:
            v, b, p = spec.split(":")
            if v not in RESOLUTION or p not in ("fp32", "amp-fp16"):
                raise ValueError(f"bad spec {spec!r}")
            t0 = time.time()
            r = bench(torch, torchvision, v, int(b), p, args.iters, args.warmup)
            r["wall_s"] = time.time() - t0
        except Exception as e:  # report and go on with the next spec
            r = {"tool": "pytorch-train", "spec": spec, "status": f"error: {e}"[:300]}
            rc = 1
        finally:
            torch.cuda.empty_cache()
        line = json.dumps(r)
        print(line, flush=True)
        if args.json_out:
            with open(args.json_out, "a") as f:
                f.write(line + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
