#!/usr/bin/env bash
# One GPU, fourth session (exploration): ALIAS pass formulations, compiled-vs-eager at each
# inlining threshold, the vote step on one rank, the blocks policies' memory. Each part
# time-boxed. Usage (GPU machine, repo root):  OUT=/some/dir bash bench/gpu_session4.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=. TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/signify-inductor}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > "$OUT/gpu.txt" 2>&1
timeout ${CUDA_TESTS_S:-150} python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$OUT/test_cuda.log" 2>&1
echo "test_cuda rc=$?"
timeout ${FUSION_S:-120} python3 bench/alias_fusion.py --out "$OUT/alias_fusion.json" > "$OUT/alias_fusion.log" 2>&1
echo "alias_fusion rc=$?"
timeout ${REALIZE_S:-110} python3 bench/realize_check.py fp32 bf16 > "$OUT/realize_check.log" 2>&1
echo "realize_check rc=$?"
timeout ${VOTE_S:-100} python3 -m torch.distributed.run --standalone --nproc_per_node=1 bench/vote.py --skip-gpt --out "$OUT" > "$OUT/vote_w1.log" 2>&1
echo "vote W=1 rc=$?"
timeout ${BLOCKS_S:-150} python3 bench/blocks.py --policies --skip-per-layer --out "$OUT" > "$OUT/blocks.log" 2>&1
echo "blocks rc=$?"
head -3 "$OUT/gpu.txt"; tail -n 5 "$OUT/test_cuda.log"; tail -n 10 "$OUT/alias_fusion.log"; cat "$OUT/realize_check.log" | tail -4
tail -n 14 "$OUT/vote_w1.log"; tail -n 10 "$OUT/blocks.log"
