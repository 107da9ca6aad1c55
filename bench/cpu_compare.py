#!/usr/bin/env python3
"""effnet's fast CPU path side by side with PyTorch eager, torch.compile, ONNX Runtime and
OpenVINO, on this machine, in one go.

    python3 bench/cpu_compare.py --python /opt/torchvenv/bin/python \\
        --json-out bench/results/DATE-cpu-inference.jsonl --report bench/results/DATE-cpu-inference.md

Models: torchvision efficientnet_b0 / efficientnet_b4 and timm efficientnet_lite0, random init
(seed fixed), batch-norm statistics calibrated on random N(0,1) images (train-mode BN, momentum
None, 20 batches), saved as safetensors with their own names (effnet reads them directly) and as
ONNX (opset 17, one file per batch). Every engine runs in its own subprocess with its thread
count set explicitly and OMP_NUM_THREADS / MKL_NUM_THREADS in the environment; timing: warmup,
then `rounds` rounds of back-to-back runs, each round >= --round-s seconds; ms/image = the median
round's time per batch / batch. Correctness: each engine runs once on a shared input and its
logits are compared to PyTorch eager float64 (relative L2 error; > 1e-4 is flagged).

The script itself needs only the standard library; the engines run under --python (a venv with
torch, torchvision, timm, onnx, onnxruntime, openvino, safetensors; --setup-venv DIR makes one).
"""
import argparse
import array
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

MODELS = {  # name -> (family, constructor, resolution)
    "b0": ("torchvision", "efficientnet_b0", 224),
    "b4": ("torchvision", "efficientnet_b4", 380),
    "lite0": ("timm", "efficientnet_lite0", 224),
}
CONFIGS = ["b0:1", "b0:8", "lite0:1", "lite0:8", "b4:1"]
ENGINES = ["effnet", "torch_eager", "torch_compile", "torch_compile_max_autotune", "onnxruntime", "openvino"]
# The contenders for the best time (PyTorch's are 2-3x slower): --repeat runs these again,
# interleaved with each other.
REPEATED = ["effnet", "onnxruntime", "openvino"]
SEED = 0
CALIB_BATCHES = 20
CALIB_BATCH = 8

# ---------------------------------------------------------------------------------------------
# Worker side (runs under --python): model preparation and each engine's timing.
# ---------------------------------------------------------------------------------------------


def build_torch_model(name):
    import torch
    family, ctor, _ = MODELS[name]
    torch.manual_seed(SEED)
    if family == "torchvision":
        import torchvision
        return getattr(torchvision.models, ctor)(weights=None)
    import timm
    return timm.create_model(ctor, pretrained=False)


def load_torch_model(name, work):
    import torch
    from safetensors.torch import load_file
    m = build_torch_model(name)
    m.load_state_dict(load_file(os.path.join(work, name + ".safetensors")), strict=True)
    return m.eval()


