#!/usr/bin/env python3
"""The PyTorch baseline scripts without a GPU or torch: bench/pytorch_bench.py and
bench/pytorch_train_bench.py --dry-run (exit 0, the plan lists every mode of every headline
configuration, torch never imported: the test runs them with a `torch` module that raises on
import first on the path), their argument validation (exit 2 with an "error:" line naming the
bad value), and bench/baseline_report.py on hand-written JSON lines whose ratios are worked out
by hand below (exact decimal arithmetic on the fixture's numbers, printed to 2 places).
Prints "N passed, M failed" last; exit status 1 when a check failed."""
import json
import os
import subprocess
import sys
import tempfile

SOURCE = os.environ.get("EFFNET_SOURCE_DIR",
                        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BENCH = os.path.join(SOURCE, "bench", "pytorch_bench.py")
TRAIN = os.path.join(SOURCE, "bench", "pytorch_train_bench.py")
REPORT = os.path.join(SOURCE, "bench", "baseline_report.py")
passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print(f"FAIL: {what}")


def run(script, *args, poison_dir=None):
    env = dict(os.environ)
    if poison_dir:  # any `import torch` / `import torchvision` fails loudly
        env["PYTHONPATH"] = poison_dir + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=120, env=env)


def plan_modes(stdout):
    """'plan b0:256:fp16 res 224 mode half (...) timing pipelined+per-call ...' -> {(config, mode)}"""
    got = set()
    for line in stdout.splitlines():
        w = line.split()
        if len(w) > 5 and w[0] == "plan" and w[4] == "mode":
            got.add((w[1], w[5]))
            check("pipelined" in line and "per-" in line and "allocator-peak" in line,
                  f"plan line names both timings and the memory method: {line}")
    return got


def test_dry_runs(poison):
    p = run(BENCH, "--headline", "--dry-run", poison_dir=poison)
    check(p.returncode == 0, f"pytorch_bench --headline --dry-run exits 0 (rc {p.returncode}: {p.stderr[-300:]})")
    got = plan_modes(p.stdout)
    fp16 = ["half", "fp16-cl", "graph", "compile", "compile-ro", "compile-max"]
    fp32 = ["fp32", "fp32-cl", "fp32-graph", "fp32-compile", "fp32-compile-ro", "fp32-compile-max"]
    want = {(c, m) for c in ("b0:1:fp16", "b0:32:fp16", "b0:256:fp16", "b4:64:fp16", "b7:32:fp16") for m in fp16}
    want |= {("b0:256:fp32", m) for m in fp32}
    check(got == want, f"inference plan is every mode of every headline config; missing {sorted(want - got)}, "
                       f"extra {sorted(got - want)}")
    # The flags tools/gpu_check.sh passes still parse.
    p = run(BENCH, "--spec", "b0:256:compile", "--spec", "b0:32:compile-ro", "--iters", "30", "--warmup", "5",
            "--compile-deadline", "9999999999", "--ready-file", "/tmp/r", "--wait-file", "/tmp/w",
            "--json-out", "/dev/null", "--time-budget", "100", "--compile-cap-s", "60", "--dry-run", poison_dir=poison)
    check(p.returncode == 0 and plan_modes(p.stdout) == {("b0:256:fp16", "compile"), ("b0:32:fp16", "compile-ro")},
          f"older specs and gpu_check.sh's flags parse (rc {p.returncode}: {p.stderr[-300:]})")
    p = run(BENCH, "--env", "--ceilings", "--json-out", "/dev/null", "--dry-run", poison_dir=poison)
    check(p.returncode == 0 and "env and ceilings" in p.stdout, "--env --ceilings --dry-run")

    p = run(TRAIN, "--headline", "--dry-run", poison_dir=poison)
    check(p.returncode == 0, f"pytorch_train_bench --headline --dry-run exits 0 (rc {p.returncode}: {p.stderr[-300:]})")
    got = plan_modes(p.stdout)
    want = {(f"{v}:{b}:{prec}", m) for v, b in (("b0", 128), ("b4", 32), ("b7", 8))
            for prec in ("amp-fp16", "fp32") for m in ("eager", "compile", "graph")}
    check(got == want, f"training plan: missing {sorted(want - got)}, extra {sorted(got - want)}")
    check("optimizer sgd lr 0.1 momentum 0.9 weight decay 0.0001" in p.stdout and "stochastic depth on" in p.stdout
          and "synthetic" in p.stdout, "training plan states effnet-train's optimizer, dropout and the input path")
    p = run(TRAIN, "--spec", "b0:128:amp-fp16:graph", "--dropout", "off", "--dry-run", poison_dir=poison)
    check(p.returncode == 0 and "stochastic depth off" in p.stdout
          and plan_modes(p.stdout) == {("b0:128:amp-fp16", "graph")}, "--dropout off, one mode")


