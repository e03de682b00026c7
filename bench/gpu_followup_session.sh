#!/usr/bin/env bash
# One GPU, the follow-ups of the first session: ALIAS with CUDA graphs (issue 5), the compile
# cost per chunk size (issue 3), `signify ablate --device cuda` (issue 7). Each part time-boxed.
# Usage (on the GPU machine, repo root):  OUT=/some/dir bash bench/gpu_followup_session.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=. TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/signify-inductor}
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > "$OUT/gpu.txt" 2>&1
# 1. ALIAS against signSGD and Signum, 134M fp32, compiled; then compiled vs eager checks.
timeout ${STEPSIZE_S:-300} python3 bench/stepsize.py --cases signsgd alias alias-lowmem signum \
  'alias(beta)' 'alias-lowmem(beta)' --out "$OUT" > "$OUT/stepsize.log" 2>&1
echo "stepsize rc=$?"
# 2. Cold and warm first step per compile_chunk, fresh processes (374M LLaMA shapes).
timeout ${COLD_S:-150} python3 bench/step.py --workloads 350m --dtypes fp32 --rows Signum \
  --no-variants --no-rng --no-check --cold-chunks 2,4,8 --out "$OUT/cold.json" > "$OUT/cold.log" 2>&1
echo "cold rc=$?"
# 3. The CLI on the GPU, a short study.
timeout ${ABLATE_S:-150} python3 -m signify.cli ablate --device cuda --preset tiny --steps 60 \
  --seeds 0 --tune-steps 20 --only Signum --only ALIAS --no-progress --out "$OUT/ablate" > "$OUT/ablate.log" 2>&1
echo "ablate rc=$?"
head -3 "$OUT/gpu.txt"; tail -n 22 "$OUT/stepsize.log"; grep -E "^compile|cold|warm" "$OUT/cold.log" | tail -4
tail -n 16 "$OUT/ablate.log"
