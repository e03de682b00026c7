#!/usr/bin/env bash
# One GPU, fourth session: ALIAS against Signum, CUDA contract tests, ALIAS pass formulations
# (bench/alias_fusion.py), compiled-vs-eager per inlining
# threshold, the vote step on one rank, the blocks policies' memory. Each part time-boxed and
# skipped when the call's 540 s would not cover it. (The run of 2026-12-07 also timed ALIAS
# with two kernel changes behind environment switches against the old forms, in a second
# stepsize part; the changes measured slower and were removed with their switches:
# docs/stepsize.md, "Fourth H100 session".)
# Usage (GPU machine, repo root):  OUT=/some/dir bash bench/gpu_session4.sh  (-> session4.tgz)
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=. TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/signify-inductor}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
DEST=${OUT:-bench/results}
OUT=$(mktemp -d)  # everything here, packed into $DEST/session4.tgz at the end (few files come back)
END=$((SECONDS + ${TOTAL_S:-540}))
part() {  # part NAME SECONDS command...: run if it fits, time-boxed
  local name=$1 limit=$2; shift 2
  local left=$((END - SECONDS))
  if [ "$left" -lt 20 ]; then echo "$name skipped (no time left)"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "$name rc=$? ${limit}s box, took $((SECONDS - t0))s" | tee -a "$OUT/parts.txt"
  mkdir -p "$DEST"; tar czf "$DEST/session4.tgz" -C "$OUT" .  # whatever is done comes back
}
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > "$OUT/gpu.txt" 2>&1
part stepsize 150 python3 bench/stepsize.py --cases signum alias 'alias(beta)' alias-lowmem --out "$OUT"
part test_cuda 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
part alias_fusion 80 python3 bench/alias_fusion.py --out "$OUT/alias_fusion.json"
part realize_check 70 python3 bench/realize_check.py fp32 bf16
part blocks 150 python3 bench/blocks.py --policies --skip-per-layer --out "$OUT"
part vote_w1 90 python3 -m torch.distributed.run --standalone --nproc_per_node=1 bench/vote.py --skip-gpt --out "$OUT"
head -3 "$OUT/gpu.txt"; tail -n 3 "$OUT/test_cuda.log"
grep -A8 "^| case" "$OUT/stepsize.log" | head -7
grep -A3 "^| check_case" "$OUT/stepsize.log" | head -7
tail -n 12 "$OUT/alias_fusion.log"; tail -n 4 "$OUT/realize_check.log"
tail -n 8 "$OUT/vote_w1.log"; tail -n 9 "$OUT/blocks.log"
tar czf "$DEST/session4.tgz" -C "$OUT" .
