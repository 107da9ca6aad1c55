#!/usr/bin/env python3
"""bench/roofline.py on a small hand-written Google-Benchmark-shaped JSON fixture (CPU only).

(a) The fraction-of-ceiling table: every row's fraction, bound and intensity equal the values
    worked out by hand below (each case's arithmetic is in its comment), errored benchmarks are
    and benchmarks without any byte or FLOP counter are left out, and the rows come
    furthest-from-ceiling first.
(b) Bad input exits 2 with an "error:" line: text that is not JSON, JSON without a benchmarks
    list, a benchmark without a ceiling counter, a non-numeric counter, a missing file, and a
    file whose every benchmark errored; a benchmark with a rate but no ceiling counter among good
    ones.
(c) With matplotlib: one PNG per precision, non-empty and starting with the PNG signature.
    Skipped (a "skipped:" line) when matplotlib is not installed.
Prints "N passed, M failed, K skipped" last; exits 1 on any failure, else 0.
"""
import json
import os
import subprocess
import sys
import tempfile

SOURCE = os.environ.get("EFFNET_SOURCE_DIR",
                        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SCRIPT = os.path.join(SOURCE, "bench", "roofline.py")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_env import skipped  # noqa: E402

passed = failed = skips = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print(f"FAIL: {what}", flush=True)


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=300)


def bench(name, **counters):
    b = {"name": name, "run_name": name, "run_type": "iteration", "iterations": 30, "real_time": 1.0,
         "cpu_time": 1.0, "time_unit": "us"}
    b.update(counters)
    return b


# Ceilings: fp16 run copy 2000 GB/s, GEMM 100 TFLOP/s (ridge at 100e12 / 2000e9 = 50 FLOP/B);
# fp32 run copy 3000 GB/s, GEMM 50 TFLOP/s.
FP16 = {"ceiling_GB/s": 2000.0, "ceiling_TFLOP/s": 100.0}
FP32 = {"ceiling_GB/s": 3000.0, "ceiling_TFLOP/s": 50.0}
FIXTURE_FP16 = {
    "context": {"ceilings": "D2D copy 2000 GB/s (read+write), cuBLASLt 8192^3 fp16 100.0 TFLOP/s, batch 32"},
    "benchmarks": [
        # AI = 0.5e12 / 1000e9 = 0.5 FLOP/B; attainable = min(100e12, 0.5 * 2000e9) = 1e12;
        # fraction = 0.5e12 / 1e12 = 0.5, memory-bound.
        bench("depthwise/b0/x/k3s1/ours_fp16", **{"GB/s": 1000.0, "TFLOP/s": 0.5}, **FP16),
        # AI = 40e12 / 100e9 = 400; attainable = min(100e12, 400 * 2000e9 = 800e12) = 100e12;
        # fraction = 0.4, compute-bound.
        bench("gemm/b0/head/cublaslt_fp16", **{"GB/s": 100.0, "TFLOP/s": 40.0}, **FP16),
        # No FLOPs: judged on bandwidth, 600 / 2000 = 0.3.
        bench("adamw/b0/P5288548/ours_fp16", **{"GB/s": 600.0, "TFLOP/s": 0.0}, **FP16),
        # No name suffix: the precision comes from the context line (fp16). AI = 1e12 / 500e9 = 2;
        # attainable = min(100e12, 2 * 2000e9 = 4e12); fraction = 1e12 / 4e12 = 0.25.
        bench("excite/b0/HW49", **{"GB/s": 500.0, "TFLOP/s": 1.0}, **FP16),
        # Errored (a skipped shape): left out of the table.
        {"name": "depthwise/b0/y/ours_fp16", "run_type": "iteration", "error_occurred": True,
         "error_message": "schedule not supported"},
        # A whole-network benchmark (images/s, no byte or FLOP counter): left out.
        bench("network/b0/batch32/fused_fp16", items_per_second=12345.0),
        # An aggregate row of --benchmark_repetitions: left out.
        bench("depthwise/b0/x/k3s1/ours_fp16_mean", run_type="aggregate", **{"GB/s": 1.0, "TFLOP/s": 1.0}, **FP16),
    ],
}
FIXTURE_FP32 = {
    "context": {},
    "benchmarks": [
        # No TFLOP/s counter: derived from FLOPs / bytes * GB/s = 3 * 1500e9 = 4.5e12; AI = 3;
        # attainable = min(50e12, 3 * 3000e9 = 9e12); fraction = 4.5 / 9 = 0.5, memory-bound.
        bench("classifier/b0/K1280_M1000/ours_fp32", **{"GB/s": 1500.0, "FLOPs": 3e9, "bytes": 1e9}, **FP32),
    ],
}
# name -> (precision, fraction, bound, intensity)
EXPECTED = {
    "depthwise/b0/x/k3s1/ours_fp16": ("fp16", 0.5, "memory", 0.5),
    "gemm/b0/head/cublaslt_fp16": ("fp16", 0.4, "compute", 400.0),
    "adamw/b0/P5288548/ours_fp16": ("fp16", 0.3, "bytes-only", 0.0),
    "excite/b0/HW49": ("fp16", 0.25, "memory", 2.0),
    "classifier/b0/K1280_M1000/ours_fp32": ("fp32", 0.5, "memory", 3.0),
}


