#!/usr/bin/env bash
# Ship the stand-in world's cuhk runs as the embedded default (issue 19, "retrain and ship";
# docs/generalization.md): the model card's tuning log needs every grid run's checkpoint, so the full
# fine-tunes' weights (31 MB each, not in the repository) are taken from the study folder W, where
# `python -m upperson train --config assets/world/runs/cuhk/ft_X/config.yaml --data-root W/data/cuhk
# --output W/runs/cuhk/ft_X` made them again (deterministic: loading checks them against the committed
# petl.json's SHA-256, so weights that differ are refused, not shipped). Then export-embedded.
#   bash scripts/world_ship.sh [W]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/work/world}
PY=${PYTHON:-.venv/bin/python}
R=assets/world/runs/cuhk
for r in ft_a ft_b ft_c; do
  f=$R/$r/best/petl.safetensors
  if [ ! -f "$f" ]; then
    src=$W/runs/cuhk/$r/best/petl.safetensors
    [ -f "$src" ] || { echo "error: $f is missing and so is $src: make it again with python -m upperson train --config $R/$r/config.yaml --data-root $W/data/cuhk --output $W/runs/cuhk/$r" >&2; exit 2; }
    cp "$src" "$f"
  fi
done
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} $PY -m upperson export-embedded --backbone-folder assets/world \
  --upperson-run $R/up_a $R/up_b $R/up_c --full-finetune-run $R/ft_a $R/ft_b $R/ft_c --data-root "$W/data/cuhk"
