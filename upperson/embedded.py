"""The embedded default: the tiny pretrained backbone and UP-Person checkpoint in ``assets/``.

With no checkpoint and no data root, the demo and the analysis use these, and the
ToyPEDES benchmark they were evaluated on, generated on first use into a cache folder
(``$UPPERSON_CACHE``, else ``~/.cache/upperson``).

Layout of ``assets/embedded/``::

    backbone.safetensors        the pretrained upp-tiny CLIP (fp16)
    upperson/petl.{safetensors,json}       UP-Person PETL weights
    full-finetune/petl.{safetensors,json}  the full fine-tune baseline (optional)
    model_card.json, model_card.md         how they were made, metrics, checksums
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Optional

from upperson.config import ModelConfig
from upperson.petl import AdapterConfig, LoraConfig, PrefixConfig

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_DIR = REPO_ROOT / "assets" / "embedded"
CARD_JSON = EMBEDDED_DIR / "model_card.json"
BACKBONE_FILE = EMBEDDED_DIR / "backbone.safetensors"
VARIANTS = ("upperson", "zero-shot", "full-finetune")

# what the embedded model is evaluated on, when the card does not say otherwise
DEFAULT_TOYPEDES = {"preset": "default", "seed": 0}


class EmbeddedAssetError(RuntimeError):
    """The shipped model files are missing, corrupted or inconsistent."""


def cache_dir() -> Path:
    """Where generated data and embedding caches go."""
    return Path(os.environ.get("UPPERSON_CACHE", Path.home() / ".cache" / "upperson")).expanduser()


def embedded_available() -> bool:
    """Whether the shipped model card and backbone are present."""
    return CARD_JSON.exists() and BACKBONE_FILE.exists()


def read_card() -> dict:
    """The model card's JSON (empty when the assets are absent)."""
    if not CARD_JSON.exists():
        return {}
    return json.loads(CARD_JSON.read_text())


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_assets(card: Optional[dict] = None) -> None:
    """Check every shipped file against the checksums in the model card."""
    card = card if card is not None else read_card()
    files = card.get("files", {})
    if not files:
        raise EmbeddedAssetError(f"{CARD_JSON}: the model card lists no files with checksums")
    for rel, expected in files.items():
        path = EMBEDDED_DIR / rel
        if not path.exists():
            raise EmbeddedAssetError(f"embedded model file missing: {path}")
        actual = sha256_file(path)
        if actual != expected["sha256"]:
            raise EmbeddedAssetError(
                f"embedded model file {path} is corrupted or was changed: sha256 {actual[:12]}..., "
                f"the model card says {expected['sha256'][:12]}... (restore it with git checkout)"
            )


def tiny_model_config(pretrained: Optional[str] = None) -> ModelConfig:
    """The ``toypedes`` model: upp-tiny with all three components (the card's sizes)."""
    from upperson.config import load_config

    cfg = load_config("toypedes").model
    return dataclasses.replace(cfg, pretrained=pretrained)


def load_embedded_model(variant: str = "upperson", *, verify: bool = True):
    """The shipped model: ``upperson`` (default), ``zero-shot`` (frozen backbone) or ``full-finetune``.

    Without shipped assets (a checkout before they were trained), returns a randomly
    initialised upp-tiny model and logs a warning, so that everything still runs.
    """
    from upperson.model import build_model
    from upperson.model.checkpoint import load_petl

    if variant not in VARIANTS:
        raise ValueError(f"unknown embedded variant {variant!r}; choose from {', '.join(VARIANTS)}")
    if not embedded_available():
        log.warning("no embedded model in %s: using a RANDOMLY initialised upp-tiny model", EMBEDDED_DIR)
        cfg = tiny_model_config(None)
        if variant == "zero-shot":
            cfg = zero_shot_config(cfg)
        return build_model(cfg)
    if verify:
        verify_assets()
    if variant == "zero-shot":
        return build_model(zero_shot_config(tiny_model_config(str(BACKBONE_FILE))))
    from upperson.model.checkpoint import checkpoint_model_config

    ckpt = EMBEDDED_DIR / variant
    cfg = dataclasses.replace(checkpoint_model_config(ckpt), pretrained=str(BACKBONE_FILE))
    model = build_model(cfg)
    load_petl(model, ckpt)
    return model


def zero_shot_config(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with every PETL component off: the frozen backbone alone."""
    return dataclasses.replace(
        cfg,
        prefix=dataclasses.replace(cfg.prefix, enabled=False),
        lora=dataclasses.replace(cfg.lora, enabled=False),
        adapter=dataclasses.replace(cfg.adapter, enabled=False),
    )


def embedded_data_root(preset: Optional[str] = None, seed: Optional[int] = None) -> Path:
    """A data root holding ToyPEDES as the model card evaluated it, generated once and cached."""
    from upperson.data.toypedes import generate_toypedes

    spec = dict(DEFAULT_TOYPEDES, **read_card().get("toypedes", {}))
    preset = preset or spec["preset"]
    seed = int(spec["seed"] if seed is None else seed)
    root = cache_dir() / "toypedes" / f"{preset}-seed{seed}"
    if not (root / "ToyPEDES" / "reid_raw.json").exists():
        log.info("generating ToyPEDES (%s, seed %d) into %s, once", preset, seed, root)
        generate_toypedes(root, preset=preset, seed=seed)
    return root
