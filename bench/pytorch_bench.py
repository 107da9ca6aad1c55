#!/usr/bin/env python3
"""PyTorch inference baselines for effnet-bench: torchvision EfficientNet with random weights,
measured as a PyTorch expert would (bench/README.md, "PyTorch baseline protocol").

Every headline configuration (--headline: B0 b1/b32/b256 fp16, B0 b256 fp32, B4 b64 fp16,
B7 b32 fp16) runs every mode of its precision, cudnn.benchmark = True:
  fp16: half        eager, .half() model and input, channels_last
        fp16-cl     eager, float32 model under autocast fp16, channels_last
        graph       the half channels_last model captured once with torch.cuda.graph, replayed
        compile     torch.compile(mode="default"), half, channels_last
        compile-ro  torch.compile(mode="reduce-overhead"), half, channels_last
        compile-max torch.compile(mode="max-autotune"), half, channels_last
  fp32: fp32        eager, float32 NCHW (PyTorch's default layout)
        fp32-cl     eager, float32 channels_last
        fp32-graph, fp32-compile, fp32-compile-ro, fp32-compile-max: as above, float32 channels_last
fp32 rows state TF32 (cudnn_allow_tf32, matmul_allow_tf32; --tf32 default keeps PyTorch's:
convolutions on TF32, matmuls not).

Each mode is timed two ways after --warmup untimed calls, on one random N(0,1) input resident on
the device: per call (--iters calls, each between two CUDA events, the host waiting for each:
launch latency counts; ms_p50 = median, images_per_s = batch / median) and pipelined (--iters
calls back to back between one pair of events, one synchronise: images_per_s_pipelined). Peak
memory comes from the caching allocator's statistics (torch.cuda.max_memory_allocated after
torch.cuda.reset_peak_memory_stats) over the warm-up calls and one call (for `graph`, also over
the capture), and the row says so (memory_method). After each configuration a
{"tool": "pytorch-baseline"} record names its best mode, pipelined and per call.

Specs: VARIANT:BATCH:PRECISION:KINDS (KINDS from eager, autocast, eager-cl, graph, compile,
compile-ro, compile-max, or `all`), or the older VARIANT:BATCH:MODE[+MODE...] with the row mode
names above. Examples:
  pytorch_bench.py --headline --json-out r.jsonl
  pytorch_bench.py --spec b0:256:fp16:all --spec b0:256:fp32:eager+graph
  pytorch_bench.py --spec b0:256:fp32+fp16-cl+graph --spec b0:1:compile-ro
  pytorch_bench.py --variant b0 --batch 32 --precision fp16 --modes all
  pytorch_bench.py --headline --dry-run       # the plan only; torch is not imported
  pytorch_bench.py --env --ceilings           # versions, copy bandwidth, GEMM rates
Compiling while other work runs, timing later (kept for callers; gpu_check.sh no longer does it):
  pytorch_bench.py --spec b0:256:compile --ready-file R --wait-file G --compile-deadline T
Each result is one JSON object per line on stdout (and appended to --json-out, flushed at once,
so a run killed by a timeout keeps what it measured). Exit status: 0, 1 when a mode failed,
2 on a bad command line.
"""
import argparse
import gc
import json
import os
import signal
import statistics
import sys
import time

