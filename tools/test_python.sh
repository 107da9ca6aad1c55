#!/usr/bin/env bash
# The Python package's tests: `pip install .` into a virtual environment at build/pyenv (made
# with --system-site-packages, so the system's NumPy and Pillow are reused; scikit-build-core,
# nanobind and pytest are installed into it from PyPI once), built without CUDA to keep this
# fast (the CUDA build is what `pip install .` does where nvcc exists; its paths are tested on a
# GPU machine), in the persistent build directory build/pybuild (reruns are incremental), then
# pytest on python/tests. Tests that compare with the programs use build/examples/effnet-run and
# effnet-classify (EFFNET_BINARY_DIR, default build/: tools/test.sh builds them first); GPU and
# PyTorch tests are reported as skipped where there is none. Exits non-zero on any failure, and
# when pytest collects no test; pytest's summary line is the last line.
#
#   tools/test_python.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=${EFFNET_PYENV:-$root/build/pyenv}
python=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
  echo "== python venv: $venv (with the system's site-packages)"
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv --system-site-packages "$venv"
fi
py="$venv/bin/python"
missing=()
"$py" -c "import scikit_build_core" 2>/dev/null || missing+=("scikit-build-core>=0.10")
"$py" -c "import nanobind" 2>/dev/null || missing+=("nanobind>=2.0")
"$py" -c "import pytest" 2>/dev/null || missing+=(pytest)
"$py" -c "import numpy" 2>/dev/null || missing+=(numpy)
if ((${#missing[@]})); then
  echo "== pip install ${missing[*]}"
  "$py" -m pip install -q --disable-pip-version-check "${missing[@]}"
fi

echo "== pip install . (CPU build, build dir build/pybuild)"
start=$(date +%s)
CMAKE_BUILD_PARALLEL_LEVEL=${EFFNET_JOBS:-$(nproc)} "$py" -m pip install -q --disable-pip-version-check \
  --no-build-isolation --no-deps --force-reinstall \
  -C build-dir="$root/build/pybuild" -C cmake.define.EFFNET_ENABLE_CUDA=OFF "$root"
echo "built and installed in $(($(date +%s) - start)) s"

echo "== pytest python/tests"
cd "$root"
export EFFNET_SOURCE_DIR="$root"
export EFFNET_BINARY_DIR=${EFFNET_BINARY_DIR:-$root/build}
# -p no:cacheprovider: nothing written into the source tree. Exit 5 (no tests collected) is
# non-zero, so it fails this script as any other failure does.
exec "$py" -m pytest -p no:cacheprovider -rs "$@" python/tests
