#!/usr/bin/env bash
# Installs what the build and tests need on a fresh Debian machine (root), and nothing if it
# is already there. The CUDA toolkit is expected under /usr/local/cuda (it is on this kind of
# machine); without it, configure with -DEFFNET_ENABLE_CUDA=OFF.
set -euo pipefail
pkgs=(cmake g++ make python3 python3-pip python3-venv catch2 libstb-dev nlohmann-json3-dev libbenchmark-dev libxxhash-dev
  libjpeg62-turbo-dev
  openmpi-bin libopenmpi-dev) # openmpi: effnet-train's data-parallel training (optional for the build)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
py_missing=()
python3 -c "import numpy" 2>/dev/null || py_missing+=(numpy)
python3 -c "import PIL" 2>/dev/null || py_missing+=(pillow)
python3 -c "import xxhash" 2>/dev/null || py_missing+=(xxhash)
python3 -c "import matplotlib" 2>/dev/null || py_missing+=(matplotlib) # bench/roofline.py charts
if ((${#py_missing[@]})); then
  echo "installing (pip): ${py_missing[*]}"
  python3 -m pip install -q "${py_missing[@]}" 2>/dev/null ||
    python3 -m pip install -q --break-system-packages "${py_missing[@]}"
fi
