#!/usr/bin/env python3
"""effnet against the best PyTorch mode of the same run, as a markdown table.

Reads JSON lines (bench/pytorch_bench.py's {"tool": "pytorch"} rows, effnet-bench --json's
{"tool": "effnet-bench"} rows, and, for training, {"tool": "pytorch-train"} and
{"tool": "effnet-train"} rows; anything else is ignored) from one or more files of ONE run, and
writes per configuration (model, batch, precision):
  pipelined: the best PyTorch mode by images_per_s_pipelined, its img/s, effnet's, and the ratio
             effnet / PyTorch (> 1: effnet faster);
  per call:  the best PyTorch mode by median latency (ms_p50), its ms, effnet's, and the ratio
             effnet / PyTorch (< 1: effnet faster);
the PyTorch modes measured and those that failed or were skipped, and the peak memory of each side
with how it was measured. effnet rows are its default path (no --unfused/--fused/--no-graph,
--gemm auto, autotuned); fp32 gets a second line for effnet --tf32. Standard library only.

  bench/baseline_report.py --results OUT/results.jsonl [--results more.jsonl] [--out baseline.md]
Exit status 2 on a missing file or a line that is not JSON.
"""
import argparse
import json
import sys

EFFNET_MEMORY = "effnet's own count (peak_device_memory: weights + activation arena + workspaces)"


def load(paths):
    rows = []
    for path in paths:
        try:
            with open(path) as f:
                for n, line in enumerate(f, 1):
                    line = line.strip()
                    if not line or not line.startswith("{"):
                        continue
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{n}: not JSON ({e.msg})")
        except OSError as e:
            raise ValueError(f"cannot read {path}: {e.strerror}")
    return rows


def torch_precision(r):
    if r.get("precision") in ("fp16", "fp32"):
        return r["precision"]
    return "fp32" if str(r.get("mode", "")).startswith("fp32") else "fp16"  # older rows


def default_effnet(r):
    return (not r.get("fused", False) and r.get("graph", True) and r.get("gemm", "auto") == "auto"
            and r.get("autotune", True) is not False)


def fnum(x, digits=0):
    return f"{x:,.{digits}f}" if x is not None else "-"


def mib(b):
    return f"{b / 2**20:,.0f} MiB" if b else "-"


def inference_rows(rows):
    """-> list of dicts, one per (variant, batch, precision, effnet tf32)."""
    torch_by_config, effnet_by_key = {}, {}
    for r in rows:
        if r.get("tool") == "pytorch" and r.get("variant") and r.get("batch"):
            key = (r["variant"], int(r["batch"]), torch_precision(r))
            torch_by_config.setdefault(key, {})
            old = torch_by_config[key].get(r.get("mode"))
            if old is None or r.get("status") == "ok" or old.get("status") != "ok":
                torch_by_config[key][r.get("mode")] = r  # a measurement is never replaced by a skip
        elif r.get("tool") == "effnet-bench" and default_effnet(r) and r.get("variant"):
            effnet_by_key[(r["variant"], int(r["batch"]), r.get("precision"), bool(r.get("tf32")))] = r
    keys = {(v, b, p, False) for v, b, p in torch_by_config} | set(effnet_by_key)
    out = []
    for v, b, p, tf32 in sorted(keys, key=lambda k: (k[0], k[2], k[1], k[3])):
        modes = torch_by_config.get((v, b, p), {})
        ok = [r for r in modes.values() if r.get("status", "ok") == "ok" and r.get("images_per_s")]
        bp = max(ok, key=lambda r: r.get("images_per_s_pipelined") or 0, default=None)
        bc = min(ok, key=lambda r: r["ms_p50"], default=None)
        e = effnet_by_key.get((v, b, p, tf32))
        row = {"config": f"{v} b{b} {p}" + (" (effnet tf32)" if tf32 else ""), "torch_pipelined_mode": None,
               "torch_pipelined": None, "effnet_pipelined": None, "pipelined_ratio": None,
               "torch_per_call_mode": None, "torch_ms_p50": None, "effnet_ms_p50": None, "per_call_ratio": None,
               "measured": sorted(r["mode"] for r in ok),
               "missing": sorted(m for m, r in modes.items() if r not in ok),
               "torch_peak": bp.get("mem_peak_bytes", bp.get("mem_forward_peak_bytes")) if bp else None,
               "torch_memory_method": (bp or {}).get("memory_method", "max_memory_allocated (allocator statistics)"),
               "effnet_peak": e.get("peak_device_memory_bytes") if e else None,
               "torch_tf32": (bp or {}).get("tf32_allowed"), "effnet_tf32": tf32}
        if bp:
            row.update(torch_pipelined_mode=bp["mode"], torch_pipelined=bp.get("images_per_s_pipelined"))
        if bc:
            row.update(torch_per_call_mode=bc["mode"], torch_ms_p50=bc["ms_p50"])
        if e:
            row.update(effnet_pipelined=e.get("images_per_s_pipelined"), effnet_ms_p50=e.get("ms_p50"))
        if row["effnet_pipelined"] and row["torch_pipelined"]:
            row["pipelined_ratio"] = row["effnet_pipelined"] / row["torch_pipelined"]
        if row["effnet_ms_p50"] and row["torch_ms_p50"]:
            row["per_call_ratio"] = row["effnet_ms_p50"] / row["torch_ms_p50"]
        out.append(row)
    return out


