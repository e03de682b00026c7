#!/usr/bin/env bash
# The majority vote on the lent 2-GPU machine (issue 6), each part time-boxed so a short lease
# still returns the first parts. Usage (on the GPU machine, repo root):
#   OUT=/some/dir bash bench/gpu_vote_session.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=. TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/signify-inductor}
# NVLink multicast stays off on the shared hosts (KINDS.md).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
W=$(python3 -c "import torch; print(torch.cuda.device_count())")
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv; nvidia-smi topo -m;
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'nccl', torch.cuda.nccl.version())"; } > "$OUT/gpu.txt" 2>&1
RUN="python3 -m torch.distributed.run --standalone"
# 1. W ranks: the vote step against NCCL all-reduce (374M gradient), then the data-parallel GPT.
timeout ${MAIN_S:-420} $RUN --nproc_per_node=$W bench/vote.py --blocks --out "$OUT" > "$OUT/vote.log" 2>&1
echo "vote W=$W rc=$?"
# 2. The same vote step without the finite check's extra read of g (nonfinite="ignore").
timeout ${IGNORE_S:-60} $RUN --nproc_per_node=$W bench/vote.py --skip-gpt --nonfinite ignore --out "$OUT/ignore" > "$OUT/vote_ignore.log" 2>&1
echo "vote ignore rc=$?"
# 3. One rank, the same GPT runs: the base of the scaling efficiency.
timeout ${ONE_S:-60} $RUN --nproc_per_node=1 bench/vote.py --skip-micro --blocks --out "$OUT/w1" > "$OUT/vote_w1.log" 2>&1
echo "vote W=1 rc=$?"
cat "$OUT/gpu.txt" | head -3
tail -n 20 "$OUT/vote.log"; tail -n 14 "$OUT/vote_ignore.log"; tail -n 8 "$OUT/vote_w1.log"