# Row modes (the JSON "mode" field): precision, kind, description. The older names (fp32,
# fp16-cl, graph, compile, compile-ro) keep their meaning, so tools/make_report.py still reads them.
ROW_MODES = {
    "half": ("fp16", "eager", "eager, .half() model, channels_last"),
    "fp16-cl": ("fp16", "autocast", "eager, float32 model under autocast fp16, channels_last"),
    "graph": ("fp16", "graph", "half channels_last model captured with torch.cuda.graph"),
    "compile": ("fp16", "compile", "torch.compile default, half, channels_last"),
    "compile-ro": ("fp16", "compile-ro", "torch.compile reduce-overhead, half, channels_last"),
    "compile-max": ("fp16", "compile-max", "torch.compile max-autotune, half, channels_last"),
    "fp32": ("fp32", "eager", "eager, float32 NCHW"),
    "fp32-cl": ("fp32", "eager-cl", "eager, float32 channels_last"),
    "fp32-graph": ("fp32", "graph", "float32 channels_last model captured with torch.cuda.graph"),
    "fp32-compile": ("fp32", "compile", "torch.compile default, float32, channels_last"),
    "fp32-compile-ro": ("fp32", "compile-ro", "torch.compile reduce-overhead, float32, channels_last"),
    "fp32-compile-max": ("fp32", "compile-max", "torch.compile max-autotune, float32, channels_last"),
}
MODES = tuple(ROW_MODES)
PRECISIONS = ("fp16", "fp32")
# (precision, kind) -> row mode, in the order they run (cheap first, max-autotune last).
KIND_TO_MODE = {(p, k): m for m, (p, k, _) in ROW_MODES.items()}
KINDS = {p: [k for (q, k) in KIND_TO_MODE if q == p] for p in PRECISIONS}
COMPILE_MODE = {"compile": "default", "compile-ro": "reduce-overhead", "compile-max": "max-autotune"}
# torchvision's native resolutions for efficientnet_b0..b7.
RESOLUTION = {"b0": 224, "b1": 240, "b2": 288, "b3": 300, "b4": 380, "b5": 456, "b6": 528, "b7": 600}
HEADLINE = (("b0", 1, "fp16"), ("b0", 32, "fp16"), ("b0", 256, "fp16"), ("b0", 256, "fp32"),
            ("b4", 64, "fp16"), ("b7", 32, "fp16"))
MEMORY_METHOD = ("allocator statistics: torch.cuda.max_memory_allocated after torch.cuda.reset_peak_memory_stats, "
                 "over the warm-up calls and one call (graph: and the capture); absolute (weights, input, "
                 "activations, workspaces, graph pools' live blocks)")

_json_out = None


def emit(obj):
    line = json.dumps(obj, sort_keys=False)
    print(line, flush=True)
    if _json_out is not None:
        _json_out.write(line + "\n")
        _json_out.flush()


def parse_variant(text, where):
    v = text.lower().replace("efficientnet_", "").replace("efficientnet-", "")
    if v not in RESOLUTION:
        raise ValueError(f"{where}: unknown model '{text}' (known: {', '.join(RESOLUTION)})")
    return v


def parse_batch(text, where):
    try:
        batch = int(text)
    except ValueError:
        raise ValueError(f"{where}: batch '{text}' is not an integer")
    if not 1 <= batch <= 65536:
        raise ValueError(f"{where}: batch must be in [1, 65536], got {batch}")
    return batch


def parse_kinds(text, precision, where):
    """'eager+graph' or 'all' -> row modes of `precision`, in run order."""
    if precision not in PRECISIONS:
        raise ValueError(f"{where}: unknown precision '{precision}' (known: {', '.join(PRECISIONS)})")
    names = [k for k in text.replace(",", "+").split("+") if k]
    if not names:
        raise ValueError(f"{where}: no mode given")
    if "all" in names:
        return [KIND_TO_MODE[(precision, k)] for k in KINDS[precision]]
    modes = []
    for k in names:
        if (precision, k) in KIND_TO_MODE:
            m = KIND_TO_MODE[(precision, k)]
        elif k in ROW_MODES and ROW_MODES[k][0] == precision:
            m = k  # a row mode name is accepted too
        else:
            raise ValueError(f"{where}: unknown mode '{k}' for {precision} (known: {', '.join(KINDS[precision])}, all)")
        if m not in modes:
            modes.append(m)
    return modes


