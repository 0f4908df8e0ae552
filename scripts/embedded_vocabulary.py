"""Give the shipped embedded checkpoint its training vocabulary, the tensors unchanged bit for bit.

    python -m scripts.embedded_vocabulary            # add assets/embedded/upperson/vocab.json
    python -m scripts.embedded_vocabulary --check    # exit 1 unless the stored one is what it derives

The vocabulary is derived deterministically from the training captions of the ToyPEDES the model
card names (preset and seed; the train split is generated once into the cache), added as a
format-3 sidecar (upperson.model.checkpoint.add_sidecars: same tensors, new header binding), and
the card's checksums (model_card.json, model_card.md) are updated.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from safetensors.torch import load_file

from upperson.cli.export_embedded import render_card
from upperson.data import load_dataset
from upperson.embedded import CARD_NAME, EMBEDDED_DIR, embedded_data_root, read_card, sha256_file, verify_assets
from upperson.io import atomic_write_json, atomic_write_text
from upperson.logs import setup_logging
from upperson.model.checkpoint import add_sidecars
from upperson.vocab import VOCAB_NAME, Vocabulary, build_vocabulary, checkpoint_vocabulary, write_vocabulary

log = logging.getLogger("embedded_vocabulary")


def derive(assets: Path) -> Vocabulary:
    """The vocabulary of the training captions of the card's ToyPEDES."""
    card = read_card(assets)
    root = embedded_data_root(splits=["train"])
    vocab = build_vocabulary(c for r in load_dataset("toypedes", root).split("train") for c in r.captions)
    expected = card.get("toypedes", {}).get("counts", {}).get("train", {}).get("captions")
    if expected is not None and vocab.captions != expected:
        raise SystemExit(f"error: {root}: {vocab.captions} training captions, the model card says {expected}; "
                         "regenerate the data (delete that folder)")
    return vocab


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--assets", type=Path, default=EMBEDDED_DIR, help="the embedded assets folder")
    p.add_argument("--check", action="store_true", help="only check the stored vocabulary")
    args = p.parse_args(argv)
    setup_logging("INFO", ("upperson", "embedded_vocabulary"))
    verify_assets(args.assets)
    ckpt = args.assets / "upperson"
    vocab = derive(args.assets)
    if args.check:
        stored = checkpoint_vocabulary(ckpt)
        ok = stored == vocab
        log.info("%s: %s", ckpt / VOCAB_NAME, "matches the training captions" if ok else "missing or different")
        return 0 if ok else 1
    before = load_file(str(ckpt / "petl.safetensors"))
    with tempfile.TemporaryDirectory() as scratch:
        add_sidecars(ckpt, {VOCAB_NAME: write_vocabulary(vocab, Path(scratch) / VOCAB_NAME)})
    after = load_file(str(ckpt / "petl.safetensors"))
    same = before.keys() == after.keys() and all(before[k].dtype == after[k].dtype and
                                                  bool((before[k] == after[k]).all()) for k in before)
    if not same:
        log.error("the tensors changed; restore %s from git", ckpt)
        return 1
    card = read_card(args.assets)
    for rel in ("upperson/petl.safetensors", "upperson/petl.json", f"upperson/{VOCAB_NAME}"):
        card["files"][rel] = {"sha256": sha256_file(args.assets / rel), "bytes": (args.assets / rel).stat().st_size}
    atomic_write_json(args.assets / CARD_NAME, card)
    atomic_write_text(args.assets / "model_card.md", render_card(card))
    verify_assets(args.assets)
    log.info("%s: %d words from %d training captions; tensors bit-identical; card checksums updated",
             ckpt / VOCAB_NAME, len(vocab.words), vocab.captions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
