#!/usr/bin/env python3
"""Writes the markdown report of tools/gpu_check.sh from its JSON lines, and prints a summary.

Inputs (each optional; what is missing is reported as "not measured"):
  --results     JSON lines: {"tool": "env"|"ceilings"|"step"|"effnet-bench"|"pytorch"|"parity", ...}
  --microbench  Google Benchmark JSON (a truncated file from a killed run is read as far as it goes)
  --header      free text (nvidia-smi, versions) copied into the report
  --tests-log   output of effnet_gpu_tests and compute-sanitizer ("===== NAME: ..." sections)
Microbenchmark names are read tolerantly (bench/README.md): a name containing "cudnn" is the
cuDNN baseline, its partner is the same name without the implementation word; depthwise
benchmarks contain "depthwise", "dwconv" or "dw"; the batch comes from a counter "batch"/"N" or
"batch:32" / "N:32" / "n32" in the name; bandwidth from bytes_per_second (SetBytesProcessed)
or a counter "bytes" (per iteration) / "GB/s" / "TB/s".
Standard library only: runs anywhere (the report can be remade here from the files).
"""
import argparse
import csv
import datetime
import json
import os
import re
import statistics
import sys

# ---------------------------------------------------------------------------------------------
# Reading


def read_jsonl(path):
    rows = []
    if not path or not os.path.exists(path):
        return rows
    with open(path, errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows


def read_microbench(path):
    """Google Benchmark JSON -> list of benchmark dicts; tolerates a file cut short."""
    if not path or not os.path.exists(path):
        return [], "no microbenchmark output"
    text = open(path, errors="replace").read()
    try:
        return json.loads(text).get("benchmarks", []), ""
    except json.JSONDecodeError:
        pass
    i = text.find('"benchmarks"')
    if i < 0:
        return [], "microbenchmark JSON has no benchmarks"
    i = text.find("[", i) + 1
    dec, out = json.JSONDecoder(), []
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text) or text[i] != "{":
            break
        try:
            obj, i = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            break
        out.append(obj)
    return out, "microbenchmark JSON was cut short (timeout?): read %d entries" % len(out)


def section_logs(path):
    """'===== NAME: ...' sections of a log -> {NAME: text}."""
    out = {}
    if not path or not os.path.exists(path):
        return out
    name, buf = None, []
    for line in open(path, errors="replace"):
        m = re.match(r"===== ([^:]+):", line)
        if m:
            if name:
                out[name] = "".join(buf)
            name, buf = m.group(1).strip(), []
        else:
            buf.append(line)
    if name:
        out[name] = "".join(buf)
    return out


def catch2_summary(text):
    lines = [l.strip() for l in text.splitlines()
             if re.search(r"All tests passed|test cases:|No tests ran|No test cases matched", l)]
    s = lines[-1] if lines else ""
    # GPU tests skip without a usable GPU: a pass then proves nothing, say so.
    if re.search(r"available: no|no usable CUDA device|[Ss]kipp(ed|ing).*no (usable )?GPU", text):
        s = "GPU NOT USED (tests skipped): " + s
    return s


def sanitizer_summary(text):
    lines = [l.strip() for l in text.splitlines() if re.search(r"(ERROR|RACECHECK) SUMMARY", l)]
    return lines[-1] if lines else ""


# ---------------------------------------------------------------------------------------------
# Formatting


def fnum(v, digits=0):
    if v is None:
        return "-"
    if isinstance(v, (int, float)):
        return f"{v:,.{digits}f}"
    return str(v)


def mib(b):
    return "-" if b is None else f"{b / 2**20:,.1f} MiB"


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c).replace("|", "/") for c in r) + " |")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Analysis


def index_runs(rows):
    effnet, torch = {}, {}
    for r in rows:
        if r.get("tool") == "effnet-bench":
            variant = "" + ("fused" if r.get("fused", False) else "") + ("" if r.get("graph", True) else " no-graph") \
                + (" tf32" if r.get("tf32") else "") \
                + (f" gemm={r['gemm']}" if r.get("gemm", "auto") != "auto" else "") \
                + (" no-autotune" if r.get("autotune") is False else "") \
                + (f" cudnn={r['cudnn']}" if r.get("cudnn", "off") != "off" else "") \
                + (" fused-tc" if r.get("fused_tc") else "")
            key = (r.get("variant"), int(r.get("batch", 0)), r.get("precision"), variant.strip())
            effnet[key] = r
        elif r.get("tool") == "pytorch":
            key = (r.get("variant"), int(r.get("batch", 0)), torch_precision(r), r.get("mode"))
            old = torch.get(key)
            # a measurement replaces anything; a skip/error note never replaces a measurement
            if old is None or "images_per_s" in r or "images_per_s" not in old:
                torch[key] = r
    return effnet, torch


