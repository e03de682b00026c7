#!/usr/bin/env bash
# One GPU, after the shared rounding hash: the step table in fp32 and bf16 (with the
# compiled-vs-eager checks), the bf16 kernel profile, and the cold/warm probe at chunks 1 and 8.
# Usage (on the GPU machine, repo root):  OUT=/some/dir bash bench/gpu_followup2.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=. TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/signify-inductor}
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
timeout ${STEP_S:-240} python3 bench/step.py --workloads 134m --dtypes fp32,bf16 \
  --rows "torch AdamW fused,Signum,StoSignSGD,SignAdam stochastic" --no-variants --no-rng \
  --no-cold --out "$OUT/step.json" > "$OUT/step.log" 2>&1
echo "step rc=$?"
timeout ${PROFILE_S:-90} python3 bench/profile_step.py --case signum-bf16 --case stoadam-bf16 \
  --out "$OUT" > "$OUT/profile.log" 2>&1
echo "profile rc=$?"
timeout ${COLD_S:-150} python3 bench/step.py --workloads 350m --dtypes fp32 --rows "torch AdamW fused" \
  --no-variants --no-rng --no-check --cold-chunks 1,8 --out "$OUT/cold.json" > "$OUT/cold.log" 2>&1
echo "cold rc=$?"
tail -n 16 "$OUT/step.log"; grep -A4 "ms of kernels" "$OUT/profile.log"; grep -E "^\{\"workload\": \"350m\", \"row\": \"SignAdam" "$OUT/cold.log"
