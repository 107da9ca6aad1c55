#!/usr/bin/env python3
"""PyTorch baselines for effnet-bench: torchvision EfficientNet-BN with random weights.

Protocol (the same as effnet-bench and /work/shared/ANCHORS.md): cudnn.benchmark = True, random
N(0,1) input already on the GPU, `--warmup` untimed calls, then `--iters` calls each timed alone
with CUDA events (the host waits for each); images/s = batch / median. A second figure times
`--iters` calls issued back to back between one pair of events.

Modes (per variant and batch):
  fp32        eager, float32 NCHW, PyTorch's defaults (cuDNN convolutions may use TF32)
  fp16-cl     eager, autocast fp16, channels_last model and input
  graph       half model, channels_last, one forward captured with torch.cuda.graph, replayed
  compile     torch.compile(mode="default"), half, channels_last
  compile-ro  torch.compile(mode="reduce-overhead"), half, channels_last

Memory: after warm-up, the peak of torch.cuda.max_memory_allocated over one forward
(`mem_forward_peak_bytes`, absolute) and that peak minus what was allocated just before it
(`mem_activation_peak_bytes`: activations and workspaces of one forward).

Usage:
  pytorch_bench.py --spec b0:256:fp32+fp16-cl+graph --spec b4:64:fp16-cl --json-out r.jsonl
  pytorch_bench.py --variant b0 --batch 32 --modes fp16-cl,graph
  pytorch_bench.py --env --ceilings          # versions, copy bandwidth, GEMM rates
Compiling in the background while other work runs, timing later when the GPU is quiet:
  pytorch_bench.py --spec b0:256:compile --ready-file R --wait-file G --compile-deadline T
  (compiles every spec, touches R, waits for G to exist, then times; T is a Unix time after
  which no compile is started and a running one is abandoned)
Each result is one JSON object per line on stdout (and appended to --json-out, flushed at once,
so a run killed by a timeout keeps what it measured).
"""
import argparse
import gc
import json
import os
import signal
import statistics
import sys
import time

MODES = ("fp32", "fp16-cl", "graph", "compile", "compile-ro")
# torchvision's native resolutions for efficientnet_b0..b7.
RESOLUTION = {"b0": 224, "b1": 240, "b2": 288, "b3": 300, "b4": 380, "b5": 456, "b6": 528, "b7": 600}

_json_out = None


def emit(obj):
    line = json.dumps(obj, sort_keys=False)
    print(line, flush=True)
    if _json_out is not None:
        _json_out.write(line + "\n")
        _json_out.flush()


def parse_spec(text):
    """'b0:256:fp32+fp16-cl' -> ('b0', 256, ['fp32', 'fp16-cl'])."""
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError(f"spec '{text}' must be VARIANT:BATCH:MODE[+MODE...]")
    variant = parts[0].lower().replace("efficientnet_", "").replace("efficientnet-", "")
    if variant not in RESOLUTION:
        raise ValueError(f"spec '{text}': unknown variant '{parts[0]}' (b0..b7)")
    try:
        batch = int(parts[1])
    except ValueError:
        raise ValueError(f"spec '{text}': batch '{parts[1]}' is not an integer")
    if not 1 <= batch <= 65536:
        raise ValueError(f"spec '{text}': batch must be in [1, 65536]")
    modes = [m for m in parts[2].replace(",", "+").split("+") if m]
    for m in modes:
        if m not in MODES:
            raise ValueError(f"spec '{text}': unknown mode '{m}' (known: {', '.join(MODES)})")
    return variant, batch, modes


class CompileTimeout(BaseException):
    """Raised by SIGALRM inside a compile; BaseException so that torch's wrappers, which catch
    Exception, let it through unchanged."""


def _on_alarm(signum, frame):
    raise CompileTimeout()


# ---------------------------------------------------------------------------------------------
# Environment and ceilings


def env_info(torch):
    info = {"tool": "env", "python": sys.version.split()[0], "torch": torch.__version__,
            "cuda_runtime": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    for name in ("torchvision", "timm", "triton"):
        try:
            info[name] = __import__(name).__version__
        except Exception as e:  # a missing package is information, not a failure
            info[name] = f"unavailable ({type(e).__name__})"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, sm_count=p.multi_processor_count,
                    gpu_memory_bytes=p.total_memory, capability=f"{p.major}.{p.minor}",
                    l2_bytes=getattr(p, "L2_cache_size", None))
    else:
        info["gpu"] = "none"
    return info


