#!/usr/bin/env bash
# Thirteenth GPU session (2026-12-08): the replayed step's host gap (bench/replay_parts.py:
# a device-sync check, the parts of a step timed one by one and the host-side events per step
# that differ between 35ad313's package and this tree), the compiled packing's peak memory
# before/after summing in uint8 (bench/pack_memory.py), plan_check again on the same machine,
# then the CUDA tests on this tree. Needs bench/_ab/signify_old (untracked, as
# gpu_session12.sh says).
# Usage (GPU machine, repo root):  OUT=/some/dir TOTAL_S=560 bash bench/gpu_session13.sh
set -u
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$(mktemp -d)}
TGZ=session13.tgz
source bench/gpu_lib.sh
part parts 150 python3 bench/replay_parts.py --old bench/_ab
part pack 90 python3 bench/pack_memory.py
part plan 100 python3 bench/plan_check.py --old bench/_ab --device cuda --out "$WORK/plan_check.json"
part cuda 240 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
cat "$WORK/parts.txt"; head -3 "$WORK/gpu.txt"
for p in parts pack plan cuda; do
  [ -f "$WORK/$p.log" ] && { echo "== $p"; tail -n 25 "$WORK/$p.log"; }
done
tar czf "$DEST/$TGZ" -C "$WORK" .
