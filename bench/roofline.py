#!/usr/bin/env python3
"""Roofline charts and a fraction-of-ceiling table from effnet_microbench's Google Benchmark JSON.

    effnet_microbench --precision=fp16 --benchmark_out=fp16.json --benchmark_out_format=json
    python3 bench/roofline.py fp16.json [bf16.json fp32.json ...] [--out-dir DIR] [--no-plot]

Each benchmark carries its achieved rates and the ceilings measured in the same run (counters
set by bench/micro/bench_env.cpp's set_counters):
    GB/s             achieved bytes/s / 1e9 (the bytes counted from the shape)
    TFLOP/s          achieved FLOP/s / 1e12 (or, when absent, derived from FLOPs / bytes * GB/s)
    ceiling_GB/s     device-to-device copy bandwidth of the run (read + write)
    ceiling_TFLOP/s  cuBLASLt 8192^3 GEMM rate of the run, in the run's precision

For each benchmark: arithmetic intensity AI = FLOP/s / (bytes/s), the attainable rate
min(ceiling_TFLOP/s, AI * ceiling_GB/s) and the fraction of it achieved; a kernel that counts no
FLOPs is judged on bandwidth alone (GB/s / ceiling_GB/s) and is not drawn (AI = 0 has no place
on a log axis). The table lists every benchmark, furthest from its ceiling first. One PNG per
precision (roofline_<precision>.png): x = AI (FLOP/byte), y = FLOP/s, the ceilings as lines,
each kernel a labelled point. The precision is the benchmark name's suffix (_fp16, _bf16,
_fp32) or else the one named in the JSON context's "ceilings" line.

Benchmarks that reported an error (skipped shapes), and those with no byte or FLOP counter at
all (the whole-network benchmarks count images/s), are listed on stderr and left out.
Exit status: 0 done; 2 bad input (unreadable or malformed JSON, a missing or non-numeric counter,
no benchmark left to show); 1 matplotlib missing while charts were asked for.
"""
import argparse
import json
import math
import os
import re
import sys

PRECISIONS = ("fp16", "bf16", "fp32")
# A benchmark with none of these is not a kernel benchmark and is left out; one with any of them
# must have all that point() reads.
RATE_COUNTERS = ("GB/s", "TFLOP/s", "FLOPs", "bytes")


class InputError(Exception):
    """Bad input: reported as 'error: ...', exit status 2."""


def number(bench, key, where):
    """bench[key] as a finite float >= 0, or InputError naming the benchmark and the counter."""
    if key not in bench:
        raise InputError(f"{where}: counter '{key}' missing (run a build whose set_counters records it)")
    v = bench[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise InputError(f"{where}: counter '{key}' is {v!r}, not a finite number >= 0")
    return float(v)


def context_precision(doc):
    """The precision named in the context's 'ceilings' line (bench_env.cpp's description()), or None."""
    ceilings = doc.get("context", {}).get("ceilings", "") if isinstance(doc.get("context"), dict) else ""
    m = re.search(r"\b(fp16|bf16|fp32)\b", ceilings if isinstance(ceilings, str) else "")
    return m.group(1) if m else None


def benchmark_precision(name, fallback):
    m = re.search(r"_(fp16|bf16|fp32)$", name)
    return m.group(1) if m else (fallback or "unknown")


def point(bench, where, precision):
    """One benchmark's roofline point: rates, ceilings, intensity and fraction of the ceiling."""
    gbps = number(bench, "GB/s", where)
    ceiling_gbps = number(bench, "ceiling_GB/s", where)
    ceiling_tflops = number(bench, "ceiling_TFLOP/s", where)
    if ceiling_gbps <= 0 or ceiling_tflops <= 0:
        raise InputError(f"{where}: a ceiling is zero")
    if "TFLOP/s" in bench:
        tflops = number(bench, "TFLOP/s", where)
    elif "FLOPs" in bench and "bytes" in bench:
        flops, nbytes = number(bench, "FLOPs", where), number(bench, "bytes", where)
        if nbytes <= 0:
            raise InputError(f"{where}: counter 'bytes' is zero")
        tflops = gbps * 1e9 * (flops / nbytes) / 1e12
    else:
        raise InputError(f"{where}: counter 'TFLOP/s' missing (nor 'FLOPs' and 'bytes' to derive it)")
    if gbps <= 0:
        raise InputError(f"{where}: counter 'GB/s' is zero")
    intensity = tflops * 1e12 / (gbps * 1e9)  # FLOP per byte
    if tflops > 0:
        attainable = min(ceiling_tflops * 1e12, intensity * ceiling_gbps * 1e9)
        fraction = tflops * 1e12 / attainable
        bound = "memory" if intensity * ceiling_gbps * 1e9 < ceiling_tflops * 1e12 else "compute"
    else:
        fraction = gbps / ceiling_gbps
        bound = "bytes-only"
    return {
        "name": bench["name"],
        "precision": precision,
        "gbps": gbps,
        "tflops": tflops,
        "intensity": intensity,
        "ceiling_gbps": ceiling_gbps,
        "ceiling_tflops": ceiling_tflops,
        "bound": bound,
        "fraction": fraction,
    }


def load_points(paths):
    """Every successful benchmark of every file, as roofline points."""
    points = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except OSError as e:
            raise InputError(f"{path}: cannot read: {e.strerror}")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: not valid JSON: {e}")
        if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), list):
            raise InputError(f"{path}: not Google Benchmark JSON (no 'benchmarks' list)")
        fallback = context_precision(doc)
        for i, bench in enumerate(doc["benchmarks"]):
            if not isinstance(bench, dict) or not isinstance(bench.get("name"), str):
                raise InputError(f"{path}: benchmarks[{i}] has no name")
            where = f"{path}: {bench['name']}"
            if bench.get("run_type", "iteration") != "iteration":
                continue  # mean / median / stddev rows of --benchmark_repetitions
            if bench.get("error_occurred"):
                print(f"note: {where}: left out: {bench.get('error_message', 'error')}", file=sys.stderr)
                continue
            if not any(k in bench for k in RATE_COUNTERS):
                # Not a kernel benchmark (bench_session.cpp's whole network counts images/s).
                print(f"note: {where}: left out: no byte or FLOP counters", file=sys.stderr)
                continue
            points.append(point(bench, where, benchmark_precision(bench["name"], fallback)))
    if not points:
        raise InputError("no benchmark with counters in " + ", ".join(paths))
    return points


