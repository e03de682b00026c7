# Shared by bench/gpu_session*.sh (sourced): a time-boxed part of a GPU session.
# Needs TGZ (the archive's name); takes WORK (a scratch folder), DEST (where the archive goes,
# default $OUT) and END (the call's deadline in $SECONDS, default TOTAL_S = 540 s from now)
# where the script set them; records GPU and versions in $WORK/gpu.txt.
export PYTHONUNBUFFERED=1 PYTHONPATH=.
DEST=${DEST:-${OUT:-bench/results}}
WORK=${WORK:-$(mktemp -d)}
END=${END:-$((SECONDS + ${TOTAL_S:-540}))}
part() {  # part NAME SECONDS command...: run if it fits, time-boxed; archive after each
  local name=$1 limit=$2; shift 2
  local left=$((END - SECONDS))
  if [ "$left" -lt 20 ]; then echo "$name skipped (no time left)" | tee -a "$WORK/parts.txt"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0=$SECONDS
  timeout "$limit" "$@" > "$WORK/$name.log" 2>&1
  echo "$name rc=$? ${limit}s box, took $((SECONDS - t0))s" | tee -a "$WORK/parts.txt"
  mkdir -p "$DEST"; tar czf "$DEST/$TGZ" -C "$WORK" .
}
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > "$WORK/gpu.txt" 2>&1
