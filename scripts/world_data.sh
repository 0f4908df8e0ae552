# Sourced by the stand-in world's study scripts: refuse to start without the three domains' data.
#   require_world_data W
require_world_data() {
  local d
  for d in cuhk icfg rstp; do
    [ -d "$1/data/$d/ToyPEDES" ] || { echo "error: $1/data/$d is missing: run scripts/world_pipeline.sh $1 first" >&2; exit 2; }
  done
}
