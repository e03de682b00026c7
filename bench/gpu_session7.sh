#!/usr/bin/env bash
# One GPU, seventh session. PARTS=a: inductor's inlining threshold against eager (bits), and
# side by side on a fresh inductor cache: ALIAS against Signum per tensor with dynamic-size
# graphs (the default), static-size graphs (SIGNIFY_SHAPES=static) and combo kernels; where a
# per-tensor ALIAS step's time goes (kernel profile); the 134M step table with
# SIGNIFY_REALIZE_THRESHOLD=8 and static sizes as row settings (fp32, bf16).
# PARTS=b: combo kernels (SIGNIFY_COMBO) on and off side by side: ALIAS against Signum, the
# 134M and 374M per-tensor rows; the cold/warm first step at 374M of the current build beside
# torch's floor; the CUDA tests. PARTS=c (prepared, not run): the 374M rows and cold/warm
# probes (flat and per tensor) with combo kernels, the bf16 rows after the hoist.
# Each part time-boxed and skipped when the call's TOTAL_S (default 540 s) would not cover
# it; results copied to $OUT after every part.
# Usage (GPU machine, repo root):  OUT=/some/dir PARTS=a bash bench/gpu_session7.sh
set -u
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$(mktemp -d)}
TGZ=session7.tgz
source bench/gpu_lib.sh
F="[flatten]"; I="[flatten; nonfinite=ignore]"; P="[nonfinite=ignore]"
COMBO='{"combo_kernels": true}'
case "${PARTS:-a}" in
a)
  part realize 90 python3 bench/realize_check.py fp32 bf16
  part ss_dyn 70 python3 bench/stepsize.py --cases signum alias signum,flat alias,flat --out "$WORK/ss_dyn"
  part ss_static 70 env SIGNIFY_SHAPES=static python3 bench/stepsize.py --cases signum alias --out "$WORK/ss_static"
  part ss_combo 70 env SIGNIFY_INDUCTOR="$COMBO" python3 bench/stepsize.py --cases signum alias signum,flat alias,flat --out "$WORK/ss_combo"
  part profile 70 python3 bench/profile_step.py --case alias --case signum --out "$WORK/profile"
  R="Signum $I,SignAdam stochastic $I,SignAdam stochastic $I @realize=8,StoSignSGD $I,StoSignSGD $I @realize=8,SignAdam stochastic $P,SignAdam stochastic $P @shapes=static"
  part step134 150 python3 bench/step.py --workloads 134m --dtypes fp32,bf16 --rows "${ROWS:-$R}" --no-variants --no-rng --no-check --no-cold --out "$WORK/step134.json"
  ;;
b)  # combo kernels (SIGNIFY_COMBO, default all) side by side; 374M; the CUDA tests
  R="Signum,SignAdam stochastic,SignAdam stochastic $P,SignAdam stochastic $P @combo=off,SignAdam deterministic,SignAdam stochastic $I,SignAdam stochastic $I @hoist=0,StoSignSGD $I"
  part step134 120 python3 bench/step.py --workloads 134m --dtypes fp32,bf16 --rows "${ROWS:-$R}" --no-variants --no-rng --no-check --no-cold --out "$WORK/step134.json"
  part ss_all 70 python3 bench/stepsize.py --cases signum alias signum,flat alias,flat --out "$WORK/ss_all"
  part ss_off 60 env SIGNIFY_COMBO=off python3 bench/stepsize.py --cases signum alias --out "$WORK/ss_off"
  part test_cuda 150 env TORCHINDUCTOR_CACHE_DIR="$(mktemp -d)" python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
  R="SignAdam stochastic $F,SignAdam stochastic $I,SignAdam stochastic $P,SignAdam stochastic $P @combo=off"
  part step350 170 python3 bench/step.py --workloads 350m --dtypes fp32 --rows "${ROWS350:-$R}" --no-variants --no-rng --no-check --cold-row "SignAdam stochastic $F" --out "$WORK/step350.json"
  part ss_prep 60 env SIGNIFY_COMBO=prepare python3 bench/stepsize.py --cases signum alias --out "$WORK/ss_prep"
  part ss_all2 60 python3 bench/stepsize.py --cases signum alias --out "$WORK/ss_all2"
  ;;
c)  # not run yet (device time ran out): what part b's boxes cut off
  part step350 200 python3 bench/step.py --workloads 350m --dtypes fp32 --rows "SignAdam stochastic $P,SignAdam stochastic $P @combo=off,SignAdam stochastic" --no-variants --no-rng --no-check --cold-row "SignAdam stochastic $F" --out "$WORK/step350.json"
  part cold_pt 150 python3 bench/step.py --workloads 350m --dtypes fp32 --rows "SignAdam stochastic" --no-variants --no-rng --no-check --cold-row "SignAdam stochastic" --out "$WORK/cold_pt.json"
  R="StoSignSGD $I,SignAdam deterministic $I,SignAdam stochastic $I"
  part step134 90 python3 bench/step.py --workloads 134m --dtypes fp32,bf16 --rows "$R" --no-variants --no-rng --no-check --no-cold --out "$WORK/step134.json"
  part ss_prep 60 env SIGNIFY_COMBO=prepare python3 bench/stepsize.py --cases signum alias --out "$WORK/ss_prep"
  ;;
esac
cat "$WORK/parts.txt"; head -3 "$WORK/gpu.txt"
[ -f "$WORK/realize.log" ] && { echo "== realize"; tail -n 4 "$WORK/realize.log"; }
for f in step134 step350 cold_pt; do [ -f "$WORK/$f.log" ] && { echo "== $f"; grep -E '^\| |^compile|^copy' "$WORK/$f.log" | cut -d'|' -f2-8,12; }; done
for f in ss_dyn ss_static ss_combo ss_all ss_off ss_prep ss_all2; do [ -f "$WORK/$f.log" ] && { echo "== $f"; grep -A6 "^| case" "$WORK/$f.log" | head -6 | cut -d'|' -f2-5; }; done
[ -f "$WORK/profile.log" ] && { echo "== profile"; for p in "$WORK"/profile/profile_*.txt; do head -n 8 "$p" | cut -c1-150; done; }
[ -f "$WORK/test_cuda.log" ] && { echo "== test_cuda"; tail -n 4 "$WORK/test_cuda.log"; }
tar czf "$DEST/$TGZ" -C "$WORK" .
