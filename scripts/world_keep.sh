#!/usr/bin/env bash
# Stage the stand-in world's complete study runs for a commit, so that a later machine continues the
# study (scripts/world_budget.sh, scripts/world_ablation.sh keep their runs in the repository; .gitignore
# leaves out what is not kept). A budget run is complete with its results.json and its three per-query
# files' records; an ablation run with its results.json, per_query_test.csv and both targets' records
# (per_query_test-icfg.json, per_query_test-rstp.json). Incomplete runs are left unstaged (they are
# resumed only on the machine that holds their last/ state and weights).
#   bash scripts/world_keep.sh && git commit -m "..."
set -euo pipefail
cd "$(dirname "$0")/.."
kept=0
keep() {  # keep FOLDER FILE...: stage each FOLDER/*/seed-* run that holds every FILE
  local folder=$1 d f
  shift
  for d in "$folder"/*/seed-*; do
    [ -d "$d" ] || continue
    for f in "$@"; do
      [ -f "$d/$f" ] || continue 2
    done
    git add "$d" && kept=$((kept + 1))
  done
}
keep assets/world/budget-runs results.json per_query_test.json per_query_target-icfg.json per_query_target-rstp.json
keep assets/world/ablation-runs results.json per_query_test.csv per_query_test-icfg.json per_query_test-rstp.json
echo "$kept complete run(s) staged; $(git diff --cached --name-only | wc -l) file(s) staged in all"
