"""The pass/fail tally of a test script: check(cond, what) counts and prints "FAIL: what" for each
failure; finish() prints "N passed, M failed" and exits 1 on any failure, else 0."""
import sys


class Checks:
    def __init__(self):
        self.passed = self.failed = 0

    def check(self, cond, what):
        if cond:
            self.passed += 1
        else:
            self.failed += 1
            print(f"FAIL: {what}", flush=True)

    def finish(self):
        print(f"{self.passed} passed, {self.failed} failed")
        sys.exit(1 if self.failed else 0)
