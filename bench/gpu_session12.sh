#!/usr/bin/env bash
# Twelfth GPU session (2026-12-07): what bench/gpu_session11.sh never got to run (no GPU was
# lent in the two sessions after it was written), on this tree: the CUDA tests (now also the
# vote bookkeeping's count_all and write_own, flat_max, check_stepped), bench/plan_check.py
# (this tree against 35ad313's package, the last one timed on a GPU, copied to
# bench/_ab/signify_old for this call only, untracked:
#   mkdir -p bench/_ab && git archive 35ad313 signify | tar x -C bench/_ab &&
#   mv bench/_ab/signify bench/_ab/signify_old), then issue 5's cost target again
# (bench/stepsize.py: compiled ALIAS against compiled Signum, 134M fp32).
# Usage (GPU machine, repo root):  OUT=/some/dir TOTAL_S=560 bash bench/gpu_session12.sh
set -u
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$(mktemp -d)}
TGZ=session12.tgz
source bench/gpu_lib.sh
part cuda 240 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
part plan 150 python3 bench/plan_check.py --old bench/_ab --device cuda --out "$WORK/plan_check.json"
part stepsize 150 python3 bench/stepsize.py --cases signum alias signum,flat alias,flat --out "$WORK/stepsize"
cat "$WORK/parts.txt"; head -3 "$WORK/gpu.txt"
[ -f "$WORK/cuda.log" ] && { echo "== cuda"; tail -n 3 "$WORK/cuda.log"; }
[ -f "$WORK/plan.log" ] && { echo "== plan"; tail -n 6 "$WORK/plan.log"; }
[ -f "$WORK/stepsize.log" ] && { echo "== stepsize"; tail -n 14 "$WORK/stepsize.log"; }
tar czf "$DEST/$TGZ" -C "$WORK" .
