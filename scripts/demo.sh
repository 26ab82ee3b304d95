#!/usr/bin/env bash
# Sets up this machine, builds loraplex and runs the main job: loraplex-run on the tiny Llama fixture model
# with one mixed batch over all four PEFT adapters (and the base model), printing the generated tokens.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/setup.sh"
build=${LORAPLEX_BUILD_DIR:-$root/build}
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLORAPLEX_CUDA="${LORAPLEX_CUDA:-AUTO}" >/dev/null
cmake --build "$build" -j "$(nproc)" --target loraplex-run
data="$root/tests/data/tiny-llama"
echo "== loraplex-run: tiny-llama, 10 requests over the base model and 4 adapters, one mixed batch =="
"$build/tools/loraplex_run/loraplex-run" --model "$data/base" \
  --adapter sql-r8="$data/adapters/sql-r8" --adapter chat-r16="$data/adapters/chat-r16" \
  --adapter rs-r4="$data/adapters/rs-r4" --adapter mlp-r12="$data/adapters/mlp-r12" \
  --requests "$root/examples/demo-requests.jsonl" "$@"
