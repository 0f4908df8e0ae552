#!/usr/bin/env bash
# The stand-in world's long CPU pipeline (docs/generalization.md, sections 5-7), resumable:
# pretraining (the committed backbone, or the world corpus and pretrain-world), the three domains,
# then the zero-shot gate.
# Each step is skipped when its output exists; rerunning the script continues where it stopped.
#   bash scripts/world_pipeline.sh [W]        (W: a folder outside the repository; default /work/world)
#   DOMAINS=cuhk bash scripts/world_pipeline.sh W   (only those domains)
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/work/world}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$W"
log() { echo "$(date -u +%FT%TZ) $*"; }

SHIPPED=assets/world/backbone.safetensors  # the backbone this pipeline made, committed (assets/world/README.md)
if [ ! -f "$W/pretrain/backbone.safetensors" ] && [ -f "$SHIPPED" ] && [ -z "${PRETRAIN_AGAIN:-}" ]; then
  log "pretraining: the committed backbone, checked against assets/world/SHA256SUMS (PRETRAIN_AGAIN=1 redoes it)"
  (cd assets/world && sha256sum --check --quiet SHA256SUMS) || { echo "error: $SHIPPED fails its checksum" >&2; exit 2; }
  mkdir -p "$W/pretrain" && cp "$SHIPPED" "$W/pretrain/backbone.safetensors"
fi
if [ ! -f "$W/pretrain/backbone.safetensors" ]; then
  if [ ! -f "$W/world/ToyPEDES-weak/reid_raw.json" ]; then  # the world corpus: only pretraining reads it
    log "world corpus"
    nice -n 19 $PY -m upperson toypedes --out "$W/world" --preset regime --domain world --captions weak --workers 2
  fi
  if [ -d "$W/pretrain" ]; then
    log "pretraining (resume)"
    nice -n 19 $PY -m upperson pretrain --data-root "$W/world" --output "$W/pretrain" --resume --no-progress
  else
    log "pretraining"
    nice -n 19 $PY -m upperson pretrain --config pretrain-world --data-root "$W/world" --output "$W/pretrain" --no-progress
  fi
fi
sha256sum "$W/pretrain/backbone.safetensors"
for d in ${DOMAINS:-cuhk icfg rstp}; do
  if [ ! -f "$W/data/$d/ToyPEDES/reid_raw.json" ]; then
    log "domain $d"
    nice -n 19 $PY -m upperson toypedes --out "$W/data/$d" --preset regime --domain "$d" --workers 2
  fi
done
for d in ${DOMAINS:-cuhk icfg rstp}; do
  if [ ! -f "$W/gate-$d.json" ]; then
    log "gate $d"
    nice -n 19 $PY -m upperson evaluate --config toypedes-regime --set model.pretrained="$W/pretrain/backbone.safetensors" \
      --set model.prefix.enabled=false --set model.lora.enabled=false --set model.adapter.enabled=false \
      --set train.epochs=0 --data-root "$W/data/$d" --dataset toypedes --split test --json "$W/gate-$d.json"
  fi
done
log "done"