def parse_table(stdout):
    rows = {}
    order = []
    for line in stdout.splitlines():
        f = line.split()
        if len(f) == 7 and f[0] in ("fp16", "bf16", "fp32", "unknown"):
            rows[f[6]] = (f[0], float(f[1]), f[2], float(f[3]))
            order.append(f[6])
    return rows, order


def write(d, name, content):
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(content if isinstance(content, str) else json.dumps(content))
    return path


def main():
    global skips
    with tempfile.TemporaryDirectory() as d:
        fp16 = write(d, "fp16.json", FIXTURE_FP16)
        fp32 = write(d, "fp32.json", FIXTURE_FP32)

        # (a) the table; printed to 3 decimals, so 5e-4 is the rounding of the print.
        r = run(fp16, fp32, "--no-plot")
        check(r.returncode == 0, f"table run exits 0 (got {r.returncode}: {r.stderr})")
        rows, order = parse_table(r.stdout)
        check(set(rows) == set(EXPECTED), f"table rows {sorted(rows)} == {sorted(EXPECTED)}")
        for name, (prec, frac, bound, ai) in EXPECTED.items():
            got = rows.get(name)
            check(got is not None and got[0] == prec, f"{name}: precision {got and got[0]} == {prec}")
            check(got is not None and abs(got[1] - frac) < 5e-4, f"{name}: fraction {got and got[1]} == {frac}")
            check(got is not None and got[2] == bound, f"{name}: bound {got and got[2]} == {bound}")
            check(got is not None and abs(got[3] - ai) < 5e-4 * max(1.0, ai), f"{name}: AI {got and got[3]} == {ai}")
        fp16_order = [n for n in order if rows[n][0] == "fp16"]
        check(fp16_order == ["excite/b0/HW49", "adamw/b0/P5288548/ours_fp16", "gemm/b0/head/cublaslt_fp16",
                             "depthwise/b0/x/k3s1/ours_fp16"], f"fp16 rows furthest first: {fp16_order}")
        check("schedule not supported" in r.stderr, "the errored benchmark is named on stderr")
        check("network/b0/batch32/fused_fp16" in r.stderr, "the counter-less benchmark is named on stderr")

        # (b) bad input: exit 2 and an error line.
        bad = {
            "not JSON": write(d, "bad1.json", "{ this is not json"),
            "no benchmarks list": write(d, "bad2.json", {"context": {}}),
            "ceiling missing": write(d, "bad3.json", {"benchmarks": [bench("a/ours_fp16", **{"GB/s": 1.0,
                                                                                             "TFLOP/s": 1.0})]}),
            "counter not a number": write(d, "bad4.json", {"benchmarks": [bench(
                "a/ours_fp16", **{"GB/s": "fast", "TFLOP/s": 1.0}, **FP16)]}),
            "missing file": os.path.join(d, "absent.json"),
            "every benchmark errored": write(d, "bad5.json", {"benchmarks": [
                {"name": "a", "run_type": "iteration", "error_occurred": True, "error_message": "x"}]}),
        }
        for what, path in bad.items():
            r = run(path, "--no-plot")
            check(r.returncode == 2, f"{what}: exit 2 (got {r.returncode})")
            check("error:" in r.stderr, f"{what}: an error line (got {r.stderr!r})")
        # A good file beside a bad one still fails.
        r = run(fp16, bad["ceiling missing"], "--no-plot")
        check(r.returncode == 2 and "ceiling_GB/s" in r.stderr, "a bad file among good ones: exit 2, names the counter")

        # (c) the charts.
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            skipped("roofline PNGs", "matplotlib not installed")
            skips += 1
        else:
            out = os.path.join(d, "charts")
            r = run(fp16, fp32, "--out-dir", out)
            check(r.returncode == 0, f"chart run exits 0 (got {r.returncode}: {r.stderr})")
            for prec in ("fp16", "fp32"):
                png = os.path.join(out, f"roofline_{prec}.png")
                ok = os.path.isfile(png) and os.path.getsize(png) > 0
                check(ok, f"{png} written, non-empty")
                if ok:
                    with open(png, "rb") as f:
                        check(f.read(8) == b"\x89PNG\r\n\x1a\n", f"{png} is a PNG")
            check(not os.path.exists(os.path.join(out, "roofline_bf16.png")), "no chart for an absent precision")

    print(f"{passed} passed, {failed} failed, {skips} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
