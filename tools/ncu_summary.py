#!/usr/bin/env python3
"""Sums an Nsight Compute CSV (--metrics gpu__time_duration.sum --csv --print-units base) by
kernel name: milliseconds per step, launches per step, share of the total.

  python3 tools/ncu_summary.py ncu.csv --steps 2
"""
import argparse
import collections
import csv
import sys


def short_name(name):
    # "void ns::kernel<T>(Args)" -> "kernel<T>": the template arguments tell the precisions apart.
    n = name.replace("(anonymous namespace)::", "").split("(")[0].strip()
    if n.startswith("void "):
        n = n[5:]
    return n.replace("effnet::kernels::", "")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--steps", type=float, default=1.0, help="steps the capture holds (divides the sums)")
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    with open(args.csv, newline="") as f:
        rows = [line for line in f if line.startswith('"')]
    if not rows:
        sys.exit(f"error: {args.csv} holds no CSV rows (did ncu run?)")
    total = collections.Counter()
    count = collections.Counter()
    for r in csv.DictReader(rows):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        try:
            ns = float(r["Metric Value"].replace(",", ""))
        except ValueError:
            continue
        k = short_name(r["Kernel Name"])
        total[k] += ns
        count[k] += 1
    grand = sum(total.values())
    print(f"{'ms/step':>9} {'share':>6} {'launches':>8}  kernel   (total {grand / 1e6 / args.steps:.3f} ms/step, "
          f"{sum(count.values()) / args.steps:.0f} launches/step)")
    for k, ns in total.most_common(args.top):
        print(f"{ns / 1e6 / args.steps:9.3f} {100 * ns / grand:5.1f}% {count[k] / args.steps:8.1f}  {k[:150]}")


if __name__ == "__main__":
    main()
