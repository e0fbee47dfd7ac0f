#!/usr/bin/env bash
# One GPU check, end to end: install this checkout in place, run the GPU tests, run the full
# benchmark, draw the charts, keep a profiler trace, time the first-step compile.
#
#   cd <repo root> && OUT=/some/folder bash benchmarks/gpu_check.sh [extra `run` options]
#
# Writes (at most 7 files, all directly in $OUT, so the `run` tool brings them all back):
#   gpu_check.log                     everything printed, the tables included
#   gpu_tests.log                     the GPU tests' full pytest output
#   results_<date>.json               every number of the benchmark, with GPU/torch/triton/date
#   charts_<date>.png                 the six chart panels (needs matplotlib)
#   trace_branchy_kitsune.json        Chrome trace of one kitsune iteration of the branchy model
#   compile_time_<date>.json          ResNet-18 first-step compile time, cold and warm
# Time limits (seconds, override through the environment): TESTS_TIMEOUT=150 for pytest,
# BENCH_BUDGET=280 after which no new benchmark row starts, BENCH_TIMEOUT=380 hard stop,
# COMPILE_TIMEOUT=240 for the compile-time step (0 skips it; with all three at their
# limits the check passes 10 minutes: lower BENCH_BUDGET or split the run).
# If a full run does not fit, split it with --models and join the parts with
# `python3 -m benchmarks merge part1.json part2.json --out results.json`.
# Extra arguments go to `python3 -m benchmarks run` (e.g. --models branchy,gpt2 --iters 50).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/kitsune_gpu_check}
mkdir -p "$OUT"
DATE=$(date -u +%Y-%m-%d)
RESULTS="$OUT/results_$DATE.json"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
START=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - START ))s] $*"; }

{
  stamp "environment"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  python3 - <<'PY'
import importlib.util, torch, triton
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}, "
      f"cuda available: {torch.cuda.is_available()}")
for name in ("torchvision", "transformers", "matplotlib", "pytest", "hypothesis"):
    print(f"{name}: {'yes' if importlib.util.find_spec(name) else 'NOT INSTALLED'}")
PY

  stamp "install (pip install -e . --no-deps --no-build-isolation)"
  python3 -m pip install -e . --no-deps --no-build-isolation -q 2>&1 | tail -5
  python3 -c "import torch; print('backend \"kitsune\" registered:', 'kitsune' in torch._dynamo.list_backends(exclude_tags=()))"

  stamp "GPU tests (KITSUNE_TEST_GPU=1 pytest -m gpu)"
  KITSUNE_TEST_GPU=1 timeout "${TESTS_TIMEOUT:-150}" python3 -m pytest -m gpu -q -p no:cacheprovider \
    > "$OUT/gpu_tests.log" 2>&1
  echo "pytest exit code: $? (full output in gpu_tests.log)"
  grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_tests.log" | tail -20

  stamp "benchmark"
  timeout "${BENCH_TIMEOUT:-380}" python3 -m benchmarks run --json "$RESULTS" \
    --trace "$OUT/trace_branchy_kitsune.json" --budget-s "${BENCH_BUDGET:-280}" "$@"
  echo "benchmark exit code: $? (1: a row failed or disagreed with eager; 124: timed out)"

  stamp "charts"
  if [ -f "$RESULTS" ]; then
    python3 -m benchmarks charts "$RESULTS" --out "$OUT/charts_$DATE.png"
  else
    echo "no results file was written"
  fi
  stamp "compile time (first step cold and warm, kitsune against Inductor)"
  if [ "${COMPILE_TIMEOUT:-240}" != "0" ]; then
    timeout "${COMPILE_TIMEOUT:-240}" python3 -m benchmarks compile-time \
      --json "$OUT/compile_time_$DATE.json"
    echo "compile-time exit code: $? (124: timed out)"
  else
    echo "skipped (COMPILE_TIMEOUT=0)"
  fi
  stamp "done"
} 2>&1 | grep -v -e '^USDT:' -e 'SyncActivityProfilerHandler' | tee "$OUT/gpu_check.log"
