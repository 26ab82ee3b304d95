#!/usr/bin/env bash
# Builds the CUDA backend for Hopper (sm_90a) on this machine and makes a self-contained bundle for a GPU host:
# the GPU tests, loraplex-run, loraplex-bench, the fixture data and run.sh. The binaries link only glibc,
# libstdc++, the CUDA runtime and cuBLAS (OpenBLAS is off: the CPU reference uses plain loops; Boost.Test is
# static; the CUDA kernels are one shared library beside the binaries, found through an $ORIGIN rpath), so the
# bundle needs nothing on the GPU host but its CUDA 13 driver and libraries.
#
#   bash scripts/gpu-bundle.sh [OUT_DIR]     (default: bundle/)
#   then on the GPU host:  bash OUT_DIR/run.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/bundle}
build=${LORAPLEX_GPU_BUILD_DIR:-$root/build-gpu}
bash "$root/scripts/setup.sh"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLORAPLEX_CUDA=ON -DLORAPLEX_BLAS=OFF \
  -DCMAKE_CUDA_ARCHITECTURES=90a -DLORAPLEX_CUDA_SHARED=ON '-DCMAKE_BUILD_RPATH=$ORIGIN' >/dev/null
# Every GPU target must exist; a missing one is an error, never silently left out of the bundle.
# (The list is read once: `grep -q` on the pipe would end ninja with SIGPIPE under pipefail.)
available=$(cmake --build "$build" --target help)
targets=(loraplex-run)
for t in test_cuda_lora test_cuda_ops test_fixture_cuda test_loraplex_run_cuda loraplex-bench; do
  if ! grep -q "^$t:" <<<"$available"; then
    echo "gpu-bundle: target $t is missing from the build" >&2
    exit 1
  fi
  targets+=("$t")
done
cmake --build "$build" -j "$(nproc)" --target "${targets[@]}"
rm -rf "$out"
mkdir -p "$out/bin" "$out/data"
for t in "${targets[@]}"; do
  f=$(find "$build" -type f -name "$t" -perm -u+x | head -n 1)
  cp "$f" "$out/bin/"
done
cp "$build/kernels/cuda/libloraplex_kernels_cuda.so" "$out/bin/"
cp -r "$root/tests/data/tiny-llama" "$out/data/"
cp "$root/examples/demo-requests.jsonl" "$out/data/"
cp "$root/scripts/gpu-run.sh" "$out/run.sh"
echo "bundle: $out ($(du -sh "$out" | cut -f1)): ${targets[*]}"
