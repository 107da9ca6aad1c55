"""Whether the build under test has CUDA and whether this machine has a GPU (shared by the
program tests that take the GPU path where they can and check its error path where not)."""
import os
import re
import subprocess


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