def torch_precision(r):
    """A row's precision; rows from before bench/pytorch_bench.py recorded it: fp32 modes are named so."""
    return r.get("precision") or ("fp32" if str(r.get("mode", "")).startswith("fp32") else "fp16")


def torch_throughput(r):
    """Pipelined images/s (back to back, one synchronise) where measured, else per call."""
    return r.get("images_per_s_pipelined") or r.get("images_per_s")


def torch_ips(torch, variant, batch, mode, prec="fp16"):
    r = torch.get((variant, batch, prec, mode))
    return torch_throughput(r) if r else None


def best_torch(torch, variant, batch, prec="fp16"):
    """(mode, images/s) of PyTorch's fastest mode for this configuration: the baseline."""
    best = None
    for (v, b, p, mode), r in torch.items():
        ips = torch_throughput(r)
        if v == variant and b == batch and p == prec and ips:
            if best is None or ips > best[1]:
                best = (mode, ips)
    return best


def best_torch_latency(torch, variant, batch, prec="fp16"):
    """(mode, ms p50 per call) of PyTorch's lowest-latency mode."""
    best = None
    for (v, b, p, mode), r in torch.items():
        if v == variant and b == batch and p == prec and r.get("ms_p50"):
            if best is None or r["ms_p50"] < best[1]:
                best = (mode, r["ms_p50"])
    return best


def microbench_rows(benchmarks, copy_bps, default_batch=None):
    """Normalised rows: name, impl, depthwise, batch, seconds, bytes/s, fraction of copy
    bandwidth, and the speed-up over the library baseline of the same shape.

    Names are 'SHAPE/IMPL[/manual_time]' (bench/micro: 'depthwise/b0/112x112xC32/k3s1/ours_fp16'
    and '.../cudnn_fp16'): benchmarks sharing SHAPE are compared; an IMPL containing cudnn or
    cublas is the baseline; for fused kernels without one, 'unfused' is."""
    chosen = {}
    for b in benchmarks:
        if b.get("error_occurred"):
            continue
        if b.get("run_type") == "aggregate" and b.get("aggregate_name") not in ("median",):
            continue
        run = b.get("run_name") or b.get("name", "")
        if run in chosen and b.get("run_type") != "aggregate":
            continue  # a median aggregate wins over single repetitions
        chosen[run] = b
    unit = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}
    out = []
    for run, b in chosen.items():
        name = re.sub(r"/(manual_time|real_time|process_time)$", "", run)
        name = re.sub(r"/(iterations|repeats):\d+$", "", name)  # Google Benchmark's suffixes
        low = name.lower()
        shape, _, impl_token = name.rpartition("/")
        if not shape:
            shape, impl_token = name, name
        it = impl_token.lower()
        if not re.search(r"cudnn|cublas|ours|effnet|fused|simt|tc_", it):
            # The implementation is not the last component: find it anywhere in the name and
            # pair on the name without it.
            it = low
            shape = re.sub(r"[/_:]+", "/", re.sub(r"cudnn|cublas|effnet|ours", "", low)).strip("/")
        secs = b.get("real_time", 0) * unit.get(b.get("time_unit", "ns"), 1e-9)
        bps = b.get("bytes_per_second")
        if not bps:
            for k, v in b.items():
                kl = k.lower()
                if not isinstance(v, (int, float)):
                    continue
                if kl in ("gb/s", "gbps", "gb_s", "gbytes_per_s"):
                    bps = v * 1e9
                elif kl in ("tb/s", "tbps", "tb_s"):
                    bps = v * 1e12
                elif kl in ("bytes", "bytes_moved", "dram_bytes") and secs > 0:
                    bps = v / secs
                if bps:
                    break
        impl = "cudnn" if "cudnn" in it else "cublas" if "cublas" in it else \
            "unfused" if "unfused" in it else "effnet"
        depthwise = bool(re.search(r"depthwise|dwconv", low))
        batch = None
        for k in ("batch", "N", "n"):
            if isinstance(b.get(k), (int, float)):
                batch = int(b[k])
                break
        if batch is None:
            m = re.search(r"(?:^|[/_])(?:batch|n)[:=_]?(\d+)(?:$|[/_])", low)
            batch = int(m.group(1)) if m else default_batch
        frac = b.get("bw_frac") if isinstance(b.get("bw_frac"), (int, float)) else \
            (bps / copy_bps if bps and copy_bps else None)
        out.append(dict(name=run, impl=impl, impl_token=impl_token, depthwise=depthwise, batch=batch,
                        seconds=secs, bps=bps, key=shape, frac=frac))
    by_key = {}
    for r in out:
        by_key.setdefault(r["key"], []).append(r)
    for r in out:
        if r["impl"] != "effnet" or r["seconds"] <= 0:
            continue
        group = by_key[r["key"]]
        base = [o for o in group if o["impl"] in ("cudnn", "cublas") and o["seconds"] > 0] or \
               [o for o in group if o["impl"] == "unfused" and o["seconds"] > 0]
        if base:
            r["speedup"] = base[0]["seconds"] / r["seconds"]
            r["baseline"] = base[0]["impl_token"]
            if base[0]["impl"] == "cudnn":
                r["vs_cudnn"] = r["speedup"]
    return out


