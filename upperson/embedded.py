"""The embedded default: the tiny pretrained backbone and UP-Person checkpoint in ``assets/``.

With no checkpoint and no data root, the demo and the analysis use these, and the
ToyPEDES benchmark they were evaluated on, generated on first use into a cache folder
(``$UPPERSON_CACHE``, else ``~/.cache/upperson``).

The files themselves, their checksums and the model card are :mod:`upperson.assets` (below the
model); this module (above it) loads them. The asset names it re-exports stay importable from here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

# re-exported: importable from upperson.embedded as before upperson.assets held them
from upperson.assets import (BACKBONE_NAME, CARD_NAME, DEFAULT_TOYPEDES, EMBEDDED_DIR, REPO_ROOT,
                             EmbeddedAssetError, backbone_file, card_toypedes, embedded_available, read_card,
                             sha256_file, verified_backbone_file, verify_assets)
from upperson.config import ModelConfig, load_config

__all__ = [
    "BACKBONE_NAME", "CARD_NAME", "DEFAULT_TOYPEDES", "EMBEDDED_DIR", "REPO_ROOT", "VARIANTS",
    "EmbeddedAssetError", "backbone_file", "cache_dir", "card_toypedes", "embedded_available",
    "embedded_data_root", "embedded_domain", "load_embedded_model", "read_card", "sha256_file",
    "tiny_model_config", "verified_backbone_file", "verify_assets", "zero_shot_config",
]

log = logging.getLogger(__name__)

VARIANTS = ("upperson", "zero-shot")


def cache_dir() -> Path:
    """Where generated data and embedding caches go."""
    return Path(os.environ.get("UPPERSON_CACHE", Path.home() / ".cache" / "upperson")).expanduser()


def tiny_model_config(pretrained: Optional[str] = None) -> ModelConfig:
    """The ``toypedes`` preset's model: upp-tiny with all three components."""
    return dataclasses.replace(load_config("toypedes").model, pretrained=pretrained)


def zero_shot_config(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with every PETL component off: the frozen backbone alone."""
    return cfg.without_components()  # every registered component, LN-tuning and outside ones included


def load_embedded_model(variant: str = "upperson", *, verify: bool = True, assets: Optional[Path] = None):
    """The shipped model: ``upperson`` (default) or ``zero-shot`` (the frozen backbone alone).

    The files are checked against the model card's checksums first. Without shipped assets
    (a checkout from before they were trained) a randomly initialised upp-tiny model is
    returned, with a warning, so that everything still runs.
    """
    # imported here, for start-up time: the asset names re-exported above need no open_clip (the model)
    from upperson.model import build_model
    from upperson.model.checkpoint import checkpoint_model_config, load_petl

    if variant not in VARIANTS:
        raise ValueError(f"unknown embedded variant {variant!r}; choose from {', '.join(VARIANTS)}")
    folder = Path(assets) if assets is not None else EMBEDDED_DIR
    if not embedded_available(assets):
        log.warning("no embedded model in %s: using a RANDOMLY initialised upp-tiny model", folder)
        cfg = tiny_model_config(None)
        return build_model(zero_shot_config(cfg) if variant == "zero-shot" else cfg)
    if verify:
        verify_assets(assets)
    weights = str(backbone_file(assets))
    # one model config for both: the shipped checkpoint's (its backbone, image size, ...); zero-shot
    # turns its components off
    cfg = dataclasses.replace(checkpoint_model_config(folder / "upperson"), pretrained=weights)
    if variant == "zero-shot":
        return build_model(zero_shot_config(cfg))
    model = build_model(cfg)
    load_petl(model, folder / variant)
    return model


def embedded_domain() -> Optional[str]:
    """The ToyPEDES domain the embedded model was trained on (the card's ``toypedes.domain``), or
    None: the original ToyPEDES."""
    return card_toypedes().get("domain") or None


def embedded_data_root(preset: Optional[str] = None, seed: Optional[int] = None,
                       splits: Optional[Sequence[str]] = None) -> Path:
    """A data root holding ToyPEDES as the model card evaluated it (its preset, seed and domain),
    generated once and cached.

    ``splits=["test"]`` generates only the test identities (identical to the full
    benchmark's, in a fraction of the time): enough for the demo's gallery and the figures.
    """
    # imported here, for start-up time (as in load_embedded_model)
    from upperson.data.toypedes import generate_toypedes

    spec = card_toypedes()
    preset = preset or spec["preset"]
    seed = spec["seed"] if seed is None else int(seed)
    domain = spec.get("domain") or None
    suffix = "-" + "-".join(sorted(splits)) if splits else ""
    root = cache_dir() / "toypedes" / f"{domain + '-' if domain else ''}{preset}-seed{seed}{suffix}"
    if not (root / "ToyPEDES" / "reid_raw.json").exists():
        log.info("generating ToyPEDES (%s%s, seed %d%s) into %s, once", f"domain {domain}, " if domain else "",
                 preset, seed, f", {', '.join(splits)} only" if splits else "", root)
    # a cached copy is verified against its manifest, and regenerated if damaged
    generate_toypedes(root, preset=preset, seed=seed, splits=list(splits) if splits else None, repair=True,
                      domain=domain)
    return root
