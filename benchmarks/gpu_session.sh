#!/usr/bin/env bash
# One device-machine call: the Triton kernels' CUDA tests, then the GPU kernel targets; logs and results in $OUT.
# Usage (repository root, on the GPU machine):
#   OUT=<folder> [SECTIONS=...] bash benchmarks/gpu_session.sh [TESTS_S] [BENCH_S] [GRID_S] [RECSYS_S]
# (time limits in seconds; GRID_S / RECSYS_S = 0 skip the grid of benchmarks/kernels.py / the recsys step)
set -u
export PYTHONUNBUFFERED=1 OUT="${OUT:-/tmp/ssmkit-gpu}"
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then  # carried wheels (flash-linear-attention's fla-core for the comparison)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
timeout "${1:-300}" python3 -m pytest -q -p no:cacheprovider -n 12 tests/kernels/test_triton_cuda.py 2>&1 \
  | tee "$OUT/cuda_tests.log" | grep -v "^\.*\s*\[" | tail -40
timeout "${2:-200}" python3 benchmarks/gpu_kernels.py --selective-backends ${SELECTIVE_BACKENDS:-triton torch} \
  --sections ${SECTIONS:-sel_variants selective lin_variants linear} --out "$OUT/kernels-gpu" > "$OUT/gpu_kernels.log" 2>&1
grep -v "^{" "$OUT/gpu_kernels.log" | tail -60
if [ "${3:-0}" != 0 ]; then
  timeout "$3" python3 benchmarks/kernels.py --device cuda --repeats 10 --budget-s 3 --out "$OUT/kernels-cuda" \
    > "$OUT/kernels_grid.log" 2>&1
  tail -45 "$OUT/kernels_grid.log"
fi
if [ "${4:-0}" != 0 ]; then  # Mamba4Rec vs SASRec on the GPU, with the backward capped at 4 tiles per group as well
  timeout "$4" python3 benchmarks/recsys_efficiency_gpu.py --bwd-max-tiles 4 --out "$OUT/recsys-gpu" \
    > "$OUT/recsys.log" 2>&1
  tail -25 "$OUT/recsys.log"
fi
# at most 8 files come back from the device machine: one log besides the tests' and the results
cat "$OUT"/gpu_kernels.log "$OUT"/kernels_grid.log "$OUT"/recsys.log > "$OUT/logs.txt" 2>/dev/null
rm -f "$OUT"/gpu_kernels.log "$OUT"/kernels_grid.log "$OUT"/recsys.log