def verdict(ok):
    return "met" if ok else "MISSED"


def evaluate(effnet, torch, micro, copy_bps, env_rows):
    """-> list of (target, measured text, requirement, status)."""
    T = []

    def e(variant, batch, prec="fp16"):
        return effnet.get((variant, batch, prec, ""))

    def ratio_target(label, variant, batch, need, against, prec="fp16"):
        er = e(variant, batch, prec)
        if not er:
            T.append((label, "effnet not measured", f">= {need}x", "not measured"))
            return
        if against == "best":
            best = best_torch(torch, variant, batch, prec)
            if not best:
                T.append((label, f"effnet {fnum(er['images_per_s'])} img/s; PyTorch not measured", f">= {need}x", "not measured"))
                return
            mode, ips = best
            note = ""
            if not any(m.replace("fp32-", "").startswith("compile") for (v, b, p, m), r in torch.items()
                       if v == variant and b == batch and p == prec and torch_throughput(r)):
                note = " (torch.compile not measured: best of the rest)"
            r = er["images_per_s"] / ips
            T.append((label, f"{r:.2f}x ({fnum(er['images_per_s'])} vs {fnum(ips)} img/s, PyTorch {mode}){note}",
                      f">= {need}x", verdict(r >= need) + ("*" if note else "")))
        else:
            ips = torch_ips(torch, variant, batch, against, prec)
            if not ips:
                T.append((label, f"effnet {fnum(er['images_per_s'])} img/s; PyTorch {against} not measured", f">= {need}x", "not measured"))
                return
            r = er["images_per_s"] / ips
            T.append((label, f"{r:.2f}x ({fnum(er['images_per_s'])} vs {fnum(ips)} img/s)", f">= {need}x", verdict(r >= need)))

    ratio_target("B0 fp16 b256 vs best PyTorch", "b0", 256, 2.0, "best")
    ratio_target("B0 fp16 b32 vs best PyTorch", "b0", 32, 2.0, "best")
    # B0 batch 1: latency per call against PyTorch's lowest-latency mode.
    er = e("b0", 1)
    tr = best_torch_latency(torch, "b0", 1)
    if er and tr and er.get("ms_p50"):
        r = er["ms_p50"] / tr[1]
        T.append(("B0 fp16 b1 latency vs best PyTorch (per call)",
                  f"{r:.2f}x ({er['ms_p50']:.3f} vs {tr[1]:.3f} ms p50, PyTorch {tr[0]})", "<= 0.5x", verdict(r <= 0.5)))
    else:
        what = "effnet" if not er else "PyTorch"
        T.append(("B0 fp16 b1 latency vs best PyTorch (per call)", f"{what} not measured", "<= 0.5x", "not measured"))
    ratio_target("B4 fp16 b64 vs best PyTorch", "b4", 64, 2.0, "best")
    ratio_target("B7 fp16 b32 vs best PyTorch", "b7", 32, 2.0, "best")
    ratio_target("B0 fp32 b256 vs best PyTorch fp32", "b0", 256, 1.5, "best", "fp32")
    best32 = best_torch(torch, "b0", 256, "fp32")
    ips = best32[1] if best32 else None
    # PyTorch's fp32 convolutions use TF32 (cudnn.allow_tf32 defaults to True): effnet with TF32
    # GEMMs is the like-for-like figure; the row above is effnet in true fp32.
    er = effnet.get(("b0", 256, "fp32", "tf32"))
    if er and ips:
        r = er["images_per_s"] / ips
        T.append(("B0 fp32 b256, effnet TF32 GEMMs, vs best PyTorch fp32 (TF32 as its rows state)",
                  f"{r:.2f}x ({fnum(er['images_per_s'])} vs {fnum(ips)} img/s)", ">= 1.5x", verdict(r >= 1.5)))

    # Per shape, the best of effnet's depthwise schedules (the session times them per layer and
    # keeps the fastest); forced strip lengths and slower schedules are not the kernel it runs.
    best_dw = {}
    for m in micro:
        if m["impl"] == "effnet" and m["depthwise"] and m["seconds"] > 0 and (m["batch"] is None or m["batch"] >= 32):
            if m["key"] not in best_dw or m["seconds"] < best_dw[m["key"]]["seconds"]:
                best_dw[m["key"]] = m
    dw = list(best_dw.values())
    fr = [m["frac"] for m in dw if m.get("frac") is not None]
    if fr:
        T.append(("depthwise kernels (batch >= 32, best schedule per shape) vs copy bandwidth",
                  f"min {min(fr):.0%}, median {statistics.median(fr):.0%} of copy bandwidth; "
                  f"{sum(f >= 0.7 for f in fr)} of {len(fr)} benchmarks at >= 70%"
                  + (" (some without a batch in their name)" if any(m["batch"] is None for m in dw) else ""),
                  ">= 70%", verdict(min(fr) >= 0.7)))
    else:
        why = "no copy-bandwidth figure" if not copy_bps else "no depthwise benchmark with a byte count"
        T.append(("depthwise kernels (batch >= 32) vs copy bandwidth", f"not measured ({why})", ">= 70%", "not measured"))
    rs = [m["vs_cudnn"] for m in dw if m.get("vs_cudnn")]
    if rs:
        T.append(("depthwise kernels (batch >= 32, best schedule per shape) vs cuDNN",
                  f"min {min(rs):.2f}x, median {statistics.median(rs):.2f}x; {sum(r >= 2.0 for r in rs)} of {len(rs)} shapes at >= 2x", ">= 2x", verdict(min(rs) >= 2.0)))
    else:
        T.append(("depthwise kernels (batch >= 32) vs cuDNN", "not measured (no effnet/cuDNN pair)", ">= 2x", "not measured"))

    er = e("b0", 256)
    tr = torch.get(("b0", 256, "fp16", "half")) or torch.get(("b0", 256, "fp16", "fp16-cl"))
    if er and tr and tr.get("mem_activation_peak_bytes"):
        r = er["activation_arena_bytes"] / tr["mem_activation_peak_bytes"]
        T.append(("B0 fp16 b256 activation memory vs PyTorch half eager",
                  f"{r:.2f}x ({mib(er['activation_arena_bytes'])} vs {mib(tr['mem_activation_peak_bytes'])}); "
                  f"whole: {mib(er.get('peak_device_memory_bytes'))} vs {mib(tr.get('mem_forward_peak_bytes'))}",
                  "<= 0.5x", verdict(r <= 0.5)))
    else:
        T.append(("B0 fp16 b256 activation memory vs PyTorch half eager", "not measured", "<= 0.5x", "not measured"))
    return T