def test_validation(poison):
    cases = [
        (BENCH, ["--spec", "b9:32:fp16:all"], "unknown model 'b9'"),
        (BENCH, ["--spec", "b0:32:fp8:all"], "unknown precision 'fp8'"),
        (BENCH, ["--spec", "b0:32:fp16:jit"], "unknown mode 'jit'"),
        (BENCH, ["--spec", "b0:32:fp32:autocast"], "unknown mode 'autocast' for fp32"),
        (BENCH, ["--spec", "b0:32:warp"], "unknown mode 'warp'"),
        (BENCH, ["--spec", "b0:x:fp16:all"], "not an integer"),
        (BENCH, ["--spec", "b0:0:fp16:all"], "batch must be in"),
        (BENCH, ["--variant", "b0", "--batch", "8", "--precision", "int8"], "unknown precision 'int8'"),
        (BENCH, ["--headline", "--iters", "0"], "--iters"),
        (BENCH, [], "nothing to do"),
        (TRAIN, ["--spec", "b8:8:fp32"], "unknown model 'b8'"),
        (TRAIN, ["--spec", "b0:8:fp16"], "unknown precision 'fp16'"),
        (TRAIN, ["--spec", "b0:8:fp32:jit"], "unknown mode 'jit'"),
        (TRAIN, ["--headline", "--modes", "warp"], "unknown mode 'warp'"),
        (TRAIN, [], "nothing to do"),
    ]
    for script, args, msg in cases:
        p = run(script, *args, "--dry-run", poison_dir=poison)
        check(p.returncode == 2 and "error:" in p.stderr and msg in p.stderr,
              f"{os.path.basename(script)} {' '.join(args)}: exit 2 with '{msg}' (rc {p.returncode}: {p.stderr[-200:]})")
    p = run(TRAIN, "--headline", "--dropout", "maybe", "--dry-run", poison_dir=poison)
    check(p.returncode == 2 and "maybe" in p.stderr, "--dropout maybe is refused with exit 2")


def fixture_rows():
    def t(v, b, prec, mode, ips_pipe, ms_p50, status="ok", peak=None):
        r = {"tool": "pytorch", "variant": v, "batch": b, "precision": prec, "mode": mode, "status": status}
        if status == "ok":
            r.update(images_per_s=b / (ms_p50 * 1e-3), images_per_s_pipelined=ips_pipe, ms_p50=ms_p50,
                     mem_peak_bytes=peak or 2**30, memory_method="allocator statistics (max_memory_allocated)")
            if prec == "fp32":
                r["tf32_allowed"] = True
        return r

    def e(v, b, prec, ips_pipe, ms_p50, tf32=False, **extra):
        r = {"tool": "effnet-bench", "variant": v, "batch": b, "precision": prec, "gemm": "auto", "autotune": True,
             "fused": False, "graph": True, "tf32": tf32, "ms_p50": ms_p50, "images_per_s": b / (ms_p50 * 1e-3),
             "images_per_s_pipelined": ips_pipe, "peak_device_memory_bytes": 2**29}
        r.update(extra)
        return r

    return [
        {"tool": "env", "gpu": "fixture"},
        # B0 b256 fp16: compile best pipelined (32,000), graph best per call (8.0 ms).
        t("b0", 256, "fp16", "half", 20000, 12.8), t("b0", 256, "fp16", "graph", 30000, 8.0),
        t("b0", 256, "fp16", "compile", 32000, 8.4), t("b0", 256, "fp16", "compile-max", 0, 0, status="skipped: time budget"),
        e("b0", 256, "fp16", 80000, 3.2),
        e("b0", 256, "fp16", 1000, 99.0, fused=True),  # not the default path: ignored
        # B0 b1 fp16: compile-ro best both ways.
        t("b0", 1, "fp16", "half", 150, 6.5), t("b0", 1, "fp16", "compile-ro", 1500, 0.70),
        e("b0", 1, "fp16", 3000, 0.35),
        # B0 b256 fp32: effnet true fp32 and with --tf32.
        t("b0", 256, "fp32", "fp32", 10000, 25.6), t("b0", 256, "fp32", "fp32-compile", 12500, 20.0),
        e("b0", 256, "fp32", 15000, 16.0), e("b0", 256, "fp32", 20000, 12.8, tf32=True),
        # B7 b32: PyTorch only.
        t("b7", 32, "fp16", "half", 450, 71.0),
        # training
        {"tool": "pytorch-train", "variant": "b0", "batch": 128, "precision": "amp-fp16", "mode": "eager",
         "images_per_s": 2900, "peak_memory_bytes": 6 * 2**30, "status": "ok", "dropout": "on"},
        {"tool": "pytorch-train", "variant": "b0", "batch": 128, "precision": "amp-fp16", "mode": "graph",
         "images_per_s": 3200, "peak_memory_bytes": 5 * 2**30, "status": "ok", "dropout": "on"},
        {"tool": "effnet-train", "variant": "b0", "batch": 128, "precision": "amp-fp16", "images_per_s": 4800,
         "peak_device_memory_bytes": 3 * 2**30, "input": "prefetch"},
    ]