def cmd_prepare(a):
    import numpy as np
    import torch
    from safetensors.torch import save_file
    torch.set_num_threads(a.threads)
    work, name = a.work_dir, a.model
    res = MODELS[name][2]
    st_path = os.path.join(work, name + ".safetensors")
    if not os.path.exists(st_path):
        m = build_torch_model(name).eval()
        bns = [x for x in m.modules() if isinstance(x, torch.nn.modules.batchnorm._BatchNorm)]
        for bn in bns:  # cumulative average over the calibration batches; nothing else in train mode
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        g = torch.Generator().manual_seed(SEED + 1)
        t0 = time.time()
        with torch.no_grad():
            for _ in range(CALIB_BATCHES):
                m(torch.randn(CALIB_BATCH, 3, res, res, generator=g))
        m.eval()
        acts = {type(x).__name__ for x in m.modules()}
        activation = "relu6" if "ReLU6" in acts else "silu"
        meta = {"padding": "symmetric", "bn_eps": repr(float(bns[0].eps)), "activation": activation,
                "resolution": str(res), "note": "random init, BN calibrated on random N(0,1) images"}
        sd = {k: v.detach().contiguous().clone() for k, v in m.state_dict().items()}
        save_file(sd, st_path + ".tmp", metadata=meta)
        os.replace(st_path + ".tmp", st_path)
        print(f"prepare {name}: calibrated in {time.time() - t0:.1f} s -> {st_path} {meta}", file=sys.stderr)
    m = load_torch_model(name, work)
    for batch in a.batches:
        base = os.path.join(work, f"{name}_b{batch}")
        if not os.path.exists(base + "_input.bin"):
            g = torch.Generator().manual_seed(SEED + 100 + batch)
            x = torch.randn(batch, 3, res, res, generator=g)
            x.numpy().astype("<f4").tofile(base + "_input.bin.tmp")
            with torch.no_grad():
                ref = m.double()(x.double()).numpy()
            m.float()
            ref.astype("<f8").tofile(base + "_ref64.bin")
            os.replace(base + "_input.bin.tmp", base + "_input.bin")
        if not os.path.exists(base + ".onnx"):
            x = torch.randn(batch, 3, res, res)
            try:
                torch.onnx.export(m, (x,), base + ".onnx.tmp", opset_version=17, input_names=["input"],
                                  output_names=["logits"], dynamo=False)
            except Exception as e:  # the TorchScript exporter gone: the dynamo one
                print(f"prepare {name}: dynamo=False export failed ({e}); trying dynamo=True", file=sys.stderr)
                torch.onnx.export(m, (x,), base + ".onnx.tmp", opset_version=17, input_names=["input"],
                                  output_names=["logits"], dynamo=True, external_data=False)
            os.replace(base + ".onnx.tmp", base + ".onnx")
    return 0


def rel_err(a, b):
    num = sum((float(x) - float(y)) ** 2 for x, y in zip(a, b))
    den = sum(float(y) ** 2 for y in b)
    return math.sqrt(num / den) if den > 0 else float("inf")


def time_callable(fn, rounds, round_s, warmup=3):
    warm = []
    for _ in range(max(1, warmup)):
        t0 = time.perf_counter()
        fn()
        warm.append(time.perf_counter() - t0)
    iters = max(1, math.ceil(round_s / max(min(warm), 1e-6)))
    per = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        per.append((time.perf_counter() - t0) / iters * 1e3)
    return per, iters


