#!/usr/bin/env bash
# Sets up this machine (Debian packages), builds loraplex and runs every test that needs no GPU.
# GPU tests carry the ctest label `gpu`; run them on a GPU host with scripts/gpu-bundle.sh (docs/gpu.md).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/setup.sh"
build=${LORAPLEX_BUILD_DIR:-$root/build}
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLORAPLEX_CUDA="${LORAPLEX_CUDA:-AUTO}" >/dev/null
cmake --build "$build" -j "$(nproc)"
cd "$build"
ctest -LE gpu --output-on-failure -j "$(nproc)"