def row_of(md, config):
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == config:
            return cells
    return None


def test_report(tmp):
    path = os.path.join(tmp, "results.jsonl")
    with open(path, "w") as f:
        for r in fixture_rows():
            f.write(json.dumps(r) + "\n")
        f.write("not json: a log line\n")
    out = os.path.join(tmp, "baseline.md")
    p = run(REPORT, "--results", path, "--out", out)
    check(p.returncode == 0, f"baseline_report exits 0 (rc {p.returncode}: {p.stderr[-300:]})")
    md = open(out).read() if os.path.exists(out) else ""
    # By hand: 80000 / 32000 = 2.50; 3.2 / 8.0 = 0.40.
    r = row_of(md, "b0 b256 fp16")
    check(r is not None and r[1] == "32,000 img/s (compile)" and r[2] == "80,000 img/s" and r[3] == "2.50x"
          and r[4] == "8.000 ms (graph)" and r[5] == "3.200 ms" and r[6] == "0.40x" and r[7] == "compile-max",
          f"b0 b256 fp16 row: {r}")
    # 3000 / 1500 = 2.00; 0.35 / 0.70 = 0.50.
    r = row_of(md, "b0 b1 fp16")
    check(r is not None and r[1] == "1,500 img/s (compile-ro)" and r[3] == "2.00x" and r[4] == "0.700 ms (compile-ro)"
          and r[6] == "0.50x", f"b0 b1 fp16 row: {r}")
    # fp32: 15000 / 12500 = 1.20, 16.0 / 20.0 = 0.80; with effnet TF32: 20000 / 12500 = 1.60, 12.8 / 20.0 = 0.64.
    r = row_of(md, "b0 b256 fp32")
    check(r is not None and r[1] == "12,500 img/s (fp32-compile)" and r[3] == "1.20x" and r[6] == "0.80x",
          f"b0 b256 fp32 row: {r}")
    r = row_of(md, "b0 b256 fp32 (effnet tf32)")
    check(r is not None and r[3] == "1.60x" and r[6] == "0.64x", f"b0 b256 fp32 tf32 row: {r}")
    check("PyTorch allowed" in md, "the fp32 TF32 setting of each side is stated")
    r = row_of(md, "b7 b32 fp16")
    check(r is not None and r[2] == "not measured" and r[3] == "-", f"PyTorch-only config: {r}")
    # Training: best PyTorch is the graph step, 4800 / 3200 = 1.50; memory 3 GiB / 5 GiB = 0.60.
    r = row_of(md, "b0 b128 amp-fp16")
    check(r is not None and r[1] == "3,200 (graph)" and r[3] == "1.50x" and r[6] == "0.60x", f"training row: {r}")
    # Memory: effnet 512 MiB / PyTorch 1024 MiB (best pipelined mode's row) = 0.50.
    mem = md.split("## Peak memory")[1] if "## Peak memory" in md else ""
    r = row_of(mem, "b0 b256 fp16")
    check(r is not None and r[1] == "1,024 MiB" and r[2] == "512 MiB" and r[3] == "0.50x", f"memory row: {r}")
    check("allocator statistics" in mem and "own count" in mem, "the memory methods are stated")
    # Bad input.
    bad = os.path.join(tmp, "bad.jsonl")
    with open(bad, "w") as f:
        f.write('{"tool": "pytorch", \n')
    p = run(REPORT, "--results", bad)
    check(p.returncode == 2 and "bad.jsonl:1" in p.stderr, f"a broken JSON line: exit 2 naming it ({p.stderr[-200:]})")
    p = run(REPORT, "--results", os.path.join(tmp, "missing.jsonl"))
    check(p.returncode == 2 and "cannot read" in p.stderr, "a missing file: exit 2")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        poison = os.path.join(tmp, "poison")
        os.makedirs(poison)
        for name in ("torch", "torchvision"):
            with open(os.path.join(poison, f"{name}.py"), "w") as f:
                f.write(f"raise ImportError('the dry run must not import {name}')\n")
        test_dry_runs(poison)
        test_validation(poison)
        test_report(tmp)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