def cmd_worker(a):
    import numpy as np
    name, batch, T, engine = a.model, a.batch, a.threads, a.engine
    res = MODELS[name][2]
    base = os.path.join(a.work_dir, f"{name}_b{batch}")
    x_np = np.fromfile(base + "_input.bin", dtype="<f4").reshape(batch, 3, res, res)
    ref = np.fromfile(base + "_ref64.bin", dtype="<f8")
    out = {"engine": engine, "model": name, "batch": batch, "threads": T, "resolution": res}
    t_setup = time.time()
    if engine.startswith("torch"):
        import torch
        torch.set_num_threads(T)
        torch.set_num_interop_threads(1)
        m = load_torch_model(name, a.work_dir)
        x = torch.from_numpy(x_np.copy())
        if engine == "torch_eager":
            best = None
            for fmt in ("contiguous", "channels_last"):
                mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
                mm = m.to(memory_format=mf)
                xx = x.contiguous(memory_format=mf)
                with torch.inference_mode():
                    per, iters = time_callable(lambda: mm(xx), a.rounds, a.round_s)
                    logits = mm(xx).float().numpy().ravel()
                r = {"variant": fmt, "round_ms": per, "iters": iters, "logits": logits}
                out.setdefault("variants", {})[fmt] = statistics.median(per) / batch
                if best is None or statistics.median(per) < statistics.median(best["round_ms"]):
                    best = r
            out["variant"] = best["variant"]
            per, iters, logits = best["round_ms"], best["iters"], best["logits"]
        else:
            mode = "max-autotune-no-cudagraphs" if engine == "torch_compile_max_autotune" else "default"
            out["variant"] = mode
            cm = torch.compile(m, mode=mode)
            t0 = time.time()
            with torch.inference_mode():
                cm(x)
                out["compile_s"] = time.time() - t0
                per, iters = time_callable(lambda: cm(x), a.rounds, a.round_s)
                logits = cm(x).float().numpy().ravel()
        out["versions"] = {"torch": torch.__version__}
    elif engine == "onnxruntime":
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = T
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(base + ".onnx", so, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x_np}
        per, iters = time_callable(lambda: sess.run(None, feed), a.rounds, a.round_s)
        logits = sess.run(None, feed)[0].ravel()
        out["variant"] = "CPUExecutionProvider, ORT_ENABLE_ALL, sequential"
        out["versions"] = {"onnxruntime": ort.__version__}
    elif engine == "openvino":
        import openvino as ov
        core = ov.Core()
        cfg = {"INFERENCE_NUM_THREADS": T, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        cm = core.compile_model(base + ".onnx", "CPU", cfg)
        req = cm.create_infer_request()
        per, iters = time_callable(lambda: req.infer({0: x_np}), a.rounds, a.round_s)
        logits = np.asarray(req.infer({0: x_np})[cm.output(0)]).ravel()
        out["variant"] = "CPU plugin, LATENCY, f32, " + str(cm.get_property("INFERENCE_NUM_THREADS")) + " threads"
        out["versions"] = {"openvino": ov.__version__}
    else:
        raise SystemExit(f"unknown engine {engine}")
    out["setup_s"] = time.time() - t_setup
    out["iters"] = iters
    out["round_ms_per_batch"] = per
    out["ms_per_image_median"] = statistics.median(per) / batch
    out["ms_per_image_min"] = min(per) / batch
    out["rel_err_vs_fp64"] = float(np.linalg.norm(logits.astype(np.float64) - ref) / np.linalg.norm(ref))
    out["logits_finite"] = bool(np.isfinite(logits).all())
    print(json.dumps(out))
    return 0


# ---------------------------------------------------------------------------------------------
# Driver side (any python3).
# ---------------------------------------------------------------------------------------------


def engine_env(threads):
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = str(threads)
    return env


def run_json(cmd, env, timeout, log):
    log(f"$ {' '.join(shlex.quote(c) for c in cmd)}")
    t0 = time.time()
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {p.returncode}: " + " | ".join(tail)}
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if not lines:
        return {"error": "no JSON output"}
    r = json.loads(lines[-1])
    r["wall_s"] = time.time() - t0
    return r


def machine_info():
    info = {"model_name": platform.processor() or "unknown", "cpus": os.cpu_count()}
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
        for l in lines:
            k, _, v = l.partition(":")
            v = v.strip()
            if k == "Model name":
                info["model_name"] = v
            elif k == "Flags":
                fl = set(v.split())
                info["isa"] = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16",
                                           "amx_tile", "avx512_fp16") if f in fl]
            elif k in ("Core(s) per socket", "Thread(s) per core", "Socket(s)", "L2 cache", "L3 cache",
                       "Hypervisor vendor"):
                info[k] = v
    except OSError:
        pass
    return info


def run_engine(a, e, m, b, t, res, base, ref, threads, me, log):
    """One timed run of engine e on (model m, batch b, t threads): its JSON record."""
    if e != "effnet":
        return run_json([a.python, me, "_worker", "--model", m, "--batch", str(b), "--threads", str(t),
                         "--engine", e, "--work-dir", a.work_dir, "--rounds", str(a.rounds), "--round-s",
                         str(a.round_s)], engine_env(t), a.timeout, log)
    dump = base + f"_t{t}_effnet_logits.bin"
    cmd = [a.effnet_bench, "--device", "cpu", "--weights", os.path.join(a.work_dir, m + ".safetensors"),
           "--batch", str(b), "--resolution", str(res), "--threads", str(t), "--json",
           "--rounds", str(a.rounds), "--min-round-s", str(a.round_s), "--input", base + "_input.bin",
           "--dump-logits", dump]
    prof = None
    if m == "b0" and t == max(threads):
        prof = base + f"_t{t}_profile.csv"
        cmd += ["--profile", prof]
    r = run_json(cmd, engine_env(t), a.timeout, log)
    if "error" not in r:
        got = array.array("f")
        with open(dump, "rb") as f:
            got.frombytes(f.read())
        r["rel_err_vs_fp64"] = rel_err(got, ref)
        r["variant"] = r.get("description", "")
        if prof:
            r["profile_csv"] = prof
    return r


