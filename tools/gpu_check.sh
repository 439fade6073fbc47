#!/usr/bin/env bash
# The station's checks on a lent GPU machine (the device tool), as one script:
#   wheels the image lacks are carried in .whl/ (see docs/gpu.md), results land in $OUT.
# 1. CUDA tests (CPU and GPU scores agree), 2. detector throughput on cuda (torch eager),
# 3. the two-scale ensemble recipe against glassfiber on cuda (ms per shot, shared backbone
# pass), 4. the cycle benchmark on cuda (tiles/s, inference waiting for motion), 5. the demo.
set -u
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 COLUMNS=200
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
[ -d /tmp/site_cv ] && export PYTHONPATH=/tmp/site_cv:$PYTHONPATH  # opencv 4.x, carried by an earlier call
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc
  python3 -c "import cv2, torch, onnxruntime as o; print('cv2', cv2.__version__); print('torch', torch.__version__, torch.version.cuda); print('onnxruntime', o.__version__, o.get_available_providers())"
} 2>&1 | tee "$OUT/env.txt"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_patchcore.py tests/test_detector_state.py 2>&1 | tail -5 | tee "$OUT/tests.txt"
timeout 200 python3 tools/bench_detectors.py --devices cpu,cuda --threads 16 --iters 20 \
    --json "$OUT/detectors.json" 2>&1 | tee "$OUT/detectors.txt" | tail -25
timeout 150 python3 tools/bench_detectors.py --devices cuda --threads 16 --iters 20 --detectors '' \
    --recipes glassfiber,glassfiber-ensemble --backbone efficientnet_lite1 --train-images 160 \
    --batches 1,8 --rounds 3 --json "$OUT/recipes.json" 2>&1 | tee "$OUT/recipes.txt" | tail -12
timeout 150 python3 tools/bench_cycle.py --device cuda --parts 6 --time-scale 1.0 \
    --json "$OUT/cycle.json" 2>&1 | tee "$OUT/cycle.txt" | tail -12
timeout 200 python3 -m station demo 2>&1 | tee "$OUT/demo.txt" | tail -30
