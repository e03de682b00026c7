#!/usr/bin/env bash
# One GPU, fifth session. PARTS=a: the step table (134M fp32/bf16, LLaMA-350M shapes) with
# flatten=True beside the per-tensor layout, the cold/warm compile of a flat step, ALIAS with
# move="auto" against "measure" and Signum, ALIAS pass formulations under inductor's defaults
# and coordinate-descent tuning. PARTS=b: coordinate-descent tuning end to end, the CUDA
# tests, compiled-vs-eager per inlining threshold, the vote on one rank. Each part
# time-boxed and skipped when the call's TOTAL_S (default 540 s) would not cover it; results
# packed after every part.
# Usage (GPU machine, repo root):  OUT=/some/dir PARTS=a bash bench/gpu_session5.sh  (-> session5.tgz)
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=. TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/signify-inductor}
DEST=${OUT:-bench/results}
OUT=$(mktemp -d)
END=$((SECONDS + ${TOTAL_S:-540}))
CDT='{"coordinate_descent_tuning": true}'
WORK=$OUT TGZ=session5.tgz
source bench/gpu_lib.sh
R134="torch AdamW fused,Signum,Signum [flatten],StoSignSGD,StoSignSGD [flatten],SignAdam stochastic,SignAdam stochastic [flatten],SignAdam stochastic [nonfinite=ignore],SignAdam stochastic [flatten; nonfinite=ignore],SignAdam deterministic,SignAdam deterministic [flatten]"
R350="torch AdamW fused,Signum,Signum [flatten],SignAdam stochastic,SignAdam stochastic [flatten],SignAdam stochastic [nonfinite=ignore],SignAdam stochastic [flatten; nonfinite=ignore]"
NOX="--no-variants --no-rng"
case "${PARTS:-a}" in
a)
  part step134 200 python3 bench/step.py --workloads 134m --dtypes fp32,bf16 --rows "$R134" $NOX --no-check --no-cold --out "$OUT/step134.json"
  part step350 150 python3 bench/step.py --workloads 350m --dtypes fp32 --rows "$R350" $NOX --no-check --cold-row "SignAdam stochastic [flatten]" --out "$OUT/step350.json"
  part stepsize 100 python3 bench/stepsize.py --cases signum alias 'alias,measure' 'alias(beta)' signum,flat alias,flat 'alias(beta),flat' --out "$OUT/ss_default"
  part warm_profile 60 bash -c 'export TORCHINDUCTOR_CACHE_DIR=$(mktemp -d); P="python3 -m bench.step --compile-probe --workload 350m --chunk 8 --row"; $P "SignAdam stochastic [flatten]" && $P "SignAdam stochastic [flatten]" --profile'
  part alias_fusion 120 python3 bench/alias_fusion.py --options default,cdt --out "$OUT/alias_fusion.json"
  ;;
c)
  part step134 200 python3 bench/step.py --workloads 134m --dtypes fp32,bf16 --rows "$R134" $NOX --no-check --no-cold --out "$OUT/step134.json"
  part step350 150 python3 bench/step.py --workloads 350m --dtypes fp32 --rows "$R350" $NOX --no-check --cold-row "SignAdam stochastic [flatten]" --out "$OUT/step350.json"
  ;;
b)
  part step_check 100 python3 bench/step.py --workloads 134m --dtypes fp32 --rows "Signum [flatten],Signum [flatten; nonfinite=ignore],SignAdam deterministic [flatten; nonfinite=ignore]" $NOX --no-cold --out "$OUT/step_check.json"
  part test_cuda 100 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
  part replay 150 python3 bench/replay_check.py --only "AdamW fused" --only flatten --only "chunk=8" --out "$OUT"
  ;;
d)
  part step_cdt 150 env SIGNIFY_INDUCTOR="$CDT" python3 bench/step.py --workloads 134m,350m --dtypes fp32 --rows "Signum [flatten],SignAdam stochastic [flatten],SignAdam stochastic [flatten; nonfinite=ignore]" $NOX --no-check --no-cold --out "$OUT/step_cdt.json"
  part stepsize_cdt 90 env SIGNIFY_INDUCTOR="$CDT" python3 bench/stepsize.py --cases signum,flat alias,flat 'alias(beta),flat' --no-check --out "$OUT/ss_cdt"
  part realize_check 70 python3 bench/realize_check.py fp32 bf16
  part vote_w1 90 python3 -m torch.distributed.run --standalone --nproc_per_node=1 bench/vote.py --skip-gpt --out "$OUT"
  ;;
esac
cat "$OUT/parts.txt"; head -3 "$OUT/gpu.txt"
for f in step134 step350 step_check step_cdt; do [ -f "$OUT/$f.log" ] && { echo "== $f"; grep -E '^\| |^compile|^copy' "$OUT/$f.log" | cut -c1-170; }; done
for f in stepsize stepsize_cdt; do [ -f "$OUT/$f.log" ] && { echo "== $f"; grep -A8 "^| case" "$OUT/$f.log" | head -8; }; done
[ -f "$OUT/alias_fusion.log" ] && grep -A24 "^| pass" "$OUT/alias_fusion.log"
grep '"first_s"' "$OUT/warm_profile.log" 2>/dev/null
[ -f "$OUT/replay.log" ] && grep -A14 "^| row" "$OUT/replay.log"
for f in test_cuda realize_check vote_w1; do [ -f "$OUT/$f.log" ] && { echo "== $f"; tail -n 4 "$OUT/$f.log"; }; done
tar czf "$DEST/session5.tgz" -C "$OUT" .
