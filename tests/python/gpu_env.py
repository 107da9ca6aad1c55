"""Whether the build under test has CUDA and whether this machine has a GPU (shared by the
program tests that take the GPU path where they can and check its error path where not), and
how a test says what it skipped: a line "skipped: <what> (<why>)" for each part not run, and
exit status SKIP_EXIT (77, ctest's SKIP_RETURN_CODE in tests/CMakeLists.txt) when a script
skipped everything."""
import os
import re
import subprocess
import sys

SKIP_EXIT = 77


def skipped(what, why):
    """Says that a part of a test did not run, and why."""
    print(f"skipped: {what} ({why})", flush=True)


def skip_script(what, why):
    """Says that the whole script did not run, and exits so that ctest reports it skipped."""
    skipped(what, why)
    sys.exit(SKIP_EXIT)


def cuda_build(binary_dir):
    """True when the CMake build in binary_dir was configured with EFFNET_ENABLE_CUDA."""
    try:
        with open(os.path.join(binary_dir, "CMakeCache.txt")) as f:
            return re.search(r"^EFFNET_ENABLE_CUDA:BOOL=(ON|TRUE|1)$", f.read(), re.M) is not None
    except OSError:
        return False


def gpu_present():
    """True when nvidia-smi lists a GPU."""
    try:
        p = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return p.returncode == 0 and "GPU" in p.stdout


def no_gpu_reason(binary_dir):
    """Why the GPU path cannot run here ("" when it can)."""
    if not cuda_build(binary_dir):
        return "a build without CUDA"
    if not gpu_present():
        return "no GPU: nvidia-smi lists none"
    return ""
