#!/usr/bin/env bash
# Runs on a GPU host from a bundle made by scripts/gpu-bundle.sh: every GPU test, loraplex-run on the fixture
# with --device cuda, and the kernel benchmark; prints a summary. Logs go to $OUT (or ./gpu-results).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
results=${OUT:-$here/gpu-results}
mkdir -p "$results"
export LORAPLEX_TEST_DATA="$here/data"
export LD_LIBRARY_PATH="$here/bin:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
passed=0
failed=0
failures=()
export LORAPLEX_RUN_BIN="$here/bin/loraplex-run"
for t in test_cuda_lora test_cuda_ops test_fixture_cuda test_loraplex_run_cuda; do
  [ -x "$here/bin/$t" ] || continue
  start=$(date +%s)
  if "$here/bin/$t" --color_output=no --log_level=message --report_level=short >"$results/$t.log" 2>&1; then
    passed=$((passed + 1)); status=passed
  else
    failed=$((failed + 1)); status=FAILED; failures+=("$t")
  fi
  echo "$t: $status ($(($(date +%s) - start)) s)"
  tail -n 3 "$results/$t.log"
done
d="$here/data/tiny-llama"
adapters=(--adapter sql-r8="$d/adapters/sql-r8" --adapter chat-r16="$d/adapters/chat-r16"
          --adapter rs-r4="$d/adapters/rs-r4" --adapter mlp-r12="$d/adapters/mlp-r12")
if "$here/bin/loraplex-run" --model "$d/base" "${adapters[@]}" --requests "$here/data/demo-requests.jsonl" \
    --device cuda --dtype bf16 >"$results/loraplex-run.jsonl" 2>"$results/loraplex-run.err"; then
  passed=$((passed + 1)); echo "loraplex-run --device cuda --dtype bf16: passed"
else
  failed=$((failed + 1)); failures+=(loraplex-run); echo "loraplex-run --device cuda: FAILED"
fi
cat "$results/loraplex-run.err"
if [ -x "$here/bin/loraplex-bench" ] && [ "${LORAPLEX_SKIP_BENCH:-0}" != 1 ]; then
  "$here/bin/loraplex-bench" kernels ${LORAPLEX_BENCH_ARGS:-} --out "$results/bench.md" >"$results/bench.log" 2>&1 \
    && echo "loraplex-bench kernels: done ($results/bench.md)" || { echo "loraplex-bench kernels: FAILED"; tail -n 20 "$results/bench.log"; }
fi
echo "GPU summary: ${failures[*]:-}"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
