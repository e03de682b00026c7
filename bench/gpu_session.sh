#!/usr/bin/env bash
# Everything this project measures on one GPU, most important first, each part time-boxed so
# a short lease still returns the first parts. Usage (on the GPU machine, repo root):
#   OUT=/some/dir bash bench/gpu_session.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=. TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/signify-inductor}
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" >> "$OUT/gpu.txt" 2>&1
ROWS="torch AdamW fused,torch AdamW compiled,Signum,StoSignSGD,SignAdam stochastic,SignAdam stochastic [nonfinite=ignore],SignAdam deterministic,SignAdamax deterministic"
timeout ${STEP_S:-320} python3 bench/step.py --rows "$ROWS" --chunks 16 --out "$OUT/step.json" > "$OUT/step.log" 2>&1
echo "step rc=$?"
timeout ${STEPSIZE_S:-90} python3 bench/stepsize.py --cases signsgd alias alias-lowmem signum 'alias(beta)' --out "$OUT" > "$OUT/stepsize.log" 2>&1
echo "stepsize rc=$?"
timeout ${BLOCKS_S:-150} python3 bench/blocks.py --skip-per-layer --out "$OUT" > "$OUT/blocks.log" 2>&1
echo "blocks rc=$?"
tail -n 40 "$OUT/step.log"; tail -n 14 "$OUT/stepsize.log"; tail -n 12 "$OUT/blocks.log"