def training_rows(rows):
    theirs, ours = {}, {}
    for r in rows:
        if r.get("tool") == "pytorch-train" and r.get("status", "ok") == "ok" and r.get("images_per_s"):
            key = (r["variant"], int(r["batch"]), r["precision"])
            if key not in theirs or r["images_per_s"] > theirs[key]["images_per_s"]:
                theirs[key] = r
        elif r.get("tool") == "effnet-train" and r.get("images_per_s") and not r.get("tf32") \
                and r.get("input", "prefetch") == "prefetch":
            ours[(r["variant"], int(r["batch"]), r["precision"])] = r
    out = []
    for key in sorted(set(theirs) | set(ours)):
        t, o = theirs.get(key), ours.get(key)
        out.append({"config": f"{key[0]} b{key[1]} {key[2]}", "torch_mode": t.get("mode", "eager") if t else None,
                    "torch": t["images_per_s"] if t else None, "effnet": o["images_per_s"] if o else None,
                    "ratio": o["images_per_s"] / t["images_per_s"] if t and o else None,
                    "torch_peak": t.get("peak_memory_bytes") if t else None,
                    "effnet_peak": o.get("peak_device_memory_bytes") if o else None,
                    "dropout": t.get("dropout") if t else None})
    return out


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def render(rows):
    inf, tr = inference_rows(rows), training_rows(rows)
    md = ["# effnet against the best PyTorch mode (same run)", ""]
    md.append("Pipelined: N calls back to back, one synchronise (img/s; ratio effnet / PyTorch, > 1 is effnet "
              "faster). Per call: median latency with a synchronise after each call (ms; ratio effnet / PyTorch, "
              "< 1 is effnet faster). The best PyTorch mode may differ between the two.")
    md.append("")
    md.append(table(["config", "PyTorch best pipelined (mode)", "effnet pipelined", "ratio",
                     "PyTorch best per call (mode)", "effnet per call", "ratio", "PyTorch modes not measured"],
                    [[r["config"],
                      f"{fnum(r['torch_pipelined'])} img/s ({r['torch_pipelined_mode']})" if r["torch_pipelined"] else "not measured",
                      f"{fnum(r['effnet_pipelined'])} img/s" if r["effnet_pipelined"] else "not measured",
                      f"{r['pipelined_ratio']:.2f}x" if r["pipelined_ratio"] else "-",
                      f"{r['torch_ms_p50']:.3f} ms ({r['torch_per_call_mode']})" if r["torch_ms_p50"] else "not measured",
                      f"{r['effnet_ms_p50']:.3f} ms" if r["effnet_ms_p50"] else "not measured",
                      f"{r['per_call_ratio']:.2f}x" if r["per_call_ratio"] else "-",
                      ", ".join(r["missing"]) or "none"] for r in inf]))
    fp32 = [r for r in inf if r["config"].split()[2] == "fp32"]
    if fp32:
        md.append("")
        md.append("TF32: " + "; ".join(f"{r['config']}: PyTorch {'allowed' if r['torch_tf32'] else 'not allowed' if r['torch_tf32'] is False else 'unknown'}, "
                                       f"effnet {'on' if r['effnet_tf32'] else 'off (true fp32)'}" for r in fp32) + ".")
    md += ["", "## Peak memory", ""]
    md.append(table(["config", "PyTorch (best pipelined mode)", "effnet", "effnet / PyTorch"],
                    [[r["config"], mib(r["torch_peak"]), mib(r["effnet_peak"]),
                      f"{r['effnet_peak'] / r['torch_peak']:.2f}x" if r["effnet_peak"] and r["torch_peak"] else "-"]
                     for r in inf]))
    md.append("")
    md.append(f"PyTorch: {inf[0]['torch_memory_method'] if inf else '-'}. effnet: {EFFNET_MEMORY}.")
    if tr:
        md += ["", "## Training step (img/s, peak memory)", ""]
        md.append(table(["config", "PyTorch best (mode)", "effnet", "ratio", "PyTorch peak", "effnet peak",
                         "memory ratio"],
                        [[r["config"], f"{fnum(r['torch'])} ({r['torch_mode']})" if r["torch"] else "not measured",
                          fnum(r["effnet"]) if r["effnet"] else "not measured",
                          f"{r['ratio']:.2f}x" if r["ratio"] else "-", mib(r["torch_peak"]), mib(r["effnet_peak"]),
                          f"{r['effnet_peak'] / r['torch_peak']:.2f}x" if r["effnet_peak"] and r["torch_peak"] else "-"]
                         for r in tr]))
        md.append("")
        md.append("PyTorch img/s: pipelined (steps back to back, one synchronise); effnet-train-bench's: batch / "
                  "median step (each step returns its loss, so synchronises). "
                  "PyTorch peak: allocator statistics (max_memory_allocated); effnet: its own count "
                  "(peak_device_memory). Dropout / stochastic depth on the PyTorch side: "
                  + ", ".join(sorted({str(r['dropout']) for r in tr if r['dropout']})) + ".")
    return "\n".join(md) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", action="append", required=True, help="JSON lines (repeatable)")
    ap.add_argument("--out", help="markdown file (default: stdout)")
    args = ap.parse_args(argv)
    try:
        rows = load(args.results)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    md = render(rows)
    if args.out:
        with open(args.out, "w") as f:
            f.write(md)
    else:
        sys.stdout.write(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
