#!/usr/bin/env bash
# The GPU check, in two device calls of under 10 minutes each (PHASE picks one):
#
#   PHASE=time  OUT=/some/folder bash benchmarks/gpu_check.sh [extra `run` options]
#     install this checkout, run the GPU tests, time every benchmark row (no profiler)
#   PHASE=tests OUT=/some/folder bash benchmarks/gpu_check.sh
#     install, run the GPU tests only (when tests and timing together near the 10-minute
#     limit of one call: then time with TESTS_TIMEOUT=0 PHASE=time, which skips the tests)
#   PHASE=sweep OUT=/some/folder bash benchmarks/gpu_check.sh
#     install, run the OpInfo fused sweep in float16 and bfloat16 (tests/test_opinfo_fused.py,
#     its gpu tests) over SWEEP_WORKERS=12 pytest-xdist processes, limit SWEEP_TIMEOUT=480
#     (the other phases' GPU tests leave it out: it alone fills most of a call)
#   PHASE=serving OUT=/some/folder bash benchmarks/gpu_check.sh [extra `serving` options]
#     install, run the serving loop of changing batch sizes (benchmarks/serving.py): eager,
#     reduce-overhead and kitsune in one process, limit SERVING_TIMEOUT=300
#   PHASE=distributed OUT=/some/folder bash benchmarks/gpu_check.sh
#     install, train ResNet-18 under DDP and FSDP2 (benchmarks/distributed.py, torchrun, NCCL,
#     one process per GPU) with eager, Inductor and kitsune; limit DIST_TIMEOUT=120 per run
#   PHASE=count OUT=/some/folder bash benchmarks/gpu_check.sh [extra `run` options]
#     install, count every row's kernels under the profiler (and keep the branchy trace),
#     time the first-step compile of ResNet-18 cold and warm against Inductor
#
# Why two processes: with CUDA graphs, PyTorch's profiler leaves CUPTI attached when it
# stops, and every later CUDA call pays for it on the host (measured on the H100: kitsune's
# branchy call went from 60 to 85 us, Inductor's from 130 to 192 us). So the timed process
# never profiles. Join the two afterwards, anywhere:
#   python3 -m benchmarks merge results_time.json --counts results_count.json --out results.json
#   python3 -m benchmarks charts results.json --out charts.png
#
# Writes directly in $OUT (so the `run` tool brings everything back):
#   gpu_check_<phase>.log             everything printed, the tables included
#   gpu_tests.log                     (time) the GPU tests' full pytest output
#   results_<phase>_<date>.json       every number of the benchmark, with GPU/torch/triton/date
#   trace_branchy_kitsune.json        (count) Chrome trace of one kitsune branchy iteration
#   schedule_branchy_kitsune.png      (count) its measured per-stream kernel schedule
#   compile_time_<date>.json          (count) ResNet-18 first-step compile time, cold and warm
# TESTS_WORKERS=N runs the GPU tests over N pytest-xdist processes (one GPU, shared).
# Time limits (seconds, override through the environment): TESTS_TIMEOUT=240 for pytest (540 with
# PHASE=tests; 0 skips the tests),
# BENCH_BUDGET=300 after which no new benchmark row starts, BENCH_TIMEOUT=370 hard stop,
# COMPILE_TIMEOUT=200 for the compile-time step (0 skips it).
# Extra arguments go to `python3 -m benchmarks run` (e.g. --models branchy,gpt2 --iters 50).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/kitsune_gpu_check}
mkdir -p "$OUT"
DATE=$(date -u +%Y-%m-%d)
PHASE=${PHASE:-time}
TESTS_LIMIT=${TESTS_TIMEOUT:-$([ "$PHASE" = tests ] && echo 540 || echo 240)}
case "$PHASE" in time|count|tests|sweep|serving|distributed) ;;
  *) echo "PHASE must be time, count, tests, sweep, serving or distributed, not $PHASE" >&2
     exit 2;; esac
