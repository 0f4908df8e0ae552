#!/usr/bin/env bash
# The tuning grid of docs/generalization.md section 4 on one source domain, resumable:
# UP-Person a/b/c and full fine-tune a/b/c, two runs at a time (one per core, one thread each).
# A finished run (results.json) is skipped; a started one is resumed.
#   bash scripts/world_grid.sh SOURCE [W]     (SOURCE: cuhk or icfg; W as for world_pipeline.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
S=${1:?source domain: cuhk or icfg}
W=${2:-/work/world}
PY=${PYTHON:-.venv/bin/python}
B="$W/pretrain/backbone.safetensors"   # world_pipeline.sh puts it there (from assets/world/ when committed)
[ -f "$B" ] || { echo "error: $B is missing: run scripts/world_pipeline.sh $W first" >&2; exit 2; }
[ -d "$W/data/$S/ToyPEDES" ] || { echo "error: $W/data/$S is missing: run scripts/world_pipeline.sh $W first" >&2; exit 2; }
R="$W/runs/$S"
mkdir -p "$R"

run() {  # NAME CONFIG [--set ...]
  local name=$1 config=$2; shift 2
  local out="$R/$name"
  if [ -f "$out/results.json" ]; then echo "$(date -u +%T) $name: done"; return; fi
  if [ -d "$out" ]; then
    echo "$(date -u +%T) $name: resume"
    OMP_NUM_THREADS=1 nice -n 19 $PY -m upperson train --output "$out" --resume --data-root "$W/data/$S" --no-progress
  else
    echo "$(date -u +%T) $name: start"
    OMP_NUM_THREADS=1 nice -n 19 $PY -m upperson train --config "$config" --data-root "$W/data/$S" --output "$out" \
      --set model.pretrained="$B" --no-progress "$@"
  fi
}

up_lane() {
  run up_a toypedes-regime --set train.lr=1e-3
  run up_b toypedes-regime --set train.lr=3e-3
  run up_c toypedes-regime --set train.lr=3e-3 --set model.prefix.length=10 --set model.lora.rank=32
}
ft_lane() {
  run ft_a toypedes-regime-full-finetune --set train.lr=1e-4
  run ft_b toypedes-regime-full-finetune --set train.lr=3e-4
  run ft_c toypedes-regime-full-finetune --set train.lr=1e-3
}
up_lane > "$R/../grid-$S-up.log" 2>&1 &
ft_lane > "$R/../grid-$S-ft.log" 2>&1 &
wait
echo "$(date -u +%T) grid $S finished"
