#!/usr/bin/env bash
# Tenth GPU session (2026-12-07): the CUDA tests on this tree, then the A/B that the ninth
# session's PARTS=asserts never ran: inductor's size_asserts on (SIGNIFY_INDUCTOR turns them
# back on in the elementwise graphs) against off (the default), same tree, one after the
# other in this call; replay off at 134M and 374M (host-bound), replay on at 374M.
# Usage (GPU machine, repo root):  OUT=/some/dir bash bench/gpu_session10.sh
set -u
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$(mktemp -d)}
TGZ=session10.tgz
source bench/gpu_lib.sh
part cuda 200 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
R="SignAdam stochastic,Signum"
for mode in on off; do
  ind='{}'; [ "$mode" = on ] && ind='{"size_asserts": true}'
  SIGNIFY_INDUCTOR=$ind SIGNIFY_CUDA_GRAPHS=0 part "nograph_$mode" 100 python3 bench/step.py \
    --workloads 134m,350m --dtypes fp32 --rows "$R" --no-variants --no-rng --no-check --no-cold \
    --out "$WORK/nograph_$mode.json"
done
for mode in on off; do
  ind='{}'; [ "$mode" = on ] && ind='{"size_asserts": true}'
  SIGNIFY_INDUCTOR=$ind part "replay_$mode" 80 python3 bench/step.py --workloads 350m --dtypes fp32 \
    --rows "$R" --no-variants --no-rng --no-check --no-cold --out "$WORK/replay_$mode.json"
done
cat "$WORK/parts.txt"; head -3 "$WORK/gpu.txt"
for f in "$WORK"/nograph_*.log "$WORK"/replay_*.log; do
  [ -f "$f" ] && { echo "== $(basename "$f")"; grep -E '^\| (134|350)m|^copy' "$f" | cut -d'|' -f2,4,6,8,12,13; }
done
[ -f "$WORK/cuda.log" ] && { echo "== cuda"; tail -n 3 "$WORK/cuda.log"; }
tar czf "$DEST/$TGZ" -C "$WORK" .
