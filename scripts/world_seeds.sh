#!/usr/bin/env bash
# docs/generalization.md section 4: each method's selected configuration on one source, again with
# train.seed 1 and 2 (3 seeds with the grid's seed 0), resumable, two runs at a time (one per core).
# The selection is assets/world/runs/SOURCE/selection.json (python scripts/world_collect.py SOURCE W,
# on the source's val split only); each seed run trains from the selected run's own config.yaml.
#   bash scripts/world_seeds.sh SOURCE [W]        (SEEDS="1" to run only seed 1; default "1 2")
set -euo pipefail
cd "$(dirname "$0")/.."
S=${1:?source domain: cuhk or icfg}
W=${2:-/work/world}
PY=${PYTHON:-.venv/bin/python}
SEEDS=${SEEDS:-1 2}
SEL=assets/world/runs/$S/selection.json
[ -f "$SEL" ] || { echo "error: $SEL is missing: run python scripts/world_collect.py $S $W first" >&2; exit 2; }
R="$W/runs/$S"
selected() { $PY -c "import json,sys; print(json.load(open('$SEL'))['selected'][sys.argv[1]]['run'])" "$1"; }

run_seed() {  # SELECTED_NAME SEED
  local base=$1 seed=$2 out="$R/$1-seed$2"
  if [ -f "$out/results.json" ]; then echo "$(date -u +%T) $base seed $seed: done"; return; fi
  if [ -d "$out" ]; then
    echo "$(date -u +%T) $base seed $seed: resume"
    OMP_NUM_THREADS=1 nice -n 19 $PY -m upperson train --output "$out" --resume --data-root "$W/data/$S" --no-progress
  else
    echo "$(date -u +%T) $base seed $seed: start"
    OMP_NUM_THREADS=1 nice -n 19 $PY -m upperson train --config "$R/$base/config.yaml" --data-root "$W/data/$S" \
      --output "$out" --set train.seed="$seed" --no-progress
  fi
}
UP=$(selected upperson)
FT=$(selected full-finetune)
{ for k in $SEEDS; do run_seed "$UP" "$k"; done; } >> "$R/../seeds-$S-up.log" 2>&1 &
{ for k in $SEEDS; do run_seed "$FT" "$k"; done; } >> "$R/../seeds-$S-ft.log" 2>&1 &
wait
echo "$(date -u +%T) seeds $S finished"
