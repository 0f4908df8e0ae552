#!/usr/bin/env bash
# The ablation rerun on the stand-in world (docs/generalization.md section 5 item 3): source cuhk,
# every variant (LN-tuning included), 3 seeds, 10 epochs, UP-Person's lr as the cuhk tuning grid
# selected (3e-3; the full fine-tune variant's backbone lr stays 1e-4), evaluated on the cuhk test
# split, then on the icfg and rstp test splits (`--test-on`, each its own folder). Resumable.
# The runs are kept in the repository (assets/world/ablation-runs, without their last/ training state:
# .gitignore), so that the rerun continues on a later machine: commit the complete runs before the
# machine goes. The full fine-tune variant's 31 MB weights are not kept, so its --test-on must run on
# the machine that trained it.
#   bash scripts/world_ablation.sh [W]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/work/world}
PY=${PYTHON:-.venv/bin/python}
RUNS=${RUNS:-assets/world/ablation-runs}
source scripts/world_data.sh
require_world_data "$W"
run=(--config toypedes-regime --set model.pretrained=assets/world/backbone.safetensors --set train.lr=0.003
  --epochs 10 --seeds 3 --runs-dir "$RUNS" --no-progress)
OMP_NUM_THREADS=2 nice -n 19 $PY -m analysis ablation --run "${run[@]}" --data-root "$W/data/cuhk" --out assets/ablation
for t in icfg rstp; do
  OMP_NUM_THREADS=2 nice -n 19 $PY -m analysis ablation --runs-dir "$RUNS" --no-progress \
    --test-on "$t=$W/data/$t" --out "assets/ablation/cuhk-to-$t"
done
