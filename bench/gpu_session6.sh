#!/usr/bin/env bash
# One GPU, sixth session. PARTS=a: the 134M step table (fp32, bf16) with flat buckets under
# the non-finite settings (the default eager check; SIGNIFY_FINITE_CHECK=graph, a compiled
# prepass; =fused, inside the bookkeeping graph, an option tried in this session and removed
# after this measurement; none), and the noise micro-benchmark with candidate hashes.
# PARTS=b: the same check rows at LLaMA-350M shapes, cold/warm first step of a flat step
# beside torch's own first-compile floor (fresh processes, .pyc written), ALIAS against
# Signum. PARTS=c: the CUDA tests, the noise chains' rows after a library change, ALIAS
# against Signum with whole-tensor sums in two stages (SIGNIFY_REDUCE_ROWS). PARTS=d: the
# same after flat buckets compile for their size, on a fresh inductor cache.
# Each part time-boxed and skipped when the call's TOTAL_S (default 540 s) would not cover
# it; results copied to $OUT after every part.
# Usage (GPU machine, repo root):  OUT=/some/dir PARTS=a bash bench/gpu_session6.sh
set -u
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/signify-inductor}
TGZ=session6.tgz
source bench/gpu_lib.sh
# (The runs of 2026-12-07 also had "@check=fused" rows, commit c66bb56: Signum, StoSignSGD,
# stochastic and deterministic Adam at 134M, stochastic Adam at 350M.)
F="[flatten]"; I="[flatten; nonfinite=ignore]"; G="[flatten] @check=graph"
R134="torch AdamW fused,Signum $F,Signum $I,StoSignSGD $F,StoSignSGD $I,SignAdam stochastic $F,SignAdam stochastic $G,SignAdam stochastic $I,SignAdam deterministic $I"
R350="SignAdam stochastic $F,SignAdam stochastic $I"
NOX="--no-variants --no-rng"
case "${PARTS:-a}" in
a)
  part step134 250 python3 bench/step.py --workloads 134m --dtypes fp32,bf16 --rows "$R134" $NOX --no-check --no-cold --out "$WORK/step134.json"
  part rng 150 python3 -m bench.step_rng --out "$WORK/rng.json"
  ;;
b)
  part step350 200 python3 bench/step.py --workloads 350m --dtypes fp32 --rows "$R350" $NOX --no-check --cold-row "SignAdam stochastic $F" --out "$WORK/step350.json"
  part stepsize 110 python3 bench/stepsize.py --cases signum alias signum,flat alias,flat --out "$WORK/ss"
  ;;
c)
  RC="Signum $I,StoSignSGD $I,SignAdam stochastic $I,SignAdam stochastic $F"
  part test_cuda 170 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
  part step134c 150 python3 bench/step.py --workloads 134m --dtypes fp32,bf16 --rows "${ROWS:-$RC}" $NOX --no-check --no-cold --out "$WORK/step134c.json"
  part ss_plain 60 python3 bench/stepsize.py --cases signum alias signum,flat alias,flat --no-check --out "$WORK/ss_plain"
  part ss_rows16k 60 env SIGNIFY_REDUCE_ROWS=16384 python3 bench/stepsize.py --cases signum alias signum,flat alias,flat --no-check --out "$WORK/ss_rows16k"
  part ss_rows2k 60 env SIGNIFY_REDUCE_ROWS=2048 python3 bench/stepsize.py --cases signum alias signum,flat alias,flat --no-check --out "$WORK/ss_rows2k"
  ;;
d)  # after flat buckets compile static and large sums go in two stages; fresh cache
  export TORCHINDUCTOR_CACHE_DIR=$(mktemp -d)
  part ss_final 100 python3 bench/stepsize.py --cases signum alias signum,flat alias,flat --out "$WORK/ss_final"
  part step134d 100 python3 bench/step.py --workloads 134m --dtypes fp32,bf16 --rows "Signum $F,SignAdam stochastic $F,SignAdam stochastic $I,StoSignSGD $I" $NOX --no-check --no-cold --out "$WORK/step134d.json"
  part test_cuda 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
  part step350d 120 python3 bench/step.py --workloads 350m --dtypes fp32 --rows "SignAdam stochastic $F,SignAdam stochastic $I" $NOX --no-check --cold-row "SignAdam stochastic $F" --out "$WORK/step350d.json"
  ;;
esac
cat "$WORK/parts.txt"; head -3 "$WORK/gpu.txt"
for f in step134 step350 step134c step134d step350d; do [ -f "$WORK/$f.log" ] && { echo "== $f"; grep -E '^\| |^compile|^copy' "$WORK/$f.log" | cut -d'|' -f2-8,12; }; done
[ -f "$WORK/rng.log" ] && { echo "== rng"; grep -E '^\||^copy|^int32' "$WORK/rng.log"; }
for f in stepsize ss_plain ss_rows16k ss_rows2k ss_final; do [ -f "$WORK/$f.log" ] && { echo "== $f"; grep -A6 "^| case" "$WORK/$f.log" | head -6 | cut -d'|' -f2-5; }; done
[ -f "$WORK/test_cuda.log" ] && { echo "== test_cuda"; tail -n 4 "$WORK/test_cuda.log"; }
tar czf "$DEST/session6.tgz" -C "$WORK" .
