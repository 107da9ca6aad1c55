#!/usr/bin/env python3
"""PyTorch training-step baselines for effnet-train-bench: torchvision EfficientNet, random weights,
channels_last, the same work as effnet-train's defaults (bench/README.md, "PyTorch baseline protocol").

The step: forward in train mode (batch statistics), cross-entropy with label smoothing (0.1),
backward, optimizer update. Optimizer as effnet-train's default: SGD, momentum 0.9, no Nesterov,
lr 0.1, weight decay 1e-4 on conv / linear weights only (not batch-norm parameters nor biases);
--optimizer rmsprop|adamw take effnet-train's other defaults. --dropout on (effnet-train's
default): torchvision's dropout before the classifier and stochastic depth (0.2, scaled per
block), as effnet's presets; off: both removed. Precisions: fp32 (TF32 as --tf32 says: PyTorch's
default runs cuDNN convolutions on TF32) and amp-fp16 (autocast fp16 + GradScaler: dynamic loss
scale from 65536, x2 every 2000 good steps, x0.5 on overflow, as effnet-train's LossScaler).
Input path: one synthetic random batch resident on the device, reused every step (no
host-to-device copy); random targets.

Modes (each spec runs the ones asked, default all):
  eager    the step as Python code
  compile  torch.compile of the whole step function (forward, loss, backward, optimizer step)
  graph    the whole step captured once with torch.cuda.graph (static input and targets, fused
           SGD taking GradScaler's scale and found-inf on the device, so nothing syncs) and replayed

Throughput is pipelined: --iters steps back to back between two CUDA events, one synchronise
(images_per_s); per step p50 (each step synchronised) is reported too. Peak memory: allocator
statistics (torch.cuda.max_memory_allocated after reset_peak_memory_stats) over the timed steps,
and for `graph` also over the capture (memory_method in each row).

  pytorch_train_bench.py --headline --json-out R.jsonl   # B0 b128, B4 b32, B7 b8; amp-fp16, fp32; all modes
  pytorch_train_bench.py --spec b0:128:amp-fp16 --spec b0:128:fp32:eager+graph --dropout off
  pytorch_train_bench.py --headline --dry-run           # the plan only; torch is not imported
Exit status: 0, 1 when a run failed, 2 on a bad command line.
"""
import argparse
import json
import statistics
import sys
import time

RESOLUTION = {"b0": 224, "b1": 240, "b2": 288, "b3": 300, "b4": 380, "b5": 456, "b6": 528, "b7": 600}
PRECISIONS = ("amp-fp16", "fp32")
MODES = ("eager", "compile", "graph")
HEADLINE = (("b0", 128), ("b4", 32), ("b7", 8))
OPTIMIZER_DEFAULTS = {"sgd": (0.1, 1e-4), "rmsprop": (0.016, 1e-5), "adamw": (1e-3, 0.05)}  # lr, wd (effnet-train)
INPUT_PATH = "synthetic: one random batch resident on the device, reused every step (no host-to-device copy)"
MEMORY_METHOD = ("allocator statistics: torch.cuda.max_memory_allocated after torch.cuda.reset_peak_memory_stats, "
                 "over the timed steps (graph: and the capture); absolute (weights, optimizer state, activations)")


def parse_spec(text, default_modes):
    """'b0:128:amp-fp16[:eager+graph|all]' -> ('b0', 128, 'amp-fp16', ['eager', 'graph'])."""
    parts = text.split(":")
    if len(parts) not in (3, 4):
        raise ValueError(f"spec '{text}' must be VARIANT:BATCH:PRECISION[:MODES]")
    variant = parts[0].lower()
    if variant not in RESOLUTION:
        raise ValueError(f"spec '{text}': unknown model '{parts[0]}' (known: {', '.join(RESOLUTION)})")
    try:
        batch = int(parts[1])
    except ValueError:
        raise ValueError(f"spec '{text}': batch '{parts[1]}' is not an integer")
    if not 1 <= batch <= 4096:
        raise ValueError(f"spec '{text}': batch must be in [1, 4096]")
    if parts[2] not in PRECISIONS:
        raise ValueError(f"spec '{text}': unknown precision '{parts[2]}' (known: {', '.join(PRECISIONS)})")
    return variant, batch, parts[2], parse_modes(parts[3] if len(parts) == 4 else default_modes, f"spec '{text}'")


