"""Hub-style folders, peft-style: :func:`save_pretrained` and :func:`from_pretrained`.

A Hub folder *is* a format-3 checkpoint folder (``upperson.model.checkpoint``), so there is one
format: ``petl.safetensors`` (the adapter weights), ``petl.json`` (the config) and ``README.md``,
a model card that is a checksummed sidecar (its SHA-256 is in ``petl.json``'s ``files`` map and
bound into the weights' header). Every checkpoint folder loads with :func:`from_pretrained`, and
every :func:`save_pretrained` folder loads with ``load_model`` or ``--checkpoint``.

``from_pretrained`` takes a local folder or ``hf-hub:ORG/NAME[@revision]``, read from the local
Hugging Face cache; it downloads only with ``UPPERSON_ALLOW_DOWNLOAD=1``. A cached snapshot is
copied (its links followed, only into the repository's own ``blobs/``) into UP-Person's cache
folder, one per commit, and loaded from there with every check of ``load_model``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import open_clip
from huggingface_hub import constants as hf_constants
from huggingface_hub import snapshot_download

from upperson.config import ModelConfig
from upperson.embedded import backbone_file, cache_dir, embedded_available
from upperson.hub.card import HubCard, MetricResult, render_card
from upperson.io import file_digest
from upperson.model.backbone import ALLOW_DOWNLOAD_ENV, EMBEDDED, RANDOM_INIT, is_random_init
from upperson.model.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_model, save_petl
from upperson.model.upperson import UPPerson

log = logging.getLogger(__name__)

HUB_PREFIX = "hf-hub:"
CARD_NAME = "README.md"
HUB_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_REPO_ID = re.compile(rf"^{_NAME}/{_NAME}$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")


@dataclass(frozen=True)
class HubSpec:
    """``hf-hub:ORG/NAME[@revision]``, parsed."""

    repo_id: str
    revision: Optional[str] = None

    def __str__(self) -> str:
        return f"{HUB_PREFIX}{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


def check_repo_id(repo_id: str, what: str = "repository") -> str:
    """``repo_id`` if it is ``ORG/NAME`` as the Hub spells it; else ValueError."""
    if not _REPO_ID.match(repo_id or "") or ".." in repo_id or "--" in repo_id \
            or any(part[-1] in ".-" for part in repo_id.split("/")):
        raise ValueError(f"{what} {repo_id!r}: give ORG/NAME (letters, digits, '.', '_', '-'), e.g. my-org/upperson-tiny")
    return repo_id


def parse_hub_spec(spec: str) -> Optional[HubSpec]:
    """The parsed spec when ``spec`` starts with ``hf-hub:``, else None (a local path)."""
    if not str(spec).startswith(HUB_PREFIX):
        return None
    repo_id, at, revision = str(spec)[len(HUB_PREFIX):].partition("@")
    check_repo_id(repo_id, f"{spec}: the repository")
    if at and not _REVISION.match(revision):
        raise ValueError(f"{spec}: the revision {revision!r} is not a branch, tag or commit name")
    return HubSpec(repo_id, revision or None)


def hub_cache_dir() -> Path:
    """The Hugging Face cache, read from the environment now (``HF_HUB_CACHE``, else ``HF_HOME/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(hf_constants.HF_HUB_CACHE)


def checkpoint_folder(spec: Union[str, Path]) -> Path:
    """The local checkpoint folder that ``spec`` names: a path as given, or an ``hf-hub:`` spec
    resolved through the local Hugging Face cache (see :func:`resolve_hub`)."""
    hub = parse_hub_spec(str(spec))
    return Path(spec) if hub is None else resolve_hub(hub)


def resolve_hub(spec: HubSpec) -> Path:
    """The checkpoint folder of a cached Hub repository (downloaded first only with ``UPPERSON_ALLOW_DOWNLOAD=1``).

    Raises FileNotFoundError naming the spec and how to fetch it when it is not cached.
    """
    cache = hub_cache_dir()
    fetch = f"hf download {spec.repo_id}" + (f" --revision {spec.revision}" if spec.revision else "")
    allowed = os.environ.get(ALLOW_DOWNLOAD_ENV, "") == "1"
    try:
        snapshot = _download(spec, cache) if allowed else Path(
            snapshot_download(spec.repo_id, revision=spec.revision, cache_dir=str(cache), local_files_only=True))
    except Exception as exc:  # network and Hub errors come in many types
        if not allowed and isinstance(exc, FileNotFoundError):  # huggingface_hub's LocalEntryNotFoundError
            raise FileNotFoundError(
                f"{spec} is not in the local Hugging Face cache ({cache}): fetch it with `{fetch}` (HF_HUB_CACHE "
                f"sets where it goes), or set {ALLOW_DOWNLOAD_ENV}=1 to let UP-Person download it") from exc
        raise RuntimeError(f"could not download {spec} ({type(exc).__name__}: {_first_line(exc)}); "
                           f"check the name and the network, or fetch it with `{fetch}`") from exc
    return _materialize(spec, snapshot)


def _download(spec: HubSpec, cache: Path) -> Path:
    """Fetch ``petl.json`` first, then only the files it names (the weights, the sidecars): nothing else
    a repository may hold is downloaded."""
    first = Path(snapshot_download(spec.repo_id, revision=spec.revision, cache_dir=str(cache),
                                   allow_patterns=[CONFIG_NAME]))
    names = _checkpoint_files(spec, first / CONFIG_NAME)
    return Path(snapshot_download(spec.repo_id, revision=spec.revision, cache_dir=str(cache), allow_patterns=names))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _materialize(spec: HubSpec, snapshot: Path) -> Path:
    """A plain copy of a cache snapshot (``snapshots/<commit>``, whose files link into ``../../blobs``)
    under UP-Person's cache, one per commit: the sidecar checks refuse links out of a folder.
    A copy is reused only while it holds exactly the snapshot's bytes."""
    repo = snapshot.parent.parent
    roots = [snapshot.resolve(), (repo / "blobs").resolve()]
    names = _listed_files(spec, snapshot)
    for name in names:
        real = (snapshot / name).resolve()
        if not (snapshot / name).is_file() or not any(real.is_relative_to(r) for r in roots):
            raise ValueError(f"{spec}: the cached {snapshot / name} is not a file of the repository ({real}); "
                             "delete the cache entry and fetch it again")
    target = cache_dir() / "hub" / repo.name / snapshot.name
    if target.is_dir() and sorted(p.name for p in target.iterdir()) == sorted(names) and all(
            file_digest(target / n) == file_digest(snapshot / n) for n in names):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{snapshot.name}.", dir=target.parent))
    try:
        for name in names:
            shutil.copyfile(snapshot / name, tmp / name)
        shutil.rmtree(target, ignore_errors=True)  # an older or partial copy of this commit
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("%s: commit %s of %s, copied to %s", spec, snapshot.name, repo, target)
    return target


def _listed_files(spec: HubSpec, snapshot: Path) -> list[str]:
    """The checkpoint files of a snapshot that are there (see :func:`_checkpoint_files`)."""
    return [n for n in _checkpoint_files(spec, snapshot / CONFIG_NAME) if (snapshot / n).exists()]


def _checkpoint_files(spec: HubSpec, config: Path) -> list[str]:
    """The weights, ``petl.json`` and the sidecars that ``config`` (a ``petl.json``) lists, by plain name."""
    try:
        meta = json.loads(config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{spec} (cached at {config.parent}) is not an UP-Person checkpoint: it has no "
                                f"{CONFIG_NAME}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{spec}: the cached {config} is not valid JSON ({exc})") from None
    sidecars = (meta.get("files") or {}) if isinstance(meta, dict) else {}
    names = [WEIGHTS_NAME, CONFIG_NAME, *(n for n in sidecars if isinstance(n, str) and Path(n).name == n)]
    return [n for n in dict.fromkeys(names) if n not in (".", "..")]


def portable_backbone(cfg: ModelConfig) -> tuple[str, bool]:
    """(the ``model.pretrained`` value a Hub folder records, whether another machine can resolve it).

    An open_clip tag, ``embedded`` (also for the shipped backbone file itself) and ``random``
    travel; any other file is recorded by its name only, and loading needs ``pretrained=``.
    """
    value = cfg.pretrained
    if is_random_init(value):
        return RANDOM_INIT, True
    if value == EMBEDDED:
        return EMBEDDED, True
    path = Path(value).expanduser()
    if path.is_file():
        if embedded_available() and path.resolve() == backbone_file().resolve():
            return EMBEDDED, True
        return path.name, False
    return value, True


def base_model_id(cfg: ModelConfig) -> Optional[str]:
    """The Hub id of the open_clip backbone weights (``timm/vit_base_patch16_clip_224.openai``), if they have one."""
    value = portable_backbone(cfg)[0]
    if value in (RANDOM_INIT, EMBEDDED) or Path(value).suffix:
        return None
    hub = (open_clip.get_pretrained_cfg(cfg.name, value) or {}).get("hf_hub", "")
    return hub.strip("/") or None


def save_pretrained(model: UPPerson, folder: Union[str, Path], *, card: Optional[HubCard] = None,
                    extra: Optional[dict] = None, overwrite: bool = False) -> Path:
    """Write ``model``'s adapter as a Hub folder: ``petl.safetensors``, ``petl.json`` and ``README.md``.

    The card (``card``, else a minimal one) is written first and bound into the weights as a
    checksummed sidecar. The backbone is recorded portably (:func:`portable_backbone`); a local
    file that does not travel is said with a WARNING. A folder holding anything else is refused
    unless ``overwrite``.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file; save_pretrained writes a folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder} is not empty; choose another folder (or pass overwrite=True)")
    card = card or HubCard()
    backbone, travels = portable_backbone(model.config)
    if not travels:
        log.warning("%s: the backbone is the local file %s; the folder records its name only, so loading it "
                    "elsewhere needs pretrained=FILE (the same weights: the fingerprint is checked)",
                    folder, model.config.pretrained)
    base = card.base_model or base_model_id(model.config)
    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    text = render_card(card, model_name=model.config.name, backbone=backbone, fingerprint=model.backbone_fingerprint,
                       parameters=parameters, base_model=base)
    with tempfile.TemporaryDirectory(prefix="upperson-card-") as tmp:
        source = Path(tmp) / CARD_NAME
        source.write_text(text, encoding="utf-8")
        return save_petl(model, folder, extra=extra, files={CARD_NAME: source}, pretrained=backbone)


def from_pretrained(spec: Union[str, Path], *, pretrained: Optional[str] = None,
                    strict_backbone: bool = True) -> UPPerson:
    """The model of a checkpoint folder or ``hf-hub:ORG/NAME[@revision]``, with every check of ``load_model``
    (checksums of the weights and the card, finite values, the config binding, the backbone fingerprint)."""
    return load_model(checkpoint_folder(spec), pretrained=pretrained, strict_backbone=strict_backbone)


__all__ = ["HUB_PREFIX", "CARD_NAME", "HubCard", "HubSpec", "MetricResult", "base_model_id", "check_repo_id",
           "checkpoint_folder", "from_pretrained", "hub_cache_dir", "parse_hub_spec", "portable_backbone",
           "resolve_hub", "save_pretrained"]
