#!/usr/bin/env bash
# Time `python -m demo` from the command to the server answering HTTP (docs/performance.md, "App
# start-up"): wall seconds, and the CPU of the process and of the children it waited for (the
# gallery generator's workers), from /proc/PID/stat. An empty CACHE times the first start.
#   bash scripts/app_startup.sh CACHE [PORT]        (e.g. rm -rf /tmp/c; then twice with /tmp/c)
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "error: give a cache folder (UPPERSON_CACHE; an empty one times a first start)" >&2; exit 2; }
CACHE=$1
PORT=${2:-7901}
PY=${PYTHON:-.venv/bin/python}
LOG=$(mktemp)
t0=$(date +%s.%N)
UPPERSON_CACHE=$CACHE $PY -m demo --port "$PORT" > "$LOG" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$LOG"' EXIT
until curl -s -o /dev/null "http://127.0.0.1:$PORT/"; do
  sleep 0.5
  kill -0 $pid 2>/dev/null || { echo "error: the demo stopped before it listened; its log:" >&2; tail -5 "$LOG" >&2; exit 2; }
done
t1=$(date +%s.%N)
read -r ut st cut cst < <(awk '{print $14, $15, $16, $17}' /proc/$pid/stat)
tck=$(getconf CLK_TCK)
awk -v a="$t0" -v b="$t1" -v u="$ut" -v s="$st" -v cu="$cut" -v cs="$cst" -v t="$tck" -v l="$(cut -d' ' -f1 /proc/loadavg)" \
  'BEGIN { printf "wall %.1f s; CPU %.1f s in the process, %.1f s in its children; load %s\n", b - a, (u + s) / t, (cu + cs) / t, l }'