def table(points):
    """The fraction-of-ceiling table, one line a benchmark, furthest from its ceiling first."""
    lines = [f"{'precision':<9} {'fraction':>8} {'bound':<10} {'FLOP/B':>9} {'GB/s':>9} {'TFLOP/s':>9}  benchmark"]
    for p in sorted(points, key=lambda p: (p["precision"], p["fraction"], p["name"])):
        lines.append(
            f"{p['precision']:<9} {p['fraction']:>8.3f} {p['bound']:<10} {p['intensity']:>9.3f} "
            f"{p['gbps']:>9.1f} {p['tflops']:>9.3f}  {p['name']}"
        )
    return "\n".join(lines)


def short_label(name):
    """The name less its precision suffix: 'depthwise/b0/112x112xC32/k3s1/ours_fp16' -> '.../ours'."""
    return re.sub(r"_(fp16|bf16|fp32)$", "", name)


def draw(points, precision, path, plt):
    """One roofline chart for one precision's points."""
    fig, ax = plt.subplots(figsize=(12, 8), dpi=120)
    drawn = [p for p in points if p["tflops"] > 0]
    xs = [p["intensity"] for p in drawn] or [1.0]
    lo, hi = min(xs) / 4, max(xs) * 4
    for bw, peak in sorted({(p["ceiling_gbps"], p["ceiling_tflops"]) for p in points}):
        ridge = peak * 1e12 / (bw * 1e9)
        lo, hi = min(lo, ridge / 4), max(hi, ridge * 4)
    grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    for bw, peak in sorted({(p["ceiling_gbps"], p["ceiling_tflops"]) for p in points}):
        ax.plot(grid, [min(peak * 1e12, x * bw * 1e9) for x in grid], "k-", lw=1.5)
        ax.text(grid[0], grid[0] * bw * 1e9 * 1.15, f"copy {bw:.0f} GB/s", fontsize=8, rotation=0)
        ax.axhline(peak * 1e12, color="k", ls=":", lw=0.8)
        ax.text(grid[-1], peak * 1e12 * 1.08, f"GEMM {peak:.1f} TFLOP/s", fontsize=8, ha="right")
    families = sorted({p["name"].split("/")[0] for p in drawn})
    cmap = plt.get_cmap("tab20")
    for i, fam in enumerate(families):
        mine = [p for p in drawn if p["name"].split("/")[0] == fam]
        ax.scatter([p["intensity"] for p in mine], [p["tflops"] * 1e12 for p in mine], s=18,
                   color=cmap(i % 20), label=fam, zorder=3)
        for p in mine:
            ax.annotate(short_label(p["name"]), (p["intensity"], p["tflops"] * 1e12), fontsize=4,
                        xytext=(2, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("FLOP/s")
    left_out = len(points) - len(drawn)
    ax.set_title(f"effnet kernels, {precision}" + (f" ({left_out} bytes-only kernels not drawn)" if left_out else ""))
    if families:
        ax.legend(fontsize=7, loc="lower right")
    ax.grid(True, which="both", lw=0.3, alpha=0.5)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json", nargs="+", help="Google Benchmark JSON files (--benchmark_out_format=json)")
    ap.add_argument("--out-dir", default=".", help="where roofline_<precision>.png go (default: .)")
    ap.add_argument("--no-plot", action="store_true", help="print the table only")
    args = ap.parse_args(argv)
    try:
        points = load_points(args.json)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(points))
    if args.no_plot:
        return 0
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("error: matplotlib is not installed (pip install matplotlib), or pass --no-plot", file=sys.stderr)
        return 1
    try:
        os.makedirs(args.out_dir, exist_ok=True)
    except OSError as e:
        print(f"error: {args.out_dir}: cannot create: {e.strerror}", file=sys.stderr)
        return 2
    for precision in sorted({p["precision"] for p in points}):
        path = os.path.join(args.out_dir, f"roofline_{precision}.png")
        draw([p for p in points if p["precision"] == precision], precision, path, plt)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
