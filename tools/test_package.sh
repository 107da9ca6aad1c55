#!/usr/bin/env bash
# The Debian package: builds it with cpack from a configured, built tree (default: build), installs
# it with dpkg as a user would, builds the out-of-tree consumer (examples/consumer) against the
# installed /usr tree with no hint where effnet is, runs it and the installed programs, then
# removes the package again. Needs root (dpkg -i); without root, or when an effnet package that
# this script did not install is already present, it installs nothing and says "skipped".
# Exit status: 0 passed or skipped, 1 failed. The last line is "package: passed|skipped|failed".
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
build=${1:-build}
jobs=${EFFNET_JOBS:-$(nproc)}

echo "== Debian package (cpack) from $build"
rm -rf "$build/package"
cpack --config "$build/CPackConfig.cmake" -B "$build/package" >"$build/package.log" 2>&1 ||
  { cat "$build/package.log"; echo "package: failed"; exit 1; }
deb=$(ls "$build"/package/effnet_*.deb)
dpkg-deb --info "$deb" | sed -n '/Package:/,$p'

if [ "$(id -u)" -ne 0 ]; then
  echo "skipped: installing the package needs root (dpkg -i); the .deb is $deb"
  echo "package: skipped"
  exit 0
fi
if dpkg-query -W -f='${Status}' effnet 2>/dev/null | grep -q "install ok installed"; then
  echo "skipped: an effnet package is already installed on this machine; not replacing it"
  echo "package: skipped"
  exit 0
fi

consumer=$(mktemp -d)
cleanup() {
  dpkg -r effnet >/dev/null 2>&1 || true
  rm -rf "$consumer"
}
trap cleanup EXIT
dpkg -i "$deb"
dpkg -L effnet | grep -E '^/usr/(bin/effnet-classify|lib/libeffnet.a|lib/cmake/effnet/effnetConfig.cmake|include/effnet/model.hpp)$'

# The consumer finds effnet under /usr by itself: no CMAKE_PREFIX_PATH.
cmake -S examples/consumer -B "$consumer" >/dev/null
cmake --build "$consumer" -j"$jobs"
"$consumer/effnet-consumer"
# The installed programs start and refuse bad input with one error line.
/usr/bin/effnet-classify --help >/dev/null
if /usr/bin/effnet-classify --weights /nonexistent.safetensors x.png 2>"$consumer/err"; then
  echo "error: effnet-classify accepted a missing weights file"; echo "package: failed"; exit 1
fi
grep -q '^error: ' "$consumer/err" || { cat "$consumer/err"; echo "package: failed"; exit 1; }

dpkg -r effnet >/dev/null
if [ -e /usr/bin/effnet-classify ] || [ -e /usr/lib/libeffnet.a ]; then
  echo "error: dpkg -r effnet left files behind"; echo "package: failed"; exit 1
fi
echo "package: passed"