def parse_modes(text, where):
    names = [m for m in text.replace(",", "+").split("+") if m]
    if not names:
        raise ValueError(f"{where}: no mode given")
    if "all" in names:
        return list(MODES)
    for m in names:
        if m not in MODES:
            raise ValueError(f"{where}: unknown mode '{m}' (known: {', '.join(MODES)}, all)")
    return sorted(set(names), key=MODES.index)


def collect_specs(args):
    parse_modes(args.modes, "--modes")
    specs = [(v, b, p, list(MODES) if args.modes == "all" else parse_modes(args.modes, "--modes"))
             for v, b in HEADLINE for p in PRECISIONS] if args.headline else []
    specs += [parse_spec(s, args.modes) for s in args.spec]
    return specs


def build(torch, torchvision, args, variant, batch, precision):
    import torch.nn as nn
    res = args.resolution or RESOLUTION[variant]
    torch.manual_seed(args.seed)
    model = getattr(torchvision.models, f"efficientnet_{variant}")(num_classes=1000)
    dropout_p, sd_max = model.classifier[0].p, 0.0
    for m in model.modules():
        if type(m).__name__ == "StochasticDepth":
            sd_max = max(sd_max, m.p)
            if args.dropout == "off":
                m.p = 0.0  # torchvision's stochastic_depth returns its input untouched at p = 0
    if args.dropout == "off":
        model.classifier[0] = nn.Identity()
    model = model.cuda().to(memory_format=torch.channels_last).train()
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]  # conv / linear weights
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]  # BN parameters, biases
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if args.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, fused=True)
    elif args.optimizer == "rmsprop":  # TF's eps sits inside the square root; the work is the same
        opt = torch.optim.RMSprop(groups, lr=args.lr, alpha=0.9, eps=1e-3, momentum=args.momentum,
                                  capturable=True, foreach=True)
    else:
        opt = torch.optim.AdamW(groups, lr=args.lr, fused=True)
    x = torch.randn(batch, 3, res, res, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device="cuda")
    info = {"resolution": res, "dropout": args.dropout, "dropout_p": dropout_p if args.dropout == "on" else 0.0,
            "stochastic_depth_max_block_p": sd_max if args.dropout == "on" else 0.0,
            "optimizer": args.optimizer, "optimizer_impl": "fused" if args.optimizer != "rmsprop" else "foreach capturable",
            "lr": args.lr, "momentum": args.momentum if args.optimizer != "adamw" else None,
            "weight_decay": args.weight_decay, "weight_decay_on": "conv and linear weights only",
            "label_smoothing": args.label_smoothing, "channels_last": True, "input_path": INPUT_PATH,
            "loss_scaling": ("dynamic GradScaler (init 65536, growth 2 every 2000 steps, backoff 0.5)"
                             if precision == "amp-fp16" else "none")}
    return model, opt, x, y, info


def make_step(torch, model, opt, scaler, x, y, precision, label_smoothing):
    import torch.nn.functional as F
    amp = precision == "amp-fp16"

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            loss = F.cross_entropy(model(x), y, label_smoothing=label_smoothing)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    return step


