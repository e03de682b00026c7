#!/usr/bin/env bash
# One GPU, fifth session. Part A (exploration): ALIAS pass formulations under three inductor
# option sets (bench/alias_fusion.py), ALIAS with move="auto" against "measure" and Signum,
# end-to-end, with inductor's defaults and with coordinate-descent tuning; the compiled step
# table at 134M with both; the two statistical CUDA tests. Each part time-boxed and skipped
# when the call's TOTAL_S (default 540 s) would not cover it; results packed after every part.
# Usage (GPU machine, repo root):  OUT=/some/dir PARTS=a bash bench/gpu_session5.sh  (-> session5.tgz)
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=. TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/signify-inductor}
DEST=${OUT:-bench/results}
OUT=$(mktemp -d)
END=$((SECONDS + ${TOTAL_S:-540}))
CDT='{"coordinate_descent_tuning": true}'
part() {  # part NAME SECONDS command...: run if it fits, time-boxed
  local name=$1 limit=$2; shift 2
  local left=$((END - SECONDS))
  if [ "$left" -lt 20 ]; then echo "$name skipped (no time left)" | tee -a "$OUT/parts.txt"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "$name rc=$? ${limit}s box, took $((SECONDS - t0))s" | tee -a "$OUT/parts.txt"
  mkdir -p "$DEST"; tar czf "$DEST/session5.tgz" -C "$OUT" .
}
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > "$OUT/gpu.txt" 2>&1
STEP_ROWS="Signum,SignAdam stochastic,SignAdam stochastic [nonfinite=ignore],StoSignSGD,torch AdamW fused"
case "${PARTS:-a}" in
a)
  part alias_fusion 170 python3 bench/alias_fusion.py --options default,cdt,combo --out "$OUT/alias_fusion.json"
  part stepsize 90 python3 bench/stepsize.py --cases signum alias 'alias,measure' 'alias(beta)' --out "$OUT/ss_default"
  part stepsize_cdt 90 env SIGNIFY_INDUCTOR="$CDT" python3 bench/stepsize.py --cases signum alias 'alias(beta)' --no-check --out "$OUT/ss_cdt"
  part step_cdt 100 env SIGNIFY_INDUCTOR="$CDT" python3 bench/step.py --workloads 134m --dtypes fp32 --rows "$STEP_ROWS" --no-variants --no-rng --no-check --no-cold --out "$OUT/step_cdt.json"
  part step_default 80 python3 bench/step.py --workloads 134m --dtypes fp32 --rows "$STEP_ROWS" --no-variants --no-rng --no-check --no-cold --out "$OUT/step_default.json"
  part test_cuda 60 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py -k "unbiased"
  ;;
esac
cat "$OUT/parts.txt"; head -3 "$OUT/gpu.txt"
grep -A30 "^| pass" "$OUT/alias_fusion.log" | head -32
for f in stepsize stepsize_cdt; do echo "== $f"; grep -A7 "^| case" "$OUT/$f.log" | head -7; done
for f in step_cdt step_default; do echo "== $f"; grep '"ms"' "$OUT/$f.log" | cut -c1-200; done
tail -n 3 "$OUT/test_cuda.log"
tar czf "$DEST/session5.tgz" -C "$OUT" .