def parse_spec(text):
    """'b0:256:fp16:eager+graph' -> [('b0', 256, 'fp16', ['half', 'graph'])];
    older 'b0:256:fp32+fp16-cl' -> one entry per precision among the row modes named."""
    parts = text.split(":")
    if len(parts) == 4:
        variant = parse_variant(parts[0], f"spec '{text}'")
        batch = parse_batch(parts[1], f"spec '{text}'")
        return [(variant, batch, parts[2].lower(), parse_kinds(parts[3], parts[2].lower(), f"spec '{text}'"))]
    if len(parts) != 3:
        raise ValueError(f"spec '{text}' must be VARIANT:BATCH:PRECISION:MODES or VARIANT:BATCH:MODE[+MODE...]")
    variant = parse_variant(parts[0], f"spec '{text}'")
    batch = parse_batch(parts[1], f"spec '{text}'")
    modes = [m for m in parts[2].replace(",", "+").split("+") if m]
    if not modes:
        raise ValueError(f"spec '{text}': no mode given")
    by_precision = {}
    for m in modes:
        if m not in ROW_MODES:
            raise ValueError(f"spec '{text}': unknown mode '{m}' (known: {', '.join(MODES)})")
        by_precision.setdefault(ROW_MODES[m][0], [])
        if m not in by_precision[ROW_MODES[m][0]]:
            by_precision[ROW_MODES[m][0]].append(m)
    return [(variant, batch, p, ms) for p, ms in by_precision.items()]


def plan_lines(specs, args):
    out = [f"plan: {len(specs)} configurations, {sum(len(s[3]) for s in specs)} (configuration, mode) runs; "
           f"timing per mode: pipelined ({args.iters} calls back to back, one synchronise, img/s) and "
           f"per-call ({args.iters} calls, synchronise each, median ms); warm-up {args.warmup}; "
           f"memory: allocator peak (max_memory_allocated after reset_peak_memory_stats); tf32: {args.tf32}"]
    for variant, batch, precision, modes in specs:
        res = args.resolution or RESOLUTION[variant]
        for m in modes:
            out.append(f"plan {variant}:{batch}:{precision} res {res} mode {m} ({ROW_MODES[m][2]}) "
                       f"timing pipelined+per-call memory allocator-peak")
    return out


class CompileTimeout(BaseException):
    """Raised by SIGALRM inside a compile; BaseException so that torch's wrappers, which catch
    Exception, let it through unchanged."""


def _on_alarm(signum, frame):
    raise CompileTimeout()


# ---------------------------------------------------------------------------------------------
# Environment and ceilings


def env_info(torch):
    info = {"tool": "env", "python": sys.version.split()[0], "torch": torch.__version__,
            "cuda_runtime": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32)}
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