# ---------------------------------------------------------------------------------------------


def step_kind(name):
    name = re.sub(r"\[\d+\]$", "", name)  # a chunk of the batch: blocks.1.dw[2]
    for suffix in (".expand", ".project", ".dw", ".fused_expand_dw", ".se.excite"):
        if name.endswith(suffix):
            return suffix[1:]
    return name


def profile_sections(paths):
    """Per profile: time by step kind and GEMM backend, and the ten slowest steps."""
    md = []
    for path in paths:
        if not os.path.exists(path):
            continue
        with open(path) as f:
            rows = [r for r in csv.DictReader(f)]
        if not rows:
            continue
        total = sum(float(r["ms"]) for r in rows)
        kinds = {}
        for r in rows:
            k = (step_kind(r["step"]), r["kernel"])
            n, t = kinds.get(k, (0, 0.0))
            kinds[k] = (n + 1, t + float(r["ms"]))
        md += [f"`{os.path.basename(path)}`: {len(rows)} steps, {total:.3f} ms in total (eager).", ""]
        md.append(table(["step kind", "kernel", "steps", "ms", "share"],
                        [[k[0], k[1], n, f"{t:.3f}", f"{t / total:.0%}"]
                         for k, (n, t) in sorted(kinds.items(), key=lambda kv: -kv[1][1])]))
        md.append("")
        slow = sorted(rows, key=lambda r: -float(r["ms"]))[:10]
        md.append(table(["slowest steps", "kernel", "ms"], [[r["step"], r["kernel"], f"{float(r['ms']):.3f}"] for r in slow]))
        md.append("")
    return md


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results")
    ap.add_argument("--microbench")
    ap.add_argument("--header")
    ap.add_argument("--tests-log")
    ap.add_argument("--micro-batch", type=int, default=None,
                    help="batch of microbenchmarks whose name and counters do not say it")
    ap.add_argument("--out", required=True)
    ap.add_argument("--total-seconds", type=float)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--profiles", nargs="*", default=[], help="effnet-bench --profile CSV files")
    args = ap.parse_args()

    rows = read_jsonl(args.results)
    env = next((r for r in reversed(rows) if r.get("tool") == "env"), {})
    ceil = next((r for r in reversed(rows) if r.get("tool") == "ceilings"), {})
    steps = [r for r in rows if r.get("tool") == "step"]
    parity = [r for r in rows if r.get("tool") == "parity"]
    train_rows = [r for r in rows if r.get("tool") in ("effnet-train", "pytorch-train")]
    train_summary = []
    effnet, torch = index_runs(rows)
    copy_bps = ceil.get("copy_tb_s", 0) * 1e12 if ceil.get("copy_tb_s") else None
    benchmarks, micro_note = read_microbench(args.microbench)
    micro = microbench_rows(benchmarks, copy_bps, args.micro_batch)
    targets = evaluate(effnet, torch, micro, copy_bps, env)
    logs = section_logs(args.tests_log)
    header = open(args.header, errors="replace").read() if args.header and os.path.exists(args.header) else ""

    gpu = env.get("gpu") or (re.search(r"GPU 0: ([^(\n]+)", header).group(1).strip()
                             if re.search(r"GPU 0: ([^(\n]+)", header) else "unknown GPU")
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md = [f"# effnet GPU check: {gpu}, {date}" + (" (DRY RUN: no GPU steps ran)" if args.dry_run else ""), ""]
    md.append("Written by tools/make_report.py from tools/gpu_check.sh's output. Ratios compare effnet with "
              "PyTorch measured in the same run on the same card, against PyTorch's best mode for each "
              "configuration. Protocol: random input on the device, warm-up; PyTorch's throughput is "
              "pipelined (iterations back to back, one synchronise) where measured, latency per call "
              "(each call synchronised, median); effnet's images/s = batch / median of its graph replays.")
    md.append("")

    md += ["## Environment", ""]
    if env:
        md.append(table(["gpu", "SMs", "memory", "torch", "torchvision", "timm", "CUDA (torch)", "cuDNN (torch)", "triton"],
                        [[env.get("gpu"), env.get("sm_count"), mib(env.get("gpu_memory_bytes")), env.get("torch"),
                          env.get("torchvision"), env.get("timm"), env.get("cuda_runtime"), env.get("cudnn"), env.get("triton")]]))
        md.append("")
    if header:
        md += ["```", header.strip(), "```", ""]

    md += ["## Steps", ""]
    if steps:
        md.append(table(["step", "status", "rc", "seconds", "timeout", "note"],
                        [[s.get("name"), s.get("status"), s.get("rc"), s.get("seconds"), s.get("timeout_s"), s.get("note", "")] for s in steps]))
    else:
        md.append("No step ran.")
    if args.total_seconds:
        md.append(f"\nTotal: {args.total_seconds:.0f} s.")
    md.append("")

    md += ["## Ceilings measured on this card", ""]
    if ceil:
        md.append(table(["device-to-device copy (read + write)", "bf16 GEMM 8192^3", "fp16 GEMM", "fp32 GEMM (no TF32)"],
                        [[f"{ceil['copy_tb_s']:.2f} TB/s" if ceil.get("copy_tb_s") else ceil.get("copy_error", "-"),
                          f"{ceil.get('gemm_bf16_tflops', 0):.0f} TFLOP/s", f"{ceil.get('gemm_fp16_tflops', 0):.0f} TFLOP/s",
                          f"{ceil.get('gemm_fp32_tflops', 0):.1f} TFLOP/s"]]))
    else:
        md.append("Not measured.")
    md.append("")

    md += ["## Targets", ""]
    md.append(table(["target", "measured", "need", "result"], targets))
    md.append("\n`*`: judged against the best PyTorch mode that was measured, torch.compile missing.")
    md.append("")

    md += ["## End to end, images/s (median) and p50 latency", ""]
    configs = sorted({(k[0], k[1], k[2]) for k in effnet} | {(k[0], k[1], k[2]) for k in torch if k[2] != "fp32"}
                     | {(k[0], k[1], "fp32") for k in torch if k[2] == "fp32" and (k[0], k[1], "fp32", "") in effnet},
                     key=lambda c: (c[0], c[2], c[1]))
    erows, summary_rows = [], []
    # One column per mode kind; an fp32 configuration's row reads the fp32- modes.
    kinds = ["eager", "autocast", "graph", "compile", "compile-ro", "compile-max"]
    def mode_of(kind, prec):
        if prec == "fp32":
            return {"eager": "fp32", "autocast": "fp32-cl"}.get(kind, "fp32-" + kind)
        return {"eager": "half", "autocast": "fp16-cl"}.get(kind, kind)
    for v, b, p in configs:
        er = effnet.get((v, b, p, ""))
        cells = []
        for kind in kinds:
            r = torch.get((v, b, p, mode_of(kind, p)))
            if r and torch_throughput(r):
                cells.append(fnum(torch_throughput(r)) + (f" ({r['compile_s']:.0f} s to compile)" if r.get("compile_s") else ""))
            elif r:
                cells.append(str(r.get("status", "-"))[:60])
            else:
                cells.append("-")
        best = best_torch(torch, v, b, p)
        res = (er or {}).get("resolution") or next((r.get("resolution") for k, r in torch.items() if k[0] == v and k[1] == b), "")
        ratio = er["images_per_s"] / best[1] if er and best else None
        erows.append([f"{v} ({res})", b, p, fnum(er["images_per_s"]) if er else "-",
                      f"{er['ms_p50']:.3f} / {er['ms_p99']:.3f}" if er else "-",
                      fnum(er.get("images_per_s_pipelined")) if er else "-"] + cells +
                     [f"{ratio:.2f}x vs {best[0]}" if ratio else "-"])
        summary_rows.append((f"{v} b{b} {p}", fnum(er["images_per_s"]) if er else "-",
                             f"{er['ms_p50']:.3f}" if er else "-",
                             f"{fnum(best[1])} {best[0]}" if best else "-", f"{ratio:.2f}x" if ratio else "-"))
    if erows:
        md.append(table(["model (res)", "batch", "precision", "effnet img/s", "effnet p50 / p99 ms", "effnet pipelined",
                         "PyTorch eager (.half() / fp32)", "autocast / fp32 channels_last", "CUDA graph", "compile",
                         "compile reduce-overhead", "compile max-autotune", "effnet / best PyTorch"], erows))
    else:
        md.append("Nothing measured.")
    extras = [r for k, r in effnet.items() if k[3]]
    if extras:
        md += ["", "effnet variants (what fusion and the CUDA graph buy):", ""]
        md.append(table(["model", "batch", "precision", "path", "img/s", "p50 ms", "vs default path"],
                        [[r["variant"], r["batch"], r["precision"], k[3], fnum(r["images_per_s"]), f"{r['ms_p50']:.3f}",
                          (f"default path {effnet[(k[0], k[1], k[2], '')]['images_per_s'] / r['images_per_s']:.2f}x this one"
                           if (k[0], k[1], k[2], "") in effnet else "-")] for k, r in sorted(effnet.items()) if k[3]]))
    bad = [r for r in effnet.values() if not r.get("output_ok", True)]
    if bad:
        md.append("\n**Warning**: non-finite or all-zero logits in: " + ", ".join(f"{r['variant']} b{r['batch']} {r['precision']}" for r in bad))
    if any(r.get("compiled_while_other_work_ran") for r in torch.values()):
        md.append("\ntorch.compile compiled while the (untimed) GPU tests and parity ran, then was timed with the GPU otherwise idle.")
    md.append("")

    md += ["## Memory", ""]
    mrows = []
    for (v, b, p, path), er in sorted(effnet.items()):
        if path:
            continue
        tr = torch.get((v, b, p, "fp32" if p == "fp32" else "half")) or torch.get((v, b, p, "fp16-cl"))
        mrows.append([v, b, p, mib(er.get("activation_arena_bytes")), mib(er.get("peak_device_memory_bytes")),
                      mib(er.get("device_memory_delta_bytes")),
                      mib(tr.get("mem_activation_peak_bytes")) if tr else "-", mib(tr.get("mem_forward_peak_bytes")) if tr else "-",
                      f"{er['activation_arena_bytes'] / tr['mem_activation_peak_bytes']:.2f}x"
                      if tr and tr.get("mem_activation_peak_bytes") and er.get("activation_arena_bytes") is not None else "-"])
    if mrows:
        md.append(table(["model", "batch", "precision", "effnet activation arena", "effnet peak (own count)",
                         "effnet cudaMemGetInfo delta", "PyTorch activation peak", "PyTorch forward peak (all)",
                         "arena / PyTorch activations"], mrows))
        md.append("\nPyTorch: allocator statistics (max_memory_allocated after reset_peak_memory_stats) over one "
                  "steady-state forward (eager: .half() model for fp16, else autocast; fp32 NCHW for fp32); "
                  "activation peak = that minus what was allocated before the forward.")
    else:
        md.append("Not measured.")
    md.append("")

    md += ["## Parity with PyTorch (torchvision, random weights and BN statistics)", ""]
    if parity:
        md.append(table(["model", "precision", "rel err vs fp64", "tolerance", "top-5", "PyTorch fp32 rel err", "result"],
                        [[r.get("variant"), r.get("precision"),
                          f"{r['rel_err']:.2e}" if isinstance(r.get("rel_err"), float) else "-",
                          f"{r['tolerance']:.0e}" if r.get("tolerance") else "-",
                          ("-" if "top5_agree" not in r else ("same" if r["top5_agree"] and not r.get("top5_ties")
                                                              else "near-tie excused" if r["top5_agree"] else "DIFFER")),
                          f"{r['torch_fp32_rel_err']:.2e}" if isinstance(r.get("torch_fp32_rel_err"), float) else "-",
                          "pass" if r.get("passed") else r.get("status", "FAILED")] for r in parity]))
    else:
        md.append("Not run.")
    md.append("")

    md += ["## One training step against PyTorch (tools/torch_train_parity.py)", ""]
    tparity = [r for r in rows if r.get("tool") == "train_parity"]
    if tparity:
        md.append(table(["model", "batch", "precision", "loss", "logits", "worst gradient", "median gradient",
                         "worst running stat", "PyTorch fp32 (worst / median)", "PyTorch autocast (worst / median)", "result"],
                        [[r.get("variant"), r.get("batch"), r.get("precision"),
                          f"{r['loss']:.1e}" if "loss" in r else "-", f"{r['logits']:.1e}" if "logits" in r else "-",
                          f"{r['worst_grad']:.1e} ({r.get('worst_grad_name', '')})" if "worst_grad" in r else "-",
                          f"{r['median_grad']:.1e}" if "median_grad" in r else "-",
                          f"{r['worst_running']:.1e}" if "worst_running" in r else "-",
                          (f"{r['torch_fp32']['worst_grad']:.1e} / {r['torch_fp32']['median_grad']:.1e}"
                           if r.get("torch_fp32") else "-"),
                          (f"{r['torch_autocast']['worst_grad']:.1e} / {r['torch_autocast']['median_grad']:.1e}"
                           if r.get("torch_autocast") else "-"),
                          "pass" if r.get("passed") else r.get("status", "FAILED")] for r in tparity]))
        md.append("\nRelative norm errors against PyTorch in float64 (train-mode BN, no dropout); the PyTorch "
                  "columns are PyTorch's own fp32 / autocast step in the same measure.")
    else:
        md.append("Not run.")
    md.append("")

    md += ["## Training step (images/s, peak memory)", ""]
    trows = []
    def train_mode(r):  # how effnet's step ran besides its precision: TF32 GEMMs, how the batch went up
        upload = r.get("input") if r.get("input") in ("pinned", "pageable") else ""
        return " ".join(m for m in ("tf32" if r.get("tf32") else "", upload) if m)

    ours_by_key = {}  # the last effnet row of each (variant, batch, precision, mode)
    for r in train_rows:
        if r.get("tool") == "effnet-train" and r.get("variant"):
            ours_by_key[(r.get("variant"), r.get("batch"), r.get("precision"), train_mode(r))] = r
    measured = {k[:3] for k in ours_by_key}  # PyTorch rows without any effnet row still get a line
    keys = set(ours_by_key) | {(r.get("variant"), r.get("batch"), r.get("precision"), "") for r in train_rows
                               if r.get("tool") == "pytorch-train" and r.get("variant")
                               and (r.get("variant"), r.get("batch"), r.get("precision")) not in measured}
    for key in sorted(keys):
        ours = ours_by_key.get(key)
        # PyTorch's baseline: its fastest step mode (eager, compiled, CUDA-graphed) of this configuration.
        theirs = max((r for r in train_rows if r.get("tool") == "pytorch-train" and r.get("images_per_s")
                      and (r.get("variant"), r.get("batch"), r.get("precision")) == key[:3]),
                     key=lambda r: r["images_per_s"], default=None)
        oi = ours.get("images_per_s") if ours else None
        ti = theirs.get("images_per_s") if theirs else None
        om = ours.get("peak_device_memory_bytes") if ours else None
        tm = theirs.get("peak_memory_bytes") if theirs else None
        label = key[2] + (f" ({key[3]})" if key[3] else "")
        trows.append([key[0], key[1], label, fnum(oi) if oi else "-", fnum(ti) if ti else "-",
                      f"{oi / ti:.2f}x" if oi and ti else "-", mib(om) if om else "-", mib(tm) if tm else "-",
                      f"{om / tm:.2f}x" if om and tm else "-"])
        train_summary.append((f"train {key[0]} b{key[1]} {label}", fnum(oi) if oi else "-",
                              fnum(ti) if ti else "-", f"{oi / ti:.2f}x" if oi and ti else "-"))
    if trows:
        md.append(table(["model", "batch", "precision", "effnet img/s", "PyTorch img/s", "ratio",
                         "effnet peak", "PyTorch peak", "memory ratio"], trows))
        md.append("\nPyTorch: torchvision model, channels_last, SGD momentum, AMP via autocast + GradScaler; "
                  "fp32 keeps PyTorch's defaults (cuDNN convolutions on TF32), effnet fp32 is true fp32, "
                  "'(tf32)' runs its GEMMs on TF32 as PyTorch's convolutions. effnet uploads a new batch for every "
                  "step (PyTorch's benchmark reuses one on the device): prefetched on a copy stream during the "
                  "previous step, or, where marked, inside the step from a page-locked buffer ('pinned') or "
                  "from ordinary memory ('pageable'). "
                  "Targets: B0 b128 amp-fp16 >= 1.5x with <= 0.6x memory; B4 b32 amp-fp16 >= 1.5x; B0 b128 fp32 >= 1.3x.")
    else:
        md.append("Not measured.")
    errs = [r for r in train_rows if r.get("status")]
    if errs:
        md.append("\nErrors: " + "; ".join(f"{r.get('spec')}: {r.get('status')}" for r in errs))
    md.append("")

    md += ["## GPU tests and compute-sanitizer", ""]
    trows = []
    for name, text in logs.items():
        s = catch2_summary(text) if not name.startswith("sanitizer") else (sanitizer_summary(text) or catch2_summary(text))
        trows.append([name, s or "(no summary line: see gpu_tests.log)"])
    md.append(table(["run", "summary"], trows) if trows else "Not run.")
    md.append("")

    md += ["## Where the time goes (effnet-bench --profile: eager, an event between steps)", ""]
    prof_md = profile_sections(args.profiles)
    md += prof_md if prof_md else ["Not measured."]
    md.append("")

    md += ["## Microbenchmarks", ""]
    if micro_note:
        md.append(micro_note + "\n")
    errs = [b for b in benchmarks if b.get("error_occurred")]
    if errs:
        md.append(f"{len(errs)} benchmarks reported errors: " +
                  "; ".join(f"{b.get('name')}: {str(b.get('error_message', ''))[:120]}" for b in errs[:10]) + "\n")
    if micro:
        md.append(table(["benchmark", "batch", "time (us)", "GB/s", "of copy BW", "speed-up vs baseline"],
                        [[m["name"], m["batch"] if m["batch"] is not None else "-", f"{m['seconds'] * 1e6:.2f}",
                          f"{m['bps'] / 1e9:,.0f}" if m.get("bps") else "-", f"{m['frac']:.0%}" if m.get("frac") else "-",
                          f"{m['speedup']:.2f}x vs {m['baseline']}" if m.get("speedup") else "-"] for m in micro]))
        md.append("\nFraction of copy bandwidth: the microbenchmark's own `bw_frac` counter where present "
                  "(its copy measured in the same process), else against the ceiling above.")
    md.append("")

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(md) + "\n")

    # ---- summary on stdout: the last thing gpu_check.sh prints
    counts = {}
    for s in steps:
        counts[s.get("status")] = counts.get(s.get("status"), 0) + 1
    bad_steps = [s["name"] for s in steps if s.get("status") not in ("ok", "dry-run")]
    print()
    print(f"==== effnet GPU check summary: {gpu}" + (f", {args.total_seconds:.0f} s" if args.total_seconds else ""))
    print("steps: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) +
          (f" (not ok: {', '.join(bad_steps)})" if bad_steps else ""))
    if ceil.get("copy_tb_s"):
        print(f"ceilings: copy {ceil['copy_tb_s']:.2f} TB/s, bf16 GEMM {ceil.get('gemm_bf16_tflops', 0):.0f} TFLOP/s")
    print(f"{'config':16} {'effnet img/s':>13} {'p50 ms':>9} {'best PyTorch img/s':>26} {'ratio':>7}")
    for r in summary_rows:
        print(f"{r[0]:16} {r[1]:>13} {r[2]:>9} {r[3]:>26} {r[4]:>7}")
    for r in train_summary:
        print(f"{r[0]:28} effnet {r[1]:>8} img/s  PyTorch {r[2]:>8} img/s  {r[3]}")
    w = max(len(t[0]) for t in targets)
    for t in targets:
        print(f"{t[3]:13} {t[0]:{w}}  {t[1]}")
    tparity = [r for r in rows if r.get("tool") == "train_parity"]
    if tparity:
        print("train parity: " + "; ".join(f"{r.get('variant')} {r.get('precision')} {r.get('status')}"
                                          + (f" worst grad {r['worst_grad']:.1e}" if "worst_grad" in r else "")
                                          for r in tparity))
    if parity:
        ok = sum(1 for r in parity if r.get("passed"))
        fails = [f"{r.get('variant')} {r.get('precision')}: {r.get('status')}" +
                 (f" rel {r['rel_err']:.1e}" if isinstance(r.get("rel_err"), float) else "")
                 for r in parity if not r.get("passed")]
        print(f"parity: {ok}/{len(parity)} passed" + ("; " + "; ".join(fails[:4]) if fails else ""))
    for name, text in logs.items():
        s = catch2_summary(text) if not name.startswith("sanitizer") else (sanitizer_summary(text) or catch2_summary(text))
        print(f"{name}: {s or 'no summary line'}")
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