def bench(torch, torchvision, args, variant, batch, precision, mode):
    model, opt, x, y, info = build(torch, torchvision, args, variant, batch, precision)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "amp-fp16")
    step = make_step(torch, model, opt, scaler, x, y, precision, args.label_smoothing)
    rec = {"tool": "pytorch-train", "variant": variant, "batch": batch, "precision": precision, "mode": mode,
           "cudnn_benchmark": True, "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
           "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32)}
    if precision == "fp32":
        rec["tf32_allowed"] = rec["cudnn_allow_tf32"] or rec["matmul_allow_tf32"]
    rec.update(info)
    t0 = time.time()
    capture_peak = 0
    if mode == "eager":
        fn = step
        for _ in range(args.warmup):
            fn()
    elif mode == "compile":
        fn = torch.compile(step)
        for _ in range(max(args.warmup, 2)):  # the first calls compile
            fn()
    else:  # graph: warm up on a side stream (optimizer state, cuDNN algorithms), then capture
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(max(args.warmup, 3)):
                step()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)  # the capture allocates the gradients in the graph's pool
        with torch.cuda.graph(graph):
            static_loss = step()
        torch.cuda.synchronize()
        capture_peak = torch.cuda.max_memory_allocated()

        def fn():
            graph.replay()
            return static_loss
        fn()
    torch.cuda.synchronize()
    rec["setup_s"] = round(time.time() - t0, 2)
    torch.cuda.reset_peak_memory_stats()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    per_step = []
    for _ in range(args.iters):  # each step synchronised
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        per_step.append(start.elapsed_time(stop))
    start.record()
    for _ in range(args.iters):  # back to back, one synchronise
        loss = fn()
    stop.record()
    stop.synchronize()
    total = start.elapsed_time(stop)
    peak = max(torch.cuda.max_memory_allocated(), capture_peak)
    loss_last = float(loss.detach())
    rec.update(iters=args.iters, warmup=args.warmup, step_ms_pipelined=total / args.iters,
               images_per_s=batch * args.iters * 1000.0 / total, step_ms_median=statistics.median(per_step),
               images_per_s_per_step=batch * 1000.0 / statistics.median(per_step),
               timing="pipelined: iters steps back to back between two CUDA events, one synchronise",
               peak_memory_bytes=peak, memory_method=MEMORY_METHOD, loss_last=loss_last,
               status="ok" if loss_last == loss_last and abs(loss_last) != float("inf") else "error: non-finite loss")
    if precision == "amp-fp16":
        rec["loss_scale_last"] = float(scaler.get_scale())
    return rec


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", action="append", default=[], help="VARIANT:BATCH:PRECISION[:MODES]")
    ap.add_argument("--headline", action="store_true", help="B0 b128, B4 b32, B7 b8 x amp-fp16, fp32")
    ap.add_argument("--modes", default="all", help="for --headline and 3-part specs (default all)")
    ap.add_argument("--dropout", choices=("on", "off"), default="on",
                    help="dropout and stochastic depth (effnet-train's default: on)")
    ap.add_argument("--optimizer", choices=tuple(OPTIMIZER_DEFAULTS), default="sgd")
    ap.add_argument("--lr", type=float, default=0.0, help="default: effnet-train's for the optimizer")
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--weight-decay", type=float, default=-1.0, help="default: effnet-train's for the optimizer")
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--tf32", choices=("default", "on", "off"), default="default")
    ap.add_argument("--resolution", type=int, default=0)
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json-out")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit; torch is not imported")
    args = ap.parse_args(argv)
    try:
        specs = collect_specs(args)
        if not specs:
            raise ValueError("nothing to do: give --headline or --spec")
        if args.iters < 1 or args.warmup < 0:
            raise ValueError("--iters must be >= 1 and --warmup >= 0")
        if not 0 <= args.label_smoothing < 1 or not 0 <= args.momentum < 1:
            raise ValueError("--label-smoothing and --momentum must be in [0, 1)")
        if args.resolution and not 32 <= args.resolution <= 2048:
            raise ValueError(f"--resolution must be in [32, 2048], got {args.resolution}")
        if args.lr < 0:
            raise ValueError("--lr must be >= 0")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    lr, wd = OPTIMIZER_DEFAULTS[args.optimizer]
    args.lr = args.lr or lr
    args.weight_decay = wd if args.weight_decay < 0 else args.weight_decay
    if args.dry_run:
        print(f"plan: {sum(len(s[3]) for s in specs)} training runs; optimizer {args.optimizer} lr {args.lr} "
              f"momentum {args.momentum} weight decay {args.weight_decay}; dropout and stochastic depth {args.dropout}; "
              f"label smoothing {args.label_smoothing}; tf32 {args.tf32}; input: {INPUT_PATH}; timing pipelined "
              f"({args.iters} steps, one synchronise) and per step; memory allocator-peak")
        for v, b, p, modes in specs:
            for m in modes:
                print(f"plan {v}:{b}:{p} res {args.resolution or RESOLUTION[v]} mode {m} timing pipelined+per-step "
                      f"memory allocator-peak")
        return 0
    import torch
    import torchvision
    if not torch.cuda.is_available():
        print("error: torch sees no CUDA device", file=sys.stderr)
        return 1
    torch.backends.cudnn.benchmark = True
    if args.tf32 != "default":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = args.tf32 == "on"
    rc = 0
    for v, b, p, modes in specs:
        for m in modes:
            try:
                t0 = time.time()
                r = bench(torch, torchvision, args, v, b, p, m)
                r["wall_s"] = round(time.time() - t0, 2)
                rc |= r["status"] != "ok"
            except Exception as e:  # report and go on with the next run
                r = {"tool": "pytorch-train", "variant": v, "batch": b, "precision": p, "mode": m,
                     "status": f"error: {type(e).__name__}: {e}"[:300]}
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
