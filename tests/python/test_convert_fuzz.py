#!/usr/bin/env python3
"""A short run (35 s, one worker, fixed seed) of the converter's mutation fuzzer,
tests/fuzz/convert_fuzz.py: every mutated checkpoint must convert, or fail with exit 1 and one
`error:` line, without a traceback, MemoryError, timeout, or output / temporary file left.
The long run and what it found are in tests/fuzz/converter.md.

Exits non-zero when an input fails (the inputs are saved under a temporary folder and named in
the output) or when the fuzzer ran too few inputs to mean anything.
"""
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("EFFNET_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
FUZZER = os.path.join(SOURCE_DIR, "tests", "fuzz", "convert_fuzz.py")
DURATION_S = 35
MIN_EXECS = 100  # ~1,000 on an idle core; far fewer means the fuzzer is broken or starved


def main():
    crash_dir = tempfile.mkdtemp(prefix="convert_fuzz_crashes.")
    stats = os.path.join(crash_dir, "stats.json")
    r = subprocess.run([sys.executable, FUZZER, "--seed", "7", "--duration", str(DURATION_S),
                        "--workers", "1", "--crash-dir", crash_dir, "--stats-json", stats],
                       capture_output=True, text=True, timeout=DURATION_S * 10)
    print(r.stdout[-6000:])
    if r.returncode != 0:
        print(r.stderr[-4000:])
        print(f"FAIL fuzzer exit {r.returncode}; failing inputs kept in {crash_dir}")
        return 1
    with open(stats) as f:
        execs = json.load(f)["execs"]
    if execs < MIN_EXECS:
        print(f"FAIL only {execs} executions in {DURATION_S} s")
        return 1
    os.unlink(stats)
    os.rmdir(crash_dir)
    print(f"1 passed, 0 failed ({execs} executions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
