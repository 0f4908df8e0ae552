"""The embedded default: the tiny pretrained backbone and UP-Person checkpoint in ``assets/``.

With no checkpoint and no data root, the demo and the analysis use these, and the
ToyPEDES benchmark they were evaluated on, generated on first use into a cache folder
(``$UPPERSON_CACHE``, else ``~/.cache/upperson``).

Layout of ``assets/embedded/``::

    backbone.safetensors               the pretrained upp-tiny CLIP (fp16)
    upperson/petl.{safetensors,json}   UP-Person's PETL weights
    model_card.json, model_card.md     how they were made, the metrics, the files' checksums
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

from upperson.config import ModelConfig
from upperson.io import file_digest

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_DIR = REPO_ROOT / "assets" / "embedded"
CARD_NAME = "model_card.json"
BACKBONE_NAME = "backbone.safetensors"
VARIANTS = ("upperson", "zero-shot")

# what the embedded model is evaluated on, when the card does not say otherwise
DEFAULT_TOYPEDES = {"preset": "default", "seed": 0}


class EmbeddedAssetError(RuntimeError):
    """The shipped model files are missing, corrupted or inconsistent."""


def _dir(assets: Optional[Path]) -> Path:
    return Path(assets) if assets is not None else EMBEDDED_DIR


def backbone_file(assets: Optional[Path] = None) -> Path:
    """The shipped backbone weights."""
    return _dir(assets) / BACKBONE_NAME


def cache_dir() -> Path:
    """Where generated data and embedding caches go."""
    return Path(os.environ.get("UPPERSON_CACHE", Path.home() / ".cache" / "upperson")).expanduser()


def embedded_available(assets: Optional[Path] = None) -> bool:
    """Whether the shipped model card and backbone are present."""
    return (_dir(assets) / CARD_NAME).exists() and backbone_file(assets).exists()


def read_card(assets: Optional[Path] = None) -> dict:
    """The model card's JSON (empty when the assets are absent)."""
    path = _dir(assets) / CARD_NAME
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EmbeddedAssetError(f"{path}: not valid JSON ({exc})") from exc


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return file_digest(path, "sha256")


def verify_assets(assets: Optional[Path] = None) -> None:
    """Check every shipped file against the checksums in the model card."""
    folder = _dir(assets)
    files = read_card(assets).get("files", {})
    if not files:
        raise EmbeddedAssetError(f"{folder / CARD_NAME}: the model card lists no files with checksums")
    for rel, expected in files.items():
        path = folder / rel
        if not path.exists():
            raise EmbeddedAssetError(f"embedded model file missing: {path}")
        _check_digest(path, expected["sha256"], "embedded model file")


def _check_digest(path: Path, expected: str, what: str) -> None:
    """Raise :class:`EmbeddedAssetError` when ``path``'s SHA-256 is not the card's ``expected``."""
    actual = sha256_file(path)
    if actual != expected:
        raise EmbeddedAssetError(
            f"{what} {path} is corrupted or was changed: its sha256 is {actual[:12]}..., "
            f"the model card says {expected[:12]}... (restore it with `git checkout -- {path}`)"
        )


_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> sha256 already checked


def verified_backbone_file(assets: Optional[Path] = None) -> Path:
    """The shipped backbone (``model.pretrained: embedded``), checked against the model card once per process.

    Resolved from the package's location, never the current directory.
    """
    path = backbone_file(assets)
    if not path.exists():
        raise EmbeddedAssetError(
            f"model.pretrained is 'embedded' but the shipped backbone {path} is missing; restore it "
            "(git checkout or git lfs pull), or set model.pretrained to weights of your own, or to 'random'"
        )
    expected = read_card(assets).get("files", {}).get(BACKBONE_NAME, {}).get("sha256")
    if expected is None:
        log.warning("%s: the model card records no checksum for it; not verified", path)
        return path
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if _VERIFIED.get(key) != expected:
        _check_digest(path, expected, "embedded backbone")
        _VERIFIED[key] = expected
    return path


def tiny_model_config(pretrained: Optional[str] = None) -> ModelConfig:
    """The ``toypedes`` preset's model: upp-tiny with all three components."""
    from upperson.config import load_config

    return dataclasses.replace(load_config("toypedes").model, pretrained=pretrained)


def zero_shot_config(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with every PETL component off: the frozen backbone alone."""
    return dataclasses.replace(
        cfg,
        prefix=dataclasses.replace(cfg.prefix, enabled=False),
        lora=dataclasses.replace(cfg.lora, enabled=False),
        adapter=dataclasses.replace(cfg.adapter, enabled=False),
    )


def load_embedded_model(variant: str = "upperson", *, verify: bool = True, assets: Optional[Path] = None):
    """The shipped model: ``upperson`` (default) or ``zero-shot`` (the frozen backbone alone).

    The files are checked against the model card's checksums first. Without shipped assets
    (a checkout from before they were trained) a randomly initialised upp-tiny model is
    returned, with a warning, so that everything still runs.
    """
    from upperson.model import build_model
    from upperson.model.checkpoint import checkpoint_model_config, load_petl

    if variant not in VARIANTS:
        raise ValueError(f"unknown embedded variant {variant!r}; choose from {', '.join(VARIANTS)}")
    folder = _dir(assets)
    if not embedded_available(assets):
        log.warning("no embedded model in %s: using a RANDOMLY initialised upp-tiny model", folder)
        cfg = tiny_model_config(None)
        return build_model(zero_shot_config(cfg) if variant == "zero-shot" else cfg)
    if verify:
        verify_assets(assets)
    weights = str(backbone_file(assets))
    if variant == "zero-shot":
        return build_model(zero_shot_config(tiny_model_config(weights)))
    ckpt = folder / variant
    model = build_model(dataclasses.replace(checkpoint_model_config(ckpt), pretrained=weights))
    load_petl(model, ckpt)
    return model


def embedded_data_root(preset: Optional[str] = None, seed: Optional[int] = None,
                       splits: Optional[Sequence[str]] = None) -> Path:
    """A data root holding ToyPEDES as the model card evaluated it, generated once and cached.

    ``splits=["test"]`` generates only the test identities (identical to the full
    benchmark's, in a fraction of the time): enough for the demo's gallery and the figures.
    """
    from upperson.data.toypedes import generate_toypedes

    spec = dict(DEFAULT_TOYPEDES, **read_card().get("toypedes", {}))
    preset = preset or spec["preset"]
    seed = int(spec["seed"] if seed is None else seed)
    suffix = "-" + "-".join(sorted(splits)) if splits else ""
    root = cache_dir() / "toypedes" / f"{preset}-seed{seed}{suffix}"
    if not (root / "ToyPEDES" / "reid_raw.json").exists():
        log.info("generating ToyPEDES (%s, seed %d%s) into %s, once", preset, seed,
                 f", {', '.join(splits)} only" if splits else "", root)
    # a cached copy is verified against its manifest, and regenerated if damaged
    generate_toypedes(root, preset=preset, seed=seed, splits=list(splits) if splits else None, repair=True)
    return root