def time_events(torch, fn, iters, warmup):
    """Median-based timing; returns a dict of milliseconds."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ms = []
    for _ in range(iters):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        ms.append(start.elapsed_time(stop))
    start.record()
    for _ in range(iters):
        fn()
    stop.record()
    stop.synchronize()
    pipelined = start.elapsed_time(stop)
    s = sorted(ms)

    def pct(p):  # nearest rank, as effnet-bench
        k = max(1, min(len(s), -(-p * len(s) // 100)))
        return s[int(k) - 1]

    return {"ms_p50": statistics.median(ms), "ms_p90": pct(90), "ms_p99": pct(99),
            "ms_mean": sum(ms) / len(ms), "ms_min": s[0], "ms_pipelined_total": pipelined}


def measure_ceilings(torch, args):
    """Device-to-device copy bandwidth (bytes read + written) and GEMM rates, on random data."""
    out = {"tool": "ceilings"}
    try:
        n = 1 << 30  # 1 GiB per buffer
        src = torch.randint(0, 255, (n,), dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        t = time_events(torch, lambda: dst.copy_(src), 20, 3)
        out["copy_bytes"] = 2 * n
        out["copy_ms"] = t["ms_p50"]
        out["copy_tb_s"] = 2 * n / (t["ms_p50"] * 1e-3) / 1e12
        del src, dst
    except Exception as e:
        out["copy_error"] = repr(e)
    for dtype_name, dtype, n in (("bf16", torch.bfloat16, 8192), ("fp16", torch.float16, 8192),
                                 ("fp32", torch.float32, 8192)):
        try:
            tf32 = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = False  # true fp32 for the fp32 figure
            a = torch.randn(n, n, device="cuda", dtype=dtype)
            b = torch.randn(n, n, device="cuda", dtype=dtype)
            c = torch.empty(n, n, device="cuda", dtype=dtype)
            t = time_events(torch, lambda: torch.matmul(a, b, out=c), 10, 3)
            out[f"gemm_{dtype_name}_tflops"] = 2 * n ** 3 / (t["ms_p50"] * 1e-3) / 1e12
            torch.backends.cuda.matmul.allow_tf32 = tf32
            del a, b, c
        except Exception as e:
            out[f"gemm_{dtype_name}_error"] = repr(e)
    torch.cuda.empty_cache()
    return out


# ---------------------------------------------------------------------------------------------
# Models


def build_model(torch, torchvision, variant, seed):
    torch.manual_seed(seed)
    ctor = getattr(torchvision.models, f"efficientnet_{variant}")
    return ctor(weights=None).eval()


class Prepared:
    """One (variant, batch, mode) ready to be timed: fn() runs one forward."""

    def __init__(self, variant, batch, mode, res):
        self.variant, self.batch, self.mode, self.res = variant, batch, mode, res
        self.fn = None
        self.record = {"tool": "pytorch", "variant": variant, "resolution": res, "batch": batch,
                       "mode": mode}
        self.keep = []  # tensors/graphs that must outlive fn


def prepare(torch, torchvision, args, variant, batch, mode, compile_deadline=None):
    res = args.resolution or RESOLUTION[variant]
    p = Prepared(variant, batch, mode, res)
    p.record.update(precision="fp32" if mode == "fp32" else "fp16",
                    channels_last=mode != "fp32",
                    cudnn_allow_tf32=bool(torch.backends.cudnn.allow_tf32),
                    matmul_allow_tf32=bool(torch.backends.cuda.matmul.allow_tf32))
    gc.collect()
    torch.cuda.empty_cache()
    model = build_model(torch, torchvision, variant, args.seed).cuda()
    gen = torch.Generator(device="cuda").manual_seed(args.seed + 1)
    x = torch.randn(batch, 3, res, res, device="cuda", generator=gen)  # N(0,1), never zeros
    no_grad = torch.no_grad

    if mode == "fp32":
        def fn():
            with no_grad():
                return model(x)
    elif mode == "fp16-cl":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

        def fn():
            with no_grad(), torch.autocast("cuda", dtype=torch.float16):
                return model(x)
    elif mode == "graph":
        model = model.half().to(memory_format=torch.channels_last)
        x = x.half().contiguous(memory_format=torch.channels_last)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), no_grad():
            for _ in range(3):  # cudnn.benchmark picks algorithms before the capture
                model(x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), no_grad():
            out = model(x)
        p.keep += [graph, out]
        fn = graph.replay
    else:  # compile, compile-ro
        model = model.half().to(memory_format=torch.channels_last)
        x = x.half().contiguous(memory_format=torch.channels_last)
        cmode = "default" if mode == "compile" else "reduce-overhead"
        compiled = torch.compile(model, mode=cmode, dynamic=False)
        mark_step = getattr(torch.compiler, "cudagraph_mark_step_begin", None)

        def fn():
            if mode == "compile-ro" and mark_step is not None:
                mark_step()
            with no_grad():
                return compiled(x)

        p.record["compile_mode"] = cmode
        t0 = time.time()
        if compile_deadline is not None:
            left = compile_deadline - time.time()
            if left <= 1:
                raise CompileTimeout()
            signal.signal(signal.SIGALRM, _on_alarm)
            signal.setitimer(signal.ITIMER_REAL, left)
        try:
            # The first call compiles (and, with cudnn.benchmark, picks cuDNN's algorithms: they
            # must be cached before reduce-overhead records its CUDA graph on a later call).
            fn()
            torch.cuda.synchronize()
        finally:
            if compile_deadline is not None:
                signal.setitimer(signal.ITIMER_REAL, 0)
        p.record["compile_s"] = round(time.time() - t0, 2)
    p.keep += [model, x]
    p.fn = fn
    return p


def measure(torch, args, p):
    rec = dict(p.record)
    t = time_events(torch, p.fn, args.iters, args.warmup)
    # Memory of one steady-state forward.
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = p.fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del out
    rec.update(t)
    rec.update(iters=args.iters, warmup=args.warmup,
               images_per_s=p.batch / (t["ms_p50"] * 1e-3),
               images_per_s_pipelined=p.batch * args.iters / (t["ms_pipelined_total"] * 1e-3),
               mem_forward_peak_bytes=peak, mem_activation_peak_bytes=peak - before,
               mem_allocated_before_forward_bytes=before, status="ok")
    return rec


def main():
    global _json_out
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", action="append", default=[], help="VARIANT:BATCH:MODE[+MODE...]")
    ap.add_argument("--variant", help="with --batch and --modes: one spec")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--modes", default="fp32,fp16-cl,graph")
    ap.add_argument("--resolution", type=int, default=0, help="default: the variant's native one")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--env", action="store_true", help="print versions and the GPU")
    ap.add_argument("--ceilings", action="store_true", help="measure copy bandwidth and GEMM rates")
    ap.add_argument("--time-budget", type=float, default=0,
                    help="seconds; no new measurement starts after this (0: none)")
    ap.add_argument("--compile-min-s", type=float, default=45,
                    help="a compile mode is skipped when less than this is left of --time-budget")
    ap.add_argument("--ready-file", help="touched when every spec is prepared (compiled)")
    ap.add_argument("--wait-file", help="timing starts once this file exists")
    ap.add_argument("--wait-timeout", type=float, default=900)
    ap.add_argument("--compile-deadline", type=float, default=0,
                    help="Unix time: no compile starts after it, a running one is abandoned")
    ap.add_argument("--json-out", help="append JSON lines here too")
    args = ap.parse_args()

    specs = []
    try:
        for s in args.spec:
            specs.append(parse_spec(s))
        if args.variant:
            if not args.batch:
                ap.error("--variant needs --batch")
            specs.append(parse_spec(f"{args.variant}:{args.batch}:{args.modes.replace(',', '+')}"))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.iters < 1 or args.warmup < 0:
        print("error: --iters must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    if not specs and not args.env and not args.ceilings:
        ap.error("nothing to do: give --spec, --variant/--batch, --env or --ceilings")
    if args.json_out:
        _json_out = open(args.json_out, "a")

    t_start = time.time()
    import torch
    import torchvision

    if not torch.cuda.is_available():
        print("error: torch sees no CUDA device", file=sys.stderr)
        return 1
    torch.backends.cudnn.benchmark = True
    if args.env:
        emit(env_info(torch))
    if args.ceilings:
        emit(measure_ceilings(torch, args))

    failures = 0

    def budget_left():
        return float("inf") if args.time_budget <= 0 else args.time_budget - (time.time() - t_start)

    def skip(variant, batch, mode, why):
        emit({"tool": "pytorch", "variant": variant, "batch": batch, "mode": mode,
              "resolution": args.resolution or RESOLUTION[variant], "status": why})

    # Two phases when asked to wait (prepare everything, then time), else one spec at a time.
    two_phase = bool(args.wait_file)
    deadline = args.compile_deadline or None
    prepared = []
    for variant, batch, modes in specs:
        for mode in modes:
            is_compile = mode.startswith("compile")
            if budget_left() < (args.compile_min_s if is_compile else 5):
                skip(variant, batch, mode, "skipped: time budget")
                continue
            if is_compile and deadline is not None and time.time() > deadline - 1:
                skip(variant, batch, mode, "skipped: compile deadline")
                continue
            try:
                p = prepare(torch, torchvision, args, variant, batch, mode,
                            deadline if is_compile else None)
                if two_phase:
                    prepared.append(p)
                    if is_compile:
                        print(f"compiled {variant} batch {batch} {mode} in {p.record['compile_s']} s",
                              file=sys.stderr, flush=True)
                else:
                    emit(measure(torch, args, p))
                    del p
            except CompileTimeout:
                skip(variant, batch, mode, "not measured: compile ran past its deadline")
            except Exception as e:  # one failing mode must not stop the others
                failures += 1
                skip(variant, batch, mode, f"error: {type(e).__name__}: {str(e)[:300]}")
    if two_phase:
        if args.ready_file:
            open(args.ready_file, "w").close()
        t_wait = time.time()
        while not os.path.exists(args.wait_file):
            if time.time() - t_wait > args.wait_timeout:
                print("error: gave up waiting for the wait file", file=sys.stderr)
                return 1
            time.sleep(0.2)
        for p in prepared:
            try:
                rec = measure(torch, args, p)
                rec["compiled_while_other_work_ran"] = True
                emit(rec)
            except Exception as e:
                failures += 1
                skip(p.variant, p.batch, p.mode, f"error: {type(e).__name__}: {str(e)[:300]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