def merge_runs(runs):
    """An engine's repeated runs as one record: the median of the runs' medians, the min of their mins
    (the first failure, if any run failed)."""
    failed = [r for r in runs if "error" in r]
    if failed or len(runs) == 1:
        return dict(failed[0] if failed else runs[0])
    out = dict(runs[0])
    medians = [r["ms_per_image_median"] for r in runs]
    out["ms_per_image_median"] = statistics.median(medians)
    out["ms_per_image_min"] = min(r["ms_per_image_min"] for r in runs)
    out["run_medians_ms_per_image"] = medians
    if "ms_per_batch_median" in out:  # effnet-bench's
        out["ms_per_batch_median"] = out["ms_per_image_median"] * out["batch"]
        out["ms_per_batch_min"] = out["ms_per_image_min"] * out["batch"]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", default=sys.executable, help="interpreter of the venv holding the engines")
    ap.add_argument("--setup-venv", metavar="DIR", help="create a venv at DIR, pip install the engines, use it")
    ap.add_argument("--effnet-bench", default=os.path.join(ROOT, "build/examples/effnet-bench"))
    ap.add_argument("--effnet-cpu-peak", default=None, help="default: next to --effnet-bench")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="model:batch list, e.g. b0:1,b0:8")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--round-s", type=float, default=0.5, help="minimum seconds per timed round")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run effnet, ONNX Runtime and OpenVINO this many times per configuration, interleaved "
                         "(effnet, ..., openvino, effnet, ...), and report the median of their medians and the "
                         "min of their mins: on a shared machine a burst of other load then hits every contender "
                         "alike instead of one engine's whole run (PyTorch's engines run once)")
    ap.add_argument("--max-autotune-configs", default="b0:1",
                    help="configs on which torch_compile_max_autotune runs (it is slow to compile)")
    ap.add_argument("--timeout", type=int, default=400, help="seconds per engine subprocess")
    ap.add_argument("--quick", action="store_true", help="tiny counts: a smoke test, not a measurement")
    ap.add_argument("--work-dir", default="/tmp/effnet_cpu_compare")
    ap.add_argument("--json-out")
    ap.add_argument("--report")
    ap.add_argument("--report-from", metavar="JSONL",
                    help="no runs: rebuild --report from the JSON lines of an earlier run (peak: the best of every "
                         "effnet-cpu-peak line in it, so a fresh measurement can be appended)")
    sub = ap.add_subparsers(dest="cmd")
    p = sub.add_parser("_prepare")
    p.add_argument("--model", required=True)
    p.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work-dir", required=True)
    w = sub.add_parser("_worker")
    for k in ("--model", "--engine", "--work-dir"):
        w.add_argument(k, required=True)
    w.add_argument("--batch", type=int, required=True)
    w.add_argument("--threads", type=int, required=True)
    w.add_argument("--rounds", type=int, default=5)
    w.add_argument("--round-s", type=float, default=0.5)
    a = ap.parse_args()
    if a.cmd == "_prepare":
        return cmd_prepare(a)
    if a.cmd == "_worker":
        return cmd_worker(a)

    if a.report_from:
        return report_from(a)
    if a.setup_venv:
        subprocess.run([sys.executable, "-m", "venv", a.setup_venv], check=True)
        py = os.path.join(a.setup_venv, "bin", "python")
        subprocess.run([py, "-m", "pip", "install", "torch", "torchvision", "timm", "onnx", "onnxscript",
                        "onnxruntime", "openvino", "safetensors", "numpy"], check=True)
        a.python = py
    if a.quick:
        a.rounds, a.round_s = 2, 0.05
    if not 1 <= a.repeat <= 20:
        ap.error(f"--repeat must be 1..20, got {a.repeat}")
    configs = [(c.split(":")[0], int(c.split(":")[1])) for c in a.configs.split(",") if c]
    for m, b in configs:
        if m not in MODELS or b < 1:
            ap.error(f"bad config {m}:{b} (models: {', '.join(MODELS)})")
    threads = [int(t) for t in a.threads.split(",")]
    engines = [e for e in a.engines.split(",") if e]
    for e in engines:
        if e not in ENGINES:
            ap.error(f"unknown engine {e} (known: {', '.join(ENGINES)})")
    ma_configs = {c for c in a.max_autotune_configs.split(",") if c}
    if "effnet" in engines and not os.access(a.effnet_bench, os.X_OK):
        ap.error(f"--effnet-bench {a.effnet_bench} is not an executable")
    peak_bin = a.effnet_cpu_peak or os.path.join(os.path.dirname(a.effnet_bench), "effnet-cpu-peak")
    os.makedirs(a.work_dir, exist_ok=True)
    me = os.path.abspath(__file__)
    argv_line = "python3 " + " ".join(shlex.quote(x) for x in [os.path.relpath(me, ROOT)] + sys.argv[1:])
    t_start = time.time()
    records = []
    jout = open(a.json_out, "w") if a.json_out else None

    def log(msg):
        print(f"[{time.time() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    def emit(r):
        records.append(r)
        if jout:
            jout.write(json.dumps(r) + "\n")
            jout.flush()

    # Versions and machine.
    vers = subprocess.run([a.python, "-c", "import importlib, json, sys; v={'python': sys.version.split()[0]}\n"
                           "for m in ['torch','torchvision','timm','onnx','onnxruntime','openvino','numpy','safetensors','onnxscript']:\n"
                           "  try: v[m]=importlib.import_module(m).__version__\n"
                           "  except Exception as e: v[m]='missing'\n"
                           "print(json.dumps(v))"], capture_output=True, text=True)
    versions = json.loads(vers.stdout) if vers.returncode == 0 else {"error": vers.stderr[-300:]}
    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        versions["effnet"] = commit + ("+uncommitted" if dirty else "")
    except OSError:
        pass
    machine = machine_info()
    emit({"tool": "env", "versions": versions, "machine": machine, "command": argv_line})
    log(f"versions {versions}")
    peak = {}
    if os.access(peak_bin, os.X_OK):
        p = subprocess.run([peak_bin, "--threads", str(max(threads)), "--seconds", "0.2" if a.quick else "0.5"],
                           capture_output=True, text=True)
        for l in p.stdout.splitlines():
            r = json.loads(l)
            emit(r)
            if r.get("supported") and "gflops" in r:
                peak[(r["isa"], r["threads"])] = r["gflops"]
        log(f"peak {peak}")

    # Models.
    by_model = {}
    for m, b in configs:
        by_model.setdefault(m, []).append(b)
    for m, bs in by_model.items():
        log(f"prepare {m} batches {bs}")
        p = subprocess.run([a.python, me, "_prepare", "--model", m, "--batches", ",".join(map(str, bs)),
                            "--threads", str(max(threads)), "--work-dir", a.work_dir], env=engine_env(max(threads)))
        if p.returncode != 0:
            raise SystemExit(f"preparing {m} failed")

    # Engines.
    for m, b in configs:
        res = MODELS[m][2]
        base = os.path.join(a.work_dir, f"{m}_b{b}")
        ref = array.array("d")
        with open(base + "_ref64.bin", "rb") as f:
            ref.frombytes(f.read())
        for t in threads:
            runs = {}  # engine -> its records, one per repetition
            for rep in range(a.repeat):
                for e in engines:
                    if e == "torch_compile_max_autotune" and f"{m}:{b}" not in ma_configs:
                        continue
                    if rep > 0 and e not in REPEATED:
                        continue
                    r = run_engine(a, e, m, b, t, res, base, ref, threads, me, log)
                    runs.setdefault(e, []).append(r)
                    tag = f" (run {rep + 1}/{a.repeat})" if a.repeat > 1 and e in REPEATED else ""
                    log(f"{m} b{b} t{t} {e}{tag}: " + (r["error"] if "error" in r else
                        f"{r['ms_per_image_median']:.3f} ms/image (min {r['ms_per_image_min']:.3f}), rel err "
                        f"{r.get('rel_err_vs_fp64', float('nan')):.2e}"))
            for e in engines:
                if e in runs:
                    r = merge_runs(runs[e])
                    r.update({"tool": "cpu_compare", "engine": e, "model": m, "batch": b, "threads": t})
                    emit(r)
    log("done")
    if jout:
        jout.close()
    if a.report:
        write_report(a.report, argv_line, records, configs, threads, peak, versions, machine, time.time() - t_start,
                     a)
    return 0


def report_from(a):
    records = [json.loads(l) for l in open(a.report_from) if l.strip()]
    env = next((r for r in records if r.get("tool") == "env"), {})
    peak = {}
    for r in records:
        if r.get("tool") == "effnet-cpu-peak" and r.get("supported") and "gflops" in r:
            k = (r["isa"], r["threads"])
            peak[k] = max(peak.get(k, 0.0), r["gflops"])
    res = [r for r in records if r.get("tool") == "cpu_compare"]
    configs = list(dict.fromkeys((r["model"], r["batch"]) for r in res))
    threads = sorted({r["threads"] for r in res})
    cmd = env.get("command", "?")
    shown = cmd + "\n# report rebuilt from its JSON lines by:\npython3 " + " ".join(
        shlex.quote(x) for x in [os.path.relpath(os.path.abspath(__file__), ROOT)] + sys.argv[1:])
    if not a.report:
        raise SystemExit("--report-from needs --report")
    ns = argparse.Namespace(quick="--quick" in cmd, rounds=a.rounds, round_s=a.round_s, repeat=1)
    for tok, key in (("--rounds", "rounds"), ("--round-s", "round_s"), ("--repeat", "repeat")):
        parts = shlex.split(cmd)
        if tok in parts:
            setattr(ns, key, type(getattr(ns, key))(parts[parts.index(tok) + 1]))
    if ns.quick:
        ns.rounds, ns.round_s = 2, 0.05
    total = sum(r.get("wall_s", 0) for r in res)
    write_report(a.report, shown, records, configs, threads, peak, env.get("versions", {}), env.get("machine", {}),
                 total, ns, total_label="engine subprocesses' wall time")
    return 0


def write_report(path, argv_line, records, configs, threads, peak, versions, machine, total_s, a,
                 total_label="whole run"):
    res = [r for r in records if r.get("tool") == "cpu_compare"]
    flops = {}  # (model) -> flops per image, from effnet-bench's plan count
    for r in res:
        if r["engine"] == "effnet" and "flops_per_image" in r:
            flops[r["model"]] = r["flops_per_image"]
    fallback = {"b0": 2 * 0.39e9, "lite0": 2 * 0.40e9, "b4": 2 * 4.4e9}
    best_isa = "avx512" if ("avx512", 1) in peak else "avx2"
    L = [f"# CPU inference: effnet fast path vs PyTorch, torch.compile, ONNX Runtime, OpenVINO",
         "", "```", argv_line, "```", "",
         f"Date: {datetime.datetime.utcnow().strftime('%Y-%m-%d %H:%M UTC')}; {total_label} {total_s / 60:.1f} min"
         + (" (**--quick: smoke test, not a measurement**)" if a.quick else "") + ".", "",
         "## Machine and software", "",
         f"- CPU: {machine.get('model_name')}, {machine.get('cpus')} CPUs ({machine.get('Core(s) per socket')} cores x "
         f"{machine.get('Socket(s)')} socket, {machine.get('Thread(s) per core')} thread/core), hypervisor "
         f"{machine.get('Hypervisor vendor', 'none')}, L2 {machine.get('L2 cache')}, L3 {machine.get('L3 cache')}",
         f"- ISA flags: {', '.join(machine.get('isa', []))}",
         "- Peak fp32 (effnet-cpu-peak, independent FMA chains): " + ", ".join(
             f"{isa} {t}T {g:.0f} GFLOP/s" for (isa, t), g in sorted(peak.items())),
         "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
         "- The machine is shared (another process may have been running): treat differences under ~10% as noise.",
         "", "Protocol: each engine in its own subprocess (OMP_NUM_THREADS = MKL_NUM_THREADS = threads, plus the "
         "engine's own setting), warmup, then "
         f"{a.rounds} rounds of back-to-back runs of >= {a.round_s} s each; ms/image = median round / batch"
         + (f"; effnet, ONNX Runtime and OpenVINO ran {a.repeat} times each, interleaved, and report the median "
            "of their medians and the min of their mins" if getattr(a, "repeat", 1) > 1 else "") + ". "
         "fp32 everywhere (OpenVINO INFERENCE_PRECISION_HINT=f32: its default on this CPU would be bf16). "
         "Relative error: ||logits - fp64 eager|| / ||fp64 eager|| on one shared input. "
         "GFLOP/s from effnet's count of multiply-adds x 2 per image (convs, SE, classifier).", ""]
    for m, b in configs:
        fl = flops.get(m, fallback[m])
        L += [f"## {m} batch {b} ({MODELS[m][1]}, {MODELS[m][2]}x{MODELS[m][2]}, {fl / 1e9:.3f} GFLOP/image)", "",
              "| engine | variant | threads | ms/image median | min | GFLOP/s | % of peak | rel err vs fp64 | speedup of effnet |",
              "|---|---|---|---|---|---|---|---|---|"]
        for t in threads:
            rows = [r for r in res if r["model"] == m and r["batch"] == b and r["threads"] == t]
            ok = [r for r in rows if "error" not in r]
            eff = next((r for r in ok if r["engine"] == "effnet"), None)
            others = [r for r in ok if r["engine"] != "effnet"]
            best_other = min(others, key=lambda r: r["ms_per_image_median"]) if others else None
            for r in rows:
                if "error" in r:
                    L.append(f"| {r['engine']} | failed: {r['error'][:150]} | {t} | | | | | | |")
                    continue
                ms = r["ms_per_image_median"]
                g = fl / (ms * 1e-3) / 1e9
                pk = peak.get((best_isa, t))
                err = r.get("rel_err_vs_fp64", float("nan"))
                flag = " **> 1e-4**" if not err <= 1e-4 else ""
                sp = ""
                if r is eff and best_other:
                    sp = f"**{best_other['ms_per_image_median'] / ms:.2f}x** vs {best_other['engine']}"
                elif eff:
                    sp = f"{ms / eff['ms_per_image_median']:.2f}x"
                variant = str(r.get("variant", ""))
                if r["engine"] == "torch_eager" and "variants" in r:
                    variant += " (" + ", ".join(f"{k} {v:.3f}" for k, v in r["variants"].items()) + ")"
                if "compile_s" in r:
                    variant += f", compile {r['compile_s']:.0f} s"
                L.append(f"| {r['engine']} | {variant} | {t} | {ms:.3f} | {r['ms_per_image_min']:.3f} | {g:.1f} | "
                         f"{100 * g / pk:.1f}% | {err:.1e}{flag} | {sp} |" if pk else
                         f"| {r['engine']} | {variant} | {t} | {ms:.3f} | {r['ms_per_image_min']:.3f} | {g:.1f} | | "
                         f"{err:.1e}{flag} | {sp} |")
        L.append("")
        L.append("(speedup column: on effnet's row, best other ms / effnet ms; on the others, their ms / effnet ms)")
        L.append("")
    # Per-layer-kind breakdown.
    profs = [r for r in res if r["engine"] == "effnet" and r.get("profile_csv")]
    if profs:
        L += ["## Where effnet's fast path spends its time (`--profile`, by layer kind)", ""]
        for r in profs:
            rows = []
            try:
                with open(r["profile_csv"]) as f:
                    next(f)
                    for line in f:
                        name, kind, ms, fl, _ = line.strip().split(",")
                        rows.append((kind, float(ms), float(fl)))
            except OSError:
                continue
            tot = sum(x[1] for x in rows) or 1
            pk = peak.get((best_isa, r["threads"]))
            L += [f"### {r['model']} batch {r['batch']}, {r['threads']} threads "
                  f"(profile sum {tot:.3f} ms per forward; timed run {r['ms_per_batch_median']:.3f} ms)", "",
                  "| kind | ms | share | GFLOP/s | % of peak |", "|---|---|---|---|---|"]
            agg = {}
            for kind, ms, fl in rows:
                e = agg.setdefault(kind, [0.0, 0.0])
                e[0] += ms
                e[1] += fl
            for kind, (ms, fl) in sorted(agg.items(), key=lambda kv: -kv[1][0]):
                g = fl / (ms * 1e-3) / 1e9 if ms > 0 else 0
                L.append(f"| {kind} | {ms:.3f} | {100 * ms / tot:.1f}% | {g:.1f} | "
                         + (f"{100 * g / pk:.1f}% |" if pk and fl > 0 else " |"))
            L.append("")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(L) + "\n")
    print(f"report: {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
