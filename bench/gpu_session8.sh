#!/usr/bin/env bash
# Eighth GPU session (2026-12-07): gradient clipping inside the step (max_grad_norm) against
# clip_grad_norm_ + step (bench/clip.py), its CUDA tests (equality with the CUDA-graph replay,
# no host sync), then the rest of tests/test_cuda.py. Each part time-boxed and skipped when
# the call's TOTAL_S (default 540 s) would not cover it; results copied to $OUT after each.
# PARTS=det: the deterministic Adam, Adamax and RMSprop rows beside Signum (flat, no check).
# Usage (GPU machine, repo root):  OUT=/some/dir [PARTS=det] bash bench/gpu_session8.sh
set -u
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$(mktemp -d)}
TGZ=session8.tgz
source bench/gpu_lib.sh
case "${PARTS:-clip}" in
clip)
  part clip 150 python3 bench/clip.py --out "$WORK/clip.json"
  part cuda_clip 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py -k "clip or no_host_sync"
  part cuda_rest 200 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py -k "not clip and not no_host_sync"
  ;;
det)  # the deterministic rows at Signum's cost: Adam, Adamax, RMSprop (flat), Adam per tensor
  I="[flatten; nonfinite=ignore]"
  R="Signum $I,SignAdam deterministic $I,SignAdamax deterministic $I,SignRMSprop deterministic $I,SignAdam deterministic [nonfinite=ignore]"
  part det134 200 python3 bench/step.py --workloads 134m --dtypes fp32 --rows "$R" --no-variants --no-rng --no-check --no-cold --out "$WORK/det134.json"
  ;;
esac
cat "$WORK/parts.txt"; head -3 "$WORK/gpu.txt"
[ -f "$WORK/clip.log" ] && { echo "== clip"; grep -E '^\| |^copy' "$WORK/clip.log"; }
[ -f "$WORK/det134.log" ] && { echo "== det134"; grep -E '^\| |^copy' "$WORK/det134.log" | cut -d'|' -f2-8; }
for f in cuda_clip cuda_rest; do [ -f "$WORK/$f.log" ] && { echo "== $f"; tail -n 3 "$WORK/$f.log"; }; done
tar czf "$DEST/$TGZ" -C "$WORK" .
