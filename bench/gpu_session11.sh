#!/usr/bin/env bash
# Eleventh GPU session (2026-12-07): the CUDA tests on this tree (step keys now rank-free, the
# plan key holds the state entries' identities, hyperparameter cache, checkpoint hooks), then
# bench/plan_check.py: the host cost of the new plan check, old package (35ad313, copied to
# bench/_ab/signify_old for this call only: git archive 35ad313 signify | tar x -C bench/_ab &&
# mv bench/_ab/signify bench/_ab/signify_old, untracked) against this tree in one process.
# Not run yet: no GPU machine could be started in the session that wrote it, nor in the next.
# Usage (GPU machine, repo root):  OUT=/some/dir bash bench/gpu_session11.sh
set -u
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$(mktemp -d)}
TGZ=session11.tgz
source bench/gpu_lib.sh
part cuda 260 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
part plan 200 python3 bench/plan_check.py --old bench/_ab --device cuda --out "$WORK/plan_check.json"
cat "$WORK/parts.txt"; head -3 "$WORK/gpu.txt"
[ -f "$WORK/cuda.log" ] && { echo "== cuda"; tail -n 3 "$WORK/cuda.log"; }
[ -f "$WORK/plan.log" ] && { echo "== plan"; tail -n 4 "$WORK/plan.log"; }
tar czf "$DEST/$TGZ" -C "$WORK" .