RESULTS="$OUT/results_${PHASE}_$DATE.json"
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

  if ls .whl/*.whl >/dev/null 2>&1; then  # carried wheels (expecttest for the sweep)
    stamp "carried wheels: $(ls .whl)"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
  fi
  stamp "install (pip install -e . --no-deps --no-build-isolation)"
  python3 -m pip install -e . --no-deps --no-build-isolation -q 2>&1 | tail -5
  python3 -c "import torch; print('backend \"kitsune\" registered:', 'kitsune' in torch._dynamo.list_backends(exclude_tags=()))"

  if [ "$PHASE" = sweep ]; then
    stamp "OpInfo fused sweep, float16 and bfloat16 (pytest -n ${SWEEP_WORKERS:-12})"
    KITSUNE_TEST_GPU=1 KITSUNE_COMPILE_WORKERS=0 timeout "${SWEEP_TIMEOUT:-480}" python3 -m pytest \
      -m gpu -q -p no:cacheprovider -n "${SWEEP_WORKERS:-12}" tests/test_opinfo_fused.py \
      --junitxml="$OUT/gpu_sweep.xml" > "$OUT/gpu_sweep.log" 2>&1
    echo "pytest exit code: $? (full output in gpu_sweep.log)"
    python3 - "$OUT/gpu_sweep.xml" <<'PY'
import collections, re, sys, xml.etree.ElementTree as ET
totals = collections.defaultdict(lambda: collections.Counter())
for case in ET.parse(sys.argv[1]).iter("testcase"):
    kind = re.sub(r"^\w+\[\d+-", "", case.get("name", "")).rstrip("]")
    for prop in case.iter("property"):
        value = prop.get("value", "")
        totals[kind][prop.get("name")] += int(value) if value.isdigit() else len(value.split())
for kind, counts in sorted(totals.items()):
    print(f"{kind}: {counts['run']} cases, {counts['fused']} with the op in a generated kernel, "
          f"{counts['excused']} excused (aot_eager disagrees with eager too)")
PY
    grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_sweep.log" | tail -20
    stamp "done"
    exit 0
  fi
  if [ "$PHASE" = serving ]; then
    stamp "serving loop (python -m benchmarks serving)"
    timeout "${SERVING_TIMEOUT:-300}" python3 -m benchmarks serving --json "$RESULTS" "$@"
    echo "serving exit code: $? (1: an output differed from eager's; 124: timed out)"
    stamp "done"
    exit 0
  fi
  if [ "$PHASE" = distributed ]; then
    GPUS=$(python3 -c "import torch; print(torch.cuda.device_count())")
    for engine in ddp fsdp2; do
      for backend in eager inductor kitsune; do
        stamp "$engine / $backend on $GPUS GPU(s)"
        timeout "${DIST_TIMEOUT:-120}" python3 -m torch.distributed.run --nproc-per-node "$GPUS" \
          -m benchmarks.distributed --engine "$engine" --backend "$backend" \
          --json "$OUT/distributed_${engine}_${backend}_$DATE.json" 2>&1 | tail -3
      done
    done
    stamp "done"
    exit 0
  fi
  if [ -n "${TESTS_WORKERS:-}" ] && ! python3 -c "import xdist" 2>/dev/null; then
    echo "pytest-xdist is not installed: TESTS_WORKERS ignored"; TESTS_WORKERS=""
  fi
  if [ "$PHASE" != count ] && [ "$TESTS_LIMIT" != "0" ]; then
    stamp "GPU tests (KITSUNE_TEST_GPU=1 pytest -m gpu)"
    KITSUNE_TEST_GPU=1 timeout "$TESTS_LIMIT" python3 -m pytest -m gpu -q -p no:cacheprovider \
      ${TESTS_WORKERS:+-n "$TESTS_WORKERS"} --ignore=tests/test_opinfo_fused.py > "$OUT/gpu_tests.log" 2>&1
    echo "pytest exit code: $? (full output in gpu_tests.log)"
    grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_tests.log" | tail -20
  fi
  if [ "$PHASE" = tests ]; then
    stamp "done"
    exit 0
  fi
  if [ "$PHASE" = time ]; then
    stamp "benchmark: timing (no profiler in this process)"
    timeout "${BENCH_TIMEOUT:-370}" python3 -m benchmarks run --json "$RESULTS" \
      --kernel-counts no --budget-s "${BENCH_BUDGET:-300}" "$@"
    echo "benchmark exit code: $? (1: a row failed or disagreed with eager; 124: timed out)"
    stamp "done"
    exit 0
  fi
  stamp "benchmark: kernel counts (profiler; no timing)"
  timeout "${BENCH_TIMEOUT:-370}" python3 -m benchmarks run --json "$RESULTS" \
    --kernel-counts only --trace "$OUT/trace_branchy_kitsune.json" \
    --budget-s "${BENCH_BUDGET:-300}" "$@"
  echo "benchmark exit code: $? (1: a row failed or disagreed with eager; 124: timed out)"
  if [ -f "$OUT/trace_branchy_kitsune.json" ]; then
    python3 -m benchmarks timeline "$OUT/trace_branchy_kitsune.json" \
      --out "$OUT/schedule_branchy_kitsune.png" || echo "no timeline drawn"
  fi
  stamp "compile time (first step cold and warm, kitsune against Inductor)"
  if [ "${COMPILE_TIMEOUT:-200}" != "0" ]; then
    timeout "${COMPILE_TIMEOUT:-200}" python3 -m benchmarks compile-time \
      --json "$OUT/compile_time_$DATE.json"
    echo "compile-time exit code: $? (124: timed out)"
  else
    echo "skipped (COMPILE_TIMEOUT=0)"
  fi
  stamp "done"
} 2>&1 | grep -v -e '^USDT:' -e 'SyncActivityProfilerHandler' | tee "$OUT/gpu_check_$PHASE.log"
