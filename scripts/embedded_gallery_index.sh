#!/usr/bin/env bash
# The default gallery's features, shipped (assets/embedded/gallery-index): the embedded model's
# encoding of the ToyPEDES test split its card was evaluated on, as `python -m upperson index` makes
# it. The demo's first start takes them instead of encoding the 3,005 images (demo/__main__.py,
# seed_cache_for_embedded_gallery); an image is matched by its contents (SHA-1), never by its path,
# so the entries' paths (the temporary folder it was built from) are not used. `python -m upperson
# export-embedded` writes it with the model it ships; this script writes it again alone, e.g. after the
# generator changes (tests/test_embedded.py checks that it still matches the model and the gallery).
#   bash scripts/embedded_gallery_index.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=assets/embedded/gallery-index
CACHE=$(mktemp -d)
trap 'rm -rf "$CACHE" "$OUT.new"' EXIT
root=$(UPPERSON_CACHE=$CACHE $PY -c 'from upperson.embedded import embedded_data_root; print(embedded_data_root(splits=["test"]))')
rm -rf "$OUT.new"
$PY -m upperson index "$root/ToyPEDES/imgs/test" --out "$OUT.new" --compact --no-progress
rm -f "$OUT.new/.lock"
rm -rf "$OUT" && mv "$OUT.new" "$OUT"
du -sh "$OUT"
