#!/usr/bin/env bash
# The GPU checks of the Triton kernels, the runtime tail and the backbone modes, in one run on a
# CUDA machine (meant to finish within about 8 minutes on an H200):
#
#   1. the machine and the Python packages          -> $OUT/env.txt
#   2. the tests that run on CUDA (and the CPU tests of the same files), no slow ones
#                                                    -> $OUT/pytest.log, $OUT/pytest.xml
#   3. every stage timed before and after (benchmarks/gpu_check.py)
#                                                    -> $OUT/gpu_check.json, $OUT/gpu_check.md
#   4. if time is left (TOTAL_BUDGET_S, default 480 s, minus what 1-3 took): the native
#      library built and its C test program run on the GPU
#                                                    -> $OUT/native.log
#
#   bash benchmarks/gpu_check.sh             # OUT defaults to ./gpu-check-out
#   OUT=/some/dir PYTHON=python3.12 bash benchmarks/gpu_check.sh
#
# Needs Python with torch (CUDA build) and triton; pytest, numpy, pyyaml, pillow, av and tqdm
# for the tests (a missing one is listed in env.txt and its tests fail to import; the timings
# need only torch, triton and pyyaml). Exit status: 0 when the tests and the timings both
# succeeded, 1 otherwise; the files say what happened either way.
set -u

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
OUT="${OUT:-$REPO/gpu-check-out}"
PY="${PYTHON:-python3}"
TEST_TIMEOUT_S="${TEST_TIMEOUT_S:-210}"
BENCH_BUDGET_S="${BENCH_BUDGET_S:-240}"
TOTAL_BUDGET_S="${TOTAL_BUDGET_S:-480}"
mkdir -p "$OUT"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
# The tests set TRITON_INTERPRET themselves where they want the interpreter.
unset TRITON_INTERPRET
# A cold Inductor cache, outside $OUT, so that the compile time measured is a first compile.
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$(mktemp -d /tmp/hodor-gpu-check-inductor.XXXXXX)}"
start=$(date +%s)

{
  echo "date: $(date -Is)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown) $(git status --porcelain 2>/dev/null | wc -l) changed files"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || echo "nvidia-smi failed"
  "$PY" - <<'EOF'
import importlib
import sys

print("python", sys.version.split()[0])
for name in ("torch", "triton", "numpy", "yaml", "PIL", "av", "tqdm", "pytest"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except Exception as exc:
        print(f"{name} MISSING ({type(exc).__name__}: {exc})")
import torch

print("cuda available:", torch.cuda.is_available(), "| torch cuda", torch.version.cuda)
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(), "| bf16:", torch.cuda.is_bf16_supported())
EOF
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

TESTS=(
  tests/test_kernels_deform_conv.py
  tests/test_kernels_runtime_tail.py
  tests/test_kernels_mask_logits.py
  tests/test_kernels_masked_avg_pool.py
  tests/test_kernels_pixel_descriptor_attention.py
  tests/test_kernels_soft_masked_attention.py
  tests/test_model_kernels.py
  tests/test_engine_backbone_modes.py
  tests/test_engine_cuda_graphs.py
  tests/test_engine_torch_kernels.py
)
echo "== tests (timeout ${TEST_TIMEOUT_S} s)"
timeout "$TEST_TIMEOUT_S" "$PY" -m pytest -q -rs -m "not slow" -p no:cacheprovider \
  --junitxml="$OUT/pytest.xml" --durations=15 "${TESTS[@]}" > "$OUT/pytest.log" 2>&1
tests_rc=$?
tail -n 40 "$OUT/pytest.log"
echo "tests exit status: $tests_rc (124: timed out)" | tee -a "$OUT/pytest.log"

echo "== timings (budget ${BENCH_BUDGET_S} s)"
timeout $((BENCH_BUDGET_S + 120)) "$PY" benchmarks/gpu_check.py --out "$OUT" --budget-s "$BENCH_BUDGET_S" \
  > "$OUT/gpu_check.log" 2>&1
bench_rc=$?
tail -n 80 "$OUT/gpu_check.log"
echo "timings exit status: $bench_rc (124: timed out; the JSON holds every stage finished before)"

left=$(( TOTAL_BUDGET_S - ($(date +%s) - start) ))
native_rc="skipped"
if [ "$left" -lt 60 ]; then
  echo "== native library: skipped, ${left} s left" | tee "$OUT/native.log"
elif ! command -v cmake >/dev/null || [ ! -e "${CUDA_HOME:-/usr/local/cuda}/include/cuda.h" ]; then
  echo "== native library: skipped, cmake or cuda.h missing" | tee "$OUT/native.log"
else
  echo "== native library (timeout ${left} s)"
  build="$(mktemp -d /tmp/hodor-native.XXXXXX)"
  timeout "$left" bash -c "cmake -S '$REPO' -B '$build' -DHODOR_PYTHON='$(command -v "$PY")' \
      -DHODOR_AOT_JOBS=$(nproc) -DCMAKE_BUILD_TYPE=Release && cmake --build '$build' && '$build/hodor_kernels_test'" \
    > "$OUT/native.log" 2>&1
  native_rc=$?
  tail -n 40 "$OUT/native.log"
  echo "native exit status: $native_rc (0: every C check passed; 124: timed out)" | tee -a "$OUT/native.log"
fi

elapsed=$(( $(date +%s) - start ))
echo "gpu_check.sh: tests $tests_rc, timings $bench_rc, native $native_rc, ${elapsed} s; results in $OUT" \
  | tee "$OUT/summary.txt"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
