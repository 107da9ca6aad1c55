#!/usr/bin/env python3
"""bench/cpu_compare.py without its engines (CPU only, no torch needed).

(a) merge_runs, the --repeat combination, on hand-worked runs: the median of the runs' medians
    and the min of their mins (effnet-bench's per-batch fields follow at batch 8), the runs'
    medians kept; one run passes through unchanged; a failed run makes the merged record that
    failure.
(b) Bad command lines exit 2 with the reason: --repeat 0 and 21, an unknown engine, a bad config.
(c) --report-from on a fixture of repeated runs: the table shows the merged medians and mins, the
    speedup of effnet over the best other engine by median (worked out below), and the protocol
    line names the repeats.
Prints "N passed, M failed" last; exits 1 on any failure, else 0.
"""
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

SOURCE = os.environ.get("EFFNET_SOURCE_DIR",
                        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SCRIPT = os.path.join(SOURCE, "bench", "cpu_compare.py")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checks import Checks  # noqa: E402

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
spec = importlib.util.spec_from_file_location("cpu_compare", SCRIPT)
cpu_compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cpu_compare)

checks = Checks()
check = checks.check


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=120)


# (a) Three effnet runs at batch 8: medians 4.0, 5.5, 4.2 -> median 4.2; mins 3.9, 4.1, 3.8 -> 3.8;
# per batch: 4.2 * 8 = 33.6 and 3.8 * 8 = 30.4.
runs = [{"ms_per_image_median": m, "ms_per_image_min": n, "ms_per_batch_median": m * 8, "batch": 8, "iters": i}
        for m, n, i in ((4.0, 3.9, 10), (5.5, 4.1, 11), (4.2, 3.8, 12))]
merged = cpu_compare.merge_runs(runs)
check(merged["ms_per_image_median"] == 4.2, f"median of medians: {merged['ms_per_image_median']}")
check(merged["ms_per_image_min"] == 3.8, f"min of mins: {merged['ms_per_image_min']}")
check(abs(merged["ms_per_batch_median"] - 33.6) < 1e-9 and abs(merged["ms_per_batch_min"] - 30.4) < 1e-9,
      f"per-batch fields: {merged['ms_per_batch_median']}, {merged.get('ms_per_batch_min')}")
check(merged["run_medians_ms_per_image"] == [4.0, 5.5, 4.2], "the runs' medians are kept")
check(runs[0]["ms_per_image_median"] == 4.0, "merge_runs leaves its input alone")
# Two runs: the median of 6.0 and 7.0 is 6.5 (statistics.median averages the middle two).
two = cpu_compare.merge_runs([{"ms_per_image_median": 6.0, "ms_per_image_min": 5.0},
                              {"ms_per_image_median": 7.0, "ms_per_image_min": 5.5}])
check(two["ms_per_image_median"] == 6.5 and two["ms_per_image_min"] == 5.0, f"two runs: {two}")
one = cpu_compare.merge_runs([{"ms_per_image_median": 9.0, "ms_per_image_min": 8.0}])
check(one == {"ms_per_image_median": 9.0, "ms_per_image_min": 8.0}, f"one run passes through: {one}")
bad = cpu_compare.merge_runs([runs[0], {"error": "exit status 3"}, runs[2]])
check(bad.get("error") == "exit status 3", f"a failed run makes the record a failure: {bad}")

# (b) Bad command lines.
for args, reason in ((["--repeat", "0"], "--repeat must be 1..20"), (["--repeat", "21"], "--repeat must be 1..20"),
                     (["--engines", "effnet,tensorrt"], "unknown engine tensorrt"),
                     (["--configs", "b9:1"], "bad config b9:1")):
    r = run(*args, "--effnet-bench", sys.executable)
    check(r.returncode == 2 and reason in r.stderr, f"{args}: exit {r.returncode}, stderr {r.stderr[-200:]!r}")

# (c) --report-from: lite0 batch 1, 2 threads, each engine's runs merged as in (a) (the values
# are worked out next to the fixture).
with tempfile.TemporaryDirectory() as tmp:
    records = [
        {"tool": "env", "versions": {"effnet": "test"}, "machine": {"model_name": "test CPU", "cpus": 2},
         "command": "python3 bench/cpu_compare.py --repeat 3 --rounds 5 --round-s 0.5"},
        {"tool": "effnet-cpu-peak", "isa": "avx512", "supported": True, "threads": 2, "gflops": 400.0},
    ]

    def rec(engine, medians, mins, **extra):
        r = cpu_compare.merge_runs([{"ms_per_image_median": m, "ms_per_image_min": n, "rel_err_vs_fp64": 3e-6}
                                    for m, n in zip(medians, mins)])
        r.update({"tool": "cpu_compare", "engine": engine, "model": "lite0", "batch": 1, "threads": 2,
                  "variant": engine + " variant"}, **extra)
        return r

    # effnet: median(4.1, 3.9, 4.0) = 4.0, min 3.7; ORT: median(4.3, 4.6, 4.2) = 4.3, min 4.1;
    # OpenVINO: median(4.1, 5.0, 4.0) = 4.1, min 3.9 -> the best other by median is OpenVINO:
    # 4.1 / 4.0 -> "1.02x" (the double nearest 4.1 / 4.0 is just below 1.025). torch_eager (run
    # once): 16.0 / 4.0 = 4.00x.
    records += [rec("effnet", [4.1, 3.9, 4.0], [3.8, 3.7, 3.9], flops_per_image=0.77e9),
                rec("onnxruntime", [4.3, 4.6, 4.2], [4.2, 4.1, 4.15]),
                rec("openvino", [4.1, 5.0, 4.0], [4.0, 3.9, 3.95]),
                rec("torch_eager", [16.0], [15.5])]
    fixture = os.path.join(tmp, "runs.jsonl")
    with open(fixture, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    report = os.path.join(tmp, "report.md")
    r = run("--report-from", fixture, "--report", report)
    check(r.returncode == 0, f"--report-from exit {r.returncode}: {r.stderr[-300:]}")
    text = open(report).read() if os.path.exists(report) else ""
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in text.splitlines() if line.startswith("| ") and not line.startswith("| engine")}
    check(rows.get("effnet", [""] * 9)[3:5] == ["4.000", "3.700"], f"effnet row: {rows.get('effnet')}")
    check(rows.get("onnxruntime", [""] * 9)[3:5] == ["4.300", "4.100"], f"ORT row: {rows.get('onnxruntime')}")
    check(rows.get("openvino", [""] * 9)[3:5] == ["4.100", "3.900"], f"OpenVINO row: {rows.get('openvino')}")
    check("**1.02x** vs openvino" in rows.get("effnet", [""] * 9)[8], f"effnet speedup: {rows.get('effnet')}")
    check(rows.get("torch_eager", [""] * 9)[8] == "4.00x", f"torch_eager ratio: {rows.get('torch_eager')}")
    check("ran 3 times each, interleaved" in text, "the protocol line names the repeats")

checks.finish()
