#!/usr/bin/env bash
# Ninth GPU session (2026-12-07): after splitting the executor (planner.py, cudagraphs.py,
# gradcheck.py) and the optimizer (options.py, checkpoint.py), all CUDA tests on the new
# code, then the same bench rows on the code before the split (a copy of signify/ from
# 95225c4 placed at old/, untracked) and after it, one after the other in this call.
# PARTS=chunks: per tensor at the 374M shapes, cold/warm compile (fresh processes) and the
# step time with and without the CUDA-graph replay for compile_chunk 1, 2, 4 and 8.
# PARTS=asserts: inductor's size_asserts on (a copy of signify/ from the commit before, at
# old/) against off (this tree), with and without the CUDA-graph replay, 134M and 374M.
# Usage (GPU machine, repo root):  OUT=/some/dir [PARTS=chunks|asserts] bash bench/gpu_session9.sh
set -u
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$(mktemp -d)}
TGZ=session9.tgz
source bench/gpu_lib.sh
case "${PARTS:-split}" in
split)
part cuda 300 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
R="SignAdam stochastic,SignAdam stochastic [flatten; nonfinite=ignore],Signum"
for impl in old new; do
  [ "$impl" = old ] && [ ! -d old/signify ] && { echo "old/ missing" | tee -a "$WORK/parts.txt"; continue; }
  path=.; [ "$impl" = old ] && path=old:.
  PYTHONPATH=$path part "ab_$impl" 120 python3 bench/step.py --workloads 134m --dtypes fp32 \
    --rows "$R" --no-variants --no-rng --no-check --no-cold --out "$WORK/ab_$impl.json"
  # -P: no cwd on sys.path, as for bench/step.py (whose sys.path[0] is bench/)
  PYTHONPATH=$path python3 -P -c "import signify; print('$impl imports', signify.__file__)" >> "$WORK/parts.txt" 2>&1
done
;;
chunks)  # per tensor at 374M: compile cold/warm and step time per compile_chunk, replay on/off
  part cold 240 python3 bench/step.py --workloads 350m --dtypes fp32 --rows "SignAdam stochastic" \
    --no-variants --no-rng --no-check --cold-chunks 1,2,4,8 --out "$WORK/cold.json"
  for c in 1 2 4 8; do
    part "replay_$c" 60 python3 bench/step.py --workloads 350m --dtypes fp32 --rows "SignAdam stochastic" \
      --chunk $c --no-variants --no-rng --no-check --no-cold --out "$WORK/replay_$c.json"
    SIGNIFY_CUDA_GRAPHS=0 part "nograph_$c" 60 python3 bench/step.py --workloads 350m --dtypes fp32 \
      --rows "SignAdam stochastic" --chunk $c --no-variants --no-rng --no-check --no-cold --out "$WORK/nograph_$c.json"
  done
;;
asserts)  # size_asserts on (old/: the commit before) and off (this tree), replay off and on
  cd_ok=1; [ -d old/signify ] || { echo "old/ missing" | tee -a "$WORK/parts.txt"; cd_ok=0; }
  R="SignAdam stochastic,Signum"
  part host 90 python3 bench/host_overhead.py --device cuda --out "$WORK/host.json"
  for impl in old new; do
    [ "$impl" = old ] && [ "$cd_ok" = 0 ] && continue
    path=.; [ "$impl" = old ] && path=old:.
    PYTHONPATH=$path SIGNIFY_CUDA_GRAPHS=0 part "nograph_$impl" 110 python3 bench/step.py --workloads 134m,350m \
      --dtypes fp32 --rows "$R" --no-variants --no-rng --no-check --no-cold --out "$WORK/nograph_$impl.json"
    PYTHONPATH=$path python3 -P -c "import signify; print('$impl imports', signify.__file__)" >> "$WORK/parts.txt" 2>&1
  done
  part cuda_some 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py -k "flat or resume or sync or clip"
  for impl in old new; do
    [ "$impl" = old ] && [ "$cd_ok" = 0 ] && continue
    path=.; [ "$impl" = old ] && path=old:.
    PYTHONPATH=$path part "replay_$impl" 90 python3 bench/step.py --workloads 350m \
      --dtypes fp32 --rows "$R" --no-variants --no-rng --no-check --no-cold --out "$WORK/replay_$impl.json"
  done
;;
esac
cat "$WORK/parts.txt"; head -3 "$WORK/gpu.txt"
[ -f "$WORK/cold.log" ] && { echo "== cold"; grep -E '^compile' "$WORK/cold.log"; }
for f in "$WORK"/replay_*.log "$WORK"/nograph_*.log; do
  [ -f "$f" ] && { echo "== $(basename "$f")"; grep -E '^\| (134|350)m' "$f" | cut -d'|' -f2,4,6,8,12,13; }
done
[ -f "$WORK/host.log" ] && { echo "== host"; tail -n 5 "$WORK/host.log"; }
[ -f "$WORK/cuda_some.log" ] && { echo "== cuda_some"; tail -n 2 "$WORK/cuda_some.log"; }
for f in ab_old ab_new; do [ -f "$WORK/$f.log" ] && { echo "== $f"; grep -E '^\| |^copy' "$WORK/$f.log" | cut -d'|' -f2-8; }; done
[ -f "$WORK/cuda.log" ] && { echo "== cuda"; tail -n 3 "$WORK/cuda.log"; }
tar czf "$DEST/$TGZ" -C "$WORK" .