def percentile(sorted_ms, p):  # nearest rank, as effnet-bench
    k = max(1, min(len(sorted_ms), -(-p * len(sorted_ms) // 100)))
    return sorted_ms[int(k) - 1]


def time_events(torch, fn, iters, warmup):
    """Per call (events around each call, the host waiting) and pipelined (back to back, one
    synchronise); returns a dict of milliseconds."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ms, host_ms = [], []
    for _ in range(iters):
        t0 = time.perf_counter()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        host_ms.append((time.perf_counter() - t0) * 1e3)
        ms.append(start.elapsed_time(stop))
    start.record()
    for _ in range(iters):
        fn()
    stop.record()
    stop.synchronize()
    pipelined = start.elapsed_time(stop)
    s = sorted(ms)
    return {"ms_p50": statistics.median(ms), "ms_p90": percentile(s, 90), "ms_p99": percentile(s, 99),
            "ms_mean": sum(ms) / len(ms), "ms_min": s[0], "host_ms_p50": statistics.median(host_ms),
            "ms_pipelined_total": pipelined, "ms_pipelined_per_call": pipelined / iters}


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
        tf32 = torch.backends.cuda.matmul.allow_tf32
        try:
            torch.backends.cuda.matmul.allow_tf32 = False  # true fp32 for the fp32 figure
            a = torch.randn(n, n, device="cuda", dtype=dtype)
            b = torch.randn(n, n, device="cuda", dtype=dtype)
            c = torch.empty(n, n, device="cuda", dtype=dtype)
            t = time_events(torch, lambda: torch.matmul(a, b, out=c), 10, 3)
            out[f"gemm_{dtype_name}_tflops"] = 2 * n ** 3 / (t["ms_p50"] * 1e-3) / 1e12
            del a, b, c
        except Exception as e:
            out[f"gemm_{dtype_name}_error"] = repr(e)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
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

    def __init__(self, variant, batch, precision, mode, res):
        self.variant, self.batch, self.precision, self.mode, self.res = variant, batch, precision, mode, res
        self.fn = None
        self.capture_peak = 0  # allocator peak over a graph capture (graph modes)
        self.before = 0        # allocated once model and input were on the device
        _, kind, what = ROW_MODES[mode]
        self.record = {"tool": "pytorch", "variant": variant, "resolution": res, "batch": batch,
                       "precision": precision, "mode": mode, "mode_kind": kind, "mode_description": what,
                       "config": f"{variant}:{batch}:{precision}"}
        self.keep = []  # tensors/graphs that must outlive fn


def tf32_record(torch):
    return {"cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark)}


def prepare(torch, torchvision, args, variant, batch, precision, mode, compile_deadline=None):
    res = args.resolution or RESOLUTION[variant]
    p = Prepared(variant, batch, precision, mode, res)
    _, kind, _ = ROW_MODES[mode]
    channels_last = not (precision == "fp32" and kind == "eager")
    half = precision == "fp16" and kind != "autocast"
    p.record.update(channels_last=channels_last, model_dtype="float16" if half else "float32",
                    autocast=kind == "autocast", cuda_graph=kind in ("graph", "compile-ro", "compile-max"),
                    **tf32_record(torch))
    if precision == "fp32":
        p.record["tf32_allowed"] = bool(torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)
    gc.collect()
    torch.cuda.empty_cache()
    model = build_model(torch, torchvision, variant, args.seed).cuda()
    gen = torch.Generator(device="cuda").manual_seed(args.seed + 1)
    x = torch.randn(batch, 3, res, res, device="cuda", generator=gen)  # N(0,1), never zeros
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if half:
        model, x = model.half(), x.half()
    p.record["weights_bytes"] = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    torch.cuda.synchronize()
    p.before = torch.cuda.memory_allocated()
    no_grad = torch.no_grad

    if kind in ("eager", "eager-cl"):
        def fn():
            with no_grad():
                return model(x)
    elif kind == "autocast":
        def fn():
            with no_grad(), torch.autocast("cuda", dtype=torch.float16):
                return model(x)
    elif kind == "graph":
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), no_grad():
            for _ in range(3):  # cudnn.benchmark picks algorithms before the capture
                model(x)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), no_grad():
            out = model(x)
        torch.cuda.synchronize()
        p.capture_peak = torch.cuda.max_memory_allocated()
        p.keep += [graph, out]

        def fn():
            graph.replay()
            return out
    else:  # compile, compile-ro, compile-max
        cmode = COMPILE_MODE[kind]
        if kind != "compile":
            try:  # the input is a fixed device buffer, as effnet's: no copy into the graph's input
                torch._dynamo.mark_static_address(x)
                p.record["static_input"] = True
            except Exception:
                p.record["static_input"] = False
        compiled = torch.compile(model, mode=cmode, dynamic=False)
        mark_step = getattr(torch.compiler, "cudagraph_mark_step_begin", None)

        def fn():
            if kind != "compile" and mark_step is not None:
                mark_step()
            with no_grad():
                return compiled(x)

        p.record["compile_mode"] = cmode
        t0 = time.time()
        deadline = compile_deadline
        if args.compile_cap_s > 0:
            deadline = min(deadline or float("inf"), time.time() + args.compile_cap_s)
        if deadline is not None:
            left = deadline - time.time()
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
            if deadline is not None:
                signal.setitimer(signal.ITIMER_REAL, 0)
        p.record["compile_s"] = round(time.time() - t0, 2)
    p.keep += [model, x]
    p.fn = fn
    return p


def reference_logits(torch, torchvision, args, variant, batch):
    """Float32 NCHW eager logits with TF32 off: what every mode is checked against."""
    res = args.resolution or RESOLUTION[variant]
    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = False  # one forward: no algorithm search charged to the budget
        model = build_model(torch, torchvision, variant, args.seed).cuda()
        gen = torch.Generator(device="cuda").manual_seed(args.seed + 1)
        x = torch.randn(batch, 3, res, res, device="cuda", generator=gen)
        with torch.no_grad():
            out = model(x).float()
        del model, x
        return out
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark = flags
        torch.cuda.empty_cache()


def measure(torch, args, p, reference=None):
    rec = dict(p.record)
    # Memory: the allocator's peak over the warm-up calls and one more (a CUDA graph recorded by
    # reduce-overhead / max-autotune is recorded there), and over the capture for `graph`.
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        p.fn()
    out = p.fn()
    torch.cuda.synchronize()
    peak = max(torch.cuda.max_memory_allocated(), p.capture_peak)
    logits = out.float()
    finite = bool(torch.isfinite(logits).all())
    rec["output_ok"] = finite and bool(logits.abs().sum() > 0)
    if reference is not None and reference.shape == logits.shape:
        rec["rel_err_vs_fp32_reference"] = float((logits - reference).norm() / reference.norm())
    del out, logits
    t = time_events(torch, p.fn, args.iters, 0)
    rec.update(t)
    rec.update(iters=args.iters, warmup=args.warmup,
               images_per_s=p.batch / (t["ms_p50"] * 1e-3),
               images_per_s_pipelined=p.batch * args.iters / (t["ms_pipelined_total"] * 1e-3),
               timing_per_call="CUDA events around each call, the host waiting for each; median",
               timing_pipelined=f"{args.iters} calls back to back between two events, one synchronise",
               mem_peak_bytes=peak, mem_forward_peak_bytes=peak,
               mem_activation_peak_bytes=peak - p.before, mem_allocated_before_forward_bytes=p.before,
               mem_reserved_bytes=torch.cuda.memory_reserved(), memory_method=MEMORY_METHOD,
               status="ok" if rec["output_ok"] else "error: non-finite or all-zero logits")
    return rec


def baseline_record(rows, variant, batch, precision):
    """The best mode of one configuration, pipelined and per call, among the rows measured."""
    ok = [r for r in rows if r.get("images_per_s") and r.get("status") == "ok"]
    rec = {"tool": "pytorch-baseline", "variant": variant, "batch": batch, "precision": precision,
           "config": f"{variant}:{batch}:{precision}", "modes_measured": [r["mode"] for r in ok],
           "modes_not_measured": [r["mode"] for r in rows if r not in ok]}
    if ok:
        bp = max(ok, key=lambda r: r["images_per_s_pipelined"])
        bc = min(ok, key=lambda r: r["ms_p50"])
        rec.update(best_pipelined_mode=bp["mode"], best_pipelined_images_per_s=bp["images_per_s_pipelined"],
                   best_per_call_mode=bc["mode"], best_per_call_ms_p50=bc["ms_p50"],
                   best_per_call_images_per_s=bc["images_per_s"])
        if precision == "fp32":
            rec["tf32_allowed"] = bp.get("tf32_allowed")
    return rec


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", action="append", default=[],
                    help="VARIANT:BATCH:PRECISION:MODES or VARIANT:BATCH:MODE[+MODE...]")
    ap.add_argument("--headline", action="store_true", help="every headline configuration, every mode")
    ap.add_argument("--variant", help="with --batch (and --precision, --modes): one spec")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--precision", default="", help="fp16|fp32; without it --modes are row mode names")
    ap.add_argument("--modes", default="", help="default: all modes of --precision, else fp32,fp16-cl,graph")
    ap.add_argument("--resolution", type=int, default=0, help="default: the variant's native one")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tf32", choices=("default", "on", "off"), default="default",
                    help="fp32: PyTorch's defaults (cuDNN convolutions TF32, matmuls not), all on, all off")
    ap.add_argument("--no-output-check", action="store_true",
                    help="skip the float32 reference forward each configuration's logits are compared with")
    ap.add_argument("--env", action="store_true", help="print versions and the GPU")
    ap.add_argument("--ceilings", action="store_true", help="measure copy bandwidth and GEMM rates")
    ap.add_argument("--time-budget", type=float, default=0,
                    help="seconds; no new measurement starts after this (0: none)")
    ap.add_argument("--compile-min-s", type=float, default=45,
                    help="a compile mode is skipped when less than this is left of --time-budget")
    ap.add_argument("--compile-cap-s", type=float, default=0,
                    help="seconds one compile may take before it is abandoned (0: no cap)")
    ap.add_argument("--ready-file", help="touched when every spec is prepared (compiled)")
    ap.add_argument("--wait-file", help="timing starts once this file exists")
    ap.add_argument("--wait-timeout", type=float, default=900)
    ap.add_argument("--compile-deadline", type=float, default=0,
                    help="Unix time: no compile starts after it, a running one is abandoned")
    ap.add_argument("--json-out", help="append JSON lines here too")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit; torch is not imported")
    return ap, ap.parse_args(argv)


def collect_specs(ap, args):
    """-> [(variant, batch, precision, [row modes])], merged per configuration; ValueError on bad input."""
    specs = []
    if args.headline:
        specs += [(v, b, p, [KIND_TO_MODE[(p, k)] for k in KINDS[p]]) for v, b, p in HEADLINE]
    for s in args.spec:
        specs += parse_spec(s)
    if args.variant or args.batch is not None:
        if not args.variant or args.batch is None:
            raise ValueError("--variant and --batch go together")
        variant = parse_variant(args.variant, "--variant")
        batch = parse_batch(str(args.batch), "--batch")
        if args.precision:
            specs += [(variant, batch, args.precision.lower(),
                       parse_kinds(args.modes or "all", args.precision.lower(), "--modes"))]
        else:
            specs += parse_spec(f"{variant}:{batch}:{(args.modes or 'fp32,fp16-cl,graph').replace(',', '+')}")
    elif args.precision:
        raise ValueError("--precision needs --variant and --batch")
    merged = {}
    for v, b, p, modes in specs:
        have = merged.setdefault((v, b, p), [])
        have += [m for m in modes if m not in have]
    return [(v, b, p, sorted(ms, key=MODES.index)) for (v, b, p), ms in merged.items()]


def main(argv=None):
    global _json_out
    ap, args = parse_args(argv)
    try:
        specs = collect_specs(ap, args)
        if args.iters < 1 or args.warmup < 0:
            raise ValueError("--iters must be >= 1 and --warmup >= 0")
        if args.resolution and not 32 <= args.resolution <= 2048:
            raise ValueError(f"--resolution must be in [32, 2048], got {args.resolution}")
        if args.wait_file and args.wait_timeout <= 0:
            raise ValueError("--wait-timeout must be > 0")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not specs and not args.env and not args.ceilings:
        print("error: nothing to do: give --headline, --spec, --variant/--batch, --env or --ceilings", file=sys.stderr)
        return 2
    if args.dry_run:
        for line in plan_lines(specs, args):
            print(line)
        if args.env or args.ceilings:
            print("plan: " + " and ".join(w for w, f in (("env", args.env), ("ceilings", args.ceilings)) if f))
        return 0
    if args.json_out:
        _json_out = open(args.json_out, "a")

    t_start = time.time()
    import torch
    import torchvision

    if not torch.cuda.is_available():
        print("error: torch sees no CUDA device", file=sys.stderr)
        return 1
    torch.backends.cudnn.benchmark = True
    if args.tf32 != "default":
        on = args.tf32 == "on"
        torch.backends.cudnn.allow_tf32 = on
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.set_float32_matmul_precision("high" if on else "highest")
    if args.env:
        emit(env_info(torch))
    if args.ceilings:
        emit(measure_ceilings(torch, args))

    failures = 0

    def budget_left():
        return float("inf") if args.time_budget <= 0 else args.time_budget - (time.time() - t_start)

    def skip(variant, batch, precision, mode, why):
        row = {"tool": "pytorch", "variant": variant, "batch": batch, "precision": precision, "mode": mode,
               "config": f"{variant}:{batch}:{precision}",
               "resolution": args.resolution or RESOLUTION[variant], "status": why}
        emit(row)
        return row

    # Two phases when asked to wait (prepare everything, then time), else one mode at a time.
    two_phase = bool(args.wait_file)
    deadline = args.compile_deadline or None
    prepared, rows_by_config, refs = [], {}, {}

    def reference(variant, batch):
        if args.no_output_check:
            return None
        if (variant, batch) not in refs:
            try:
                refs[(variant, batch)] = reference_logits(torch, torchvision, args, variant, batch)
            except Exception as e:  # the check is information; its failure must not stop timing
                print(f"warning: no reference logits for {variant} b{batch}: {e}", file=sys.stderr)
                refs[(variant, batch)] = None
        return refs[(variant, batch)]

    for variant, batch, precision, modes in specs:
        rows = rows_by_config.setdefault((variant, batch, precision), [])
        for mode in modes:
            is_compile = ROW_MODES[mode][1].startswith("compile")
            if budget_left() < (args.compile_min_s if is_compile else 5):
                rows.append(skip(variant, batch, precision, mode, "skipped: time budget"))
                continue
            if is_compile and deadline is not None and time.time() > deadline - 1:
                rows.append(skip(variant, batch, precision, mode, "skipped: compile deadline"))
                continue
            try:
                ref = reference(variant, batch)
                p = prepare(torch, torchvision, args, variant, batch, precision, mode,
                            deadline if is_compile else None)
                if two_phase:
                    prepared.append((p, ref))
                    if is_compile:
                        print(f"compiled {variant} batch {batch} {mode} in {p.record['compile_s']} s",
                              file=sys.stderr, flush=True)
                else:
                    rec = measure(torch, args, p, ref)
                    emit(rec)
                    rows.append(rec)
                    failures += rec["status"] != "ok"
                    del p
            except CompileTimeout:
                rows.append(skip(variant, batch, precision, mode, "not measured: compile ran past its deadline"))
            except Exception as e:  # one failing mode must not stop the others
                failures += 1
                rows.append(skip(variant, batch, precision, mode, f"error: {type(e).__name__}: {str(e)[:300]}"))
        if not two_phase:
            emit(baseline_record(rows, variant, batch, precision))
    if two_phase:
        if args.ready_file:
            open(args.ready_file, "w").close()
        t_wait = time.time()
        while not os.path.exists(args.wait_file):
            if time.time() - t_wait > args.wait_timeout:
                print("error: gave up waiting for the wait file", file=sys.stderr)
                return 1
            time.sleep(0.2)
        for p, ref in prepared:
            rows = rows_by_config[(p.variant, p.batch, p.precision)]
            try:
                rec = measure(torch, args, p, ref)
                rec["compiled_while_other_work_ran"] = True
                emit(rec)
                rows.append(rec)
                failures += rec["status"] != "ok"
            except Exception as e:
                failures += 1
                rows.append(skip(p.variant, p.batch, p.precision, p.mode, f"error: {type(e).__name__}: {str(e)[:300]}"))
        for (v, b, prec), rows in rows_by_config.items():
            emit(baseline_record(rows, v, b, prec))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
