#!/usr/bin/env bash
# The GPU check of issue 13, for one machine with a CUDA GPU and torch, without network.
#
#   scripts/gpu_check.sh OUTDIR [WHEELS_DIR]
#
# Installs what is missing (open_clip and its small dependencies) from the wheels in
# WHEELS_DIR (default: scripts/wheels) into a temporary folder, never from the network, then
# runs, each step under its own time limit so that the whole check stays under 8 minutes:
#   doctor                 -> OUTDIR/doctor.json
#   benchmark, batch 128   -> OUTDIR/benchmark.json, OUTDIR/benchmark_checkpointing.json
#     (UP-Person, naive, full fine-tune: samples/s, peak memory; ViT-B/16 random weights, bf16)
#   image encoding         -> OUTDIR/inference.json (open_clip vs UP-Person vs merged)
#   one ToyPEDES epoch     -> OUTDIR/toypedes_run/ (results.json, metrics.jsonl, train.log)
#   torchrun NCCL, 2 steps -> OUTDIR/ddp.json
# and OUTDIR/summary.json (each step's exit status and seconds). Logs: OUTDIR/<step>.log.
#
# Filling WHEELS_DIR (on a machine with network; match the GPU machine's Python version):
#   pip download --only-binary=:all: --no-deps --python-version 3.11 --platform manylinux2014_x86_64 \
#       -d scripts/wheels open_clip_torch==3.3.0 ftfy wcwidth regex tqdm safetensors pyyaml numpy pillow
# and, only if the GPU machine's torch has no torchvision, the torchvision built for its torch
# (torch 2.11 -> torchvision==0.26.*, same CUDA flavour as torch). Wheels are not committed.
set -u -o pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ] || [[ "$1" == -* ]]; then
    echo "usage: $0 OUTDIR [WHEELS_DIR]" >&2
    exit 2
fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ! OUT="$(mkdir -p -- "$1" && cd -- "$1" && pwd)"; then
    echo "[gpu_check] cannot create the output folder $1" >&2
    exit 2
fi
WHEELS="${2:-$REPO/scripts/wheels}"
PY="${PYTHON:-python3}"
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-470}   # seconds for everything, install included
SITE="$(mktemp -d)/site"
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TQDM_DISABLE=1 PYTHONWARNINGS=ignore
STATUS=()

step() {  # step NAME LIMIT_S command...: run with a time limit, log, record the status
    local name=$1 limit=$2; shift 2
    local left=$(( BUDGET - ($(date +%s) - START) ))
    if [ "$left" -lt 20 ]; then
        echo "[gpu_check] $name: skipped (time budget spent)"
        STATUS+=("\"$name\": {\"status\": \"skipped\", \"seconds\": 0}")
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "[gpu_check] $name (limit ${limit}s) ..."
    local t0=$(date +%s)
    if declare -F "$1" >/dev/null; then  # a function of this script (the install): no time limit
        "$@" >"$OUT/$name.log" 2>&1
    else
        timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    fi
    local rc=$?
    local dt=$(( $(date +%s) - t0 ))
    echo "[gpu_check] $name: exit $rc in ${dt}s"
    tail -n 4 "$OUT/$name.log" | sed 's/^/    /'
    STATUS+=("\"$name\": {\"status\": $rc, \"seconds\": $dt}")
}

install_missing() {
    # module -> distribution; only what this python cannot import is installed
    local missing
    missing=$("$PY" - <<'EOF'
import importlib.util
need = {"open_clip": "open_clip_torch", "ftfy": "ftfy", "wcwidth": "wcwidth", "regex": "regex", "tqdm": "tqdm",
        "safetensors": "safetensors", "yaml": "pyyaml", "numpy": "numpy", "PIL": "pillow", "torchvision": "torchvision"}
print(" ".join(dist for mod, dist in need.items() if importlib.util.find_spec(mod) is None))
EOF
)
    if [ -z "$missing" ]; then
        echo "nothing to install"
        return 0
    fi
    echo "installing from $WHEELS: $missing"
    if [ ! -d "$WHEELS" ]; then
        echo "no wheels folder $WHEELS (see the top of $0 for how to fill it)"
        return 1
    fi
    local have=() lacking=()
    for dist in $missing; do
        if ls "$WHEELS" | grep -qi "^${dist}-.*\.whl$"; then have+=("$dist"); else lacking+=("$dist"); fi
    done
    local rc=0
    if [ ${#have[@]} -gt 0 ]; then
        "$PY" -m pip install --no-index --find-links "$WHEELS" --no-deps --target "$SITE" "${have[@]}" || rc=1
    fi
    if [ ${#lacking[@]} -gt 0 ]; then
        echo "no wheel in $WHEELS for: ${lacking[*]} (see the top of $0)"
        rc=1
    fi
    return $rc
}

write_summary() {
    {
        echo "{"
        echo "  \"seconds\": $(( $(date +%s) - START )),"
        printf '  "steps": {%s}\n' "$(IFS=,; echo "${STATUS[*]}")"
        echo "}"
    } >"$OUT/summary.json"
}

step install 30 install_missing
if ! "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())" \
        >"$OUT/gpu.log" 2>&1; then
    echo "[gpu_check] no usable CUDA GPU; stopping:"
    cat "$OUT/gpu.log"
    STATUS+=("\"gpu\": {\"status\": 1, \"seconds\": 0}")
    write_summary
    exit 1
fi

step doctor 45 "$PY" -m upperson doctor --device cuda --json "$OUT/doctor.json"
BENCH=(-m upperson benchmark --config cuhk-pedes --random-init --device cuda --batch 128 --steps 5 --warmup 2)
step benchmark 110 "$PY" "${BENCH[@]}" --json "$OUT/benchmark.json"
step benchmark_checkpointing 110 "$PY" "${BENCH[@]}" --grad-checkpointing --json "$OUT/benchmark_checkpointing.json"
step inference 30 "$PY" -m upperson benchmark --config cuhk-pedes --random-init --device cuda --batch 128 --inference \
    --steps 5 --json "$OUT/inference.json"

TOY="$(mktemp -d)/toy"
step toypedes_data 30 "$PY" -m upperson toypedes --out "$TOY" --preset small
step toypedes_epoch 60 "$PY" -m upperson train --config toypedes --data-root "$TOY" --output "$OUT/toypedes_run" \
    --device cuda --no-progress --set train.epochs=1 --set train.precision=bf16
step ddp 45 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 "$REPO/scripts/ddp_check.py" "$OUT/ddp.json"

write_summary
echo "[gpu_check] done in $(( $(date +%s) - START ))s; results in $OUT"
