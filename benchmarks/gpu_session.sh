#!/usr/bin/env bash
# One device-machine call: measure the selective-scan forward and backward variants, run the CUDA tests with the
# fastest correct settings, then the recsys GPU benchmark with them; logs and results in $OUT (at most 8 files come
# back from the device machine).
# Usage (repository root, on the GPU machine):
#   OUT=<folder> [SECTIONS=...] [TEST_SETTINGS_EXTRA='"_BWD_MAX_TILES": 4'] \
#     bash benchmarks/gpu_session.sh [BENCH_S] [TESTS_S] [RECSYS_S] [GRID_S]
# (time limits in seconds; RECSYS_S / GRID_S = 0 skip the recsys step / the grid of benchmarks/kernels.py). The next
# call (about 560 s): SECTIONS="sel_variants lin_variants" TEST_SETTINGS_EXTRA=... and limits 260 160 120 0.
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
# 1. forward variants, then backward variants with the fastest forward: the fastest correct pair is "chosen settings"
timeout "${1:-200}" python3 benchmarks/gpu_kernels.py --selective-backends ${SELECTIVE_BACKENDS:-triton torch} \
  --sections ${SECTIONS:-sel_variants} --out "$OUT/kernels-gpu" > "$OUT/gpu_kernels.log" 2>&1
grep -v "^{" "$OUT/gpu_kernels.log" | tail -30
# 2. the settings chosen in 1 ("{}" = the defaults if 1 chose none)
BEST=$(python3 - "$OUT/kernels-gpu.partial.json" <<'PY'
import json, sys
try:  # the rows as they were measured (kept even if the time limit cut the sweep after its choice)
    rows = json.load(open(sys.argv[1]))
    best = [r for r in rows if r.get("kernel") == "chosen settings"]
    print(json.dumps({k: v for k, v in best[0].items() if k.startswith("_")} if best else {}))
except Exception:
    print("{}")
PY
)
SETTINGS=$(python3 -c "import json, sys; d = json.loads(sys.argv[1]); d.update(json.loads('{' + sys.argv[2] + '}')); \
print(json.dumps(d))" "$BEST" "${TEST_SETTINGS_EXTRA:-}")
echo "chosen settings: $BEST; CUDA tests with SSMKIT_TRITON_SETTINGS=$SETTINGS"
# 3. the CUDA tests with those settings
SSMKIT_TRITON_SETTINGS="$SETTINGS" timeout "${2:-200}" python3 -m pytest -q -p no:cacheprovider -n 12 \
  tests/kernels/test_triton_cuda.py 2>&1 | tee "$OUT/cuda_tests.log" | grep -v "^\.*\s*\[" | tail -30
# 4. Mamba4Rec vs SASRec with the chosen settings, also with the backward capped at 4 tiles per group
if [ "${3:-0}" != 0 ]; then
  timeout "$3" python3 benchmarks/recsys_efficiency_gpu.py --bwd-max-tiles 4 --max-lens 200 1000 4000 50 \
    --triton-settings "$BEST" --out "$OUT/recsys-gpu" > "$OUT/recsys.log" 2>&1
  tail -22 "$OUT/recsys.log"
fi
if [ "${4:-0}" != 0 ]; then
  timeout "$4" python3 benchmarks/kernels.py --device cuda --repeats 10 --budget-s 3 --out "$OUT/kernels-cuda" \
    > "$OUT/kernels_grid.log" 2>&1
  tail -45 "$OUT/kernels_grid.log"
fi
cat "$OUT"/gpu_kernels.log "$OUT"/recsys.log "$OUT"/kernels_grid.log > "$OUT/logs.txt" 2>/dev/null
rm -f "$OUT"/gpu_kernels.log "$OUT"/kernels_grid.log "$OUT"/recsys.log
