"""Publishing a run or checkpoint to the Hugging Face Hub (``python -m upperson push``).

:func:`push` builds the Hub folder (the :func:`upperson.hub.save_pretrained` layout, with a card
made from the run's results) in a fresh folder, loads it back and checks that it gives the
source model's features bit for bit, and only then hands it to an ``uploader`` (by default
:func:`hf_upload`: huggingface_hub's ``create_repo`` and ``upload_folder``). Nothing is uploaded
with ``dry_run``; the folder is then kept and named.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from huggingface_hub import HfApi

from upperson import stats
from upperson.data import build_tokenizer
from upperson.embedded import EMBEDDED_DIR, read_card
from upperson.hub import (CARD_NAME, HubCard, MetricResult, check_repo_id, from_pretrained, portable_backbone,
                          save_pretrained)
from upperson.hub.card import METRIC_TYPES, UNKNOWN_LICENSE
from upperson.io import file_digest
from upperson.model.checkpoint import CONFIG_NAME, load_model, read_checkpoint_config
from upperson.model.upperson import UPPerson
from upperson.train.run import BEST_OLD, RESULTS_NAME, Run

log = logging.getLogger(__name__)

PER_QUERY_NAME = "per_query_test.csv"  # what analysis' ablation writes into a run folder
Uploader = Callable[..., str]  # (folder, repo_id, *, revision, private, commit_message) -> where it went


@dataclass(frozen=True)
class PushResult:
    """What :func:`push` built (and uploaded, unless a dry run)."""

    folder: Path  # the Hub folder (a temporary one is gone after an upload)
    repo_id: str
    revision: Optional[str]
    files: dict[str, str]  # name -> sha256
    card: HubCard
    uploaded: Optional[str]  # the uploader's answer (a commit URL); None for a dry run


def hf_upload(folder: Path, repo_id: str, *, revision: Optional[str], private: bool, commit_message: str) -> str:
    """Upload ``folder`` with huggingface_hub: the repository (and branch) are created when missing."""
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                             commit_message=commit_message)
    return str(getattr(info, "commit_url", info))


def source_checkpoint(source: Path) -> tuple[Path, Optional[Path]]:
    """(the checkpoint folder, the run folder or None) of a run folder (its selected ``best/``) or a
    checkpoint folder. A run without ``best/`` is refused: pushing ``last/`` would publish another model."""
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no such run or checkpoint folder")
    run = Run(source)
    if run.is_run() or run.best_dir.is_dir() or (source / BEST_OLD).is_dir():
        best = run.best_checkpoint(log)  # best.old/ after a cut between the swap's renames, with a warning
        if not (best / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{source} is a run folder without a selected checkpoint ({best} is missing): "
                                    "let the run finish (train --resume), or push a checkpoint folder")
        return best, source
    read_checkpoint_config(source)  # a clear error when it is neither
    owner = Run.of_checkpoint(source)
    if owner is not None:
        return source, owner.path  # RUN/best: the run's results describe it
    return source, None


def card_for(checkpoint: Path, run: Optional[Path], *, repo_id: str, license: str,
             name: Optional[str] = None) -> HubCard:
    """A card from what the source records: a run's ``results.json`` (test metrics, else the
    selection split's), with bootstrap intervals from its ``per_query_test.csv`` when it has one;
    the shipped model's card; else the metrics saved with the checkpoint."""
    if run is not None and (run / RESULTS_NAME).is_file():
        dataset, metrics, interval = _run_metrics(run)
    elif checkpoint.resolve() == (EMBEDDED_DIR / "upperson").resolve() and read_card():
        dataset, metrics, interval = _shipped_metrics(read_card())
    else:
        dataset, metrics, interval = _saved_metrics(checkpoint)
    if license == UNKNOWN_LICENSE:
        log.warning("the card says license: %s; pass --license (e.g. apache-2.0, mit) to state it", license)
    if not metrics:
        log.warning("%s records no metrics: the card has no results", run or checkpoint)
    has_intervals = any(m.low is not None for m in metrics)
    return HubCard(name=name or repo_id.split("/")[1], repo_id=repo_id, license=license,
                   datasets=(dataset,) if dataset != "unknown" else (), metrics=tuple(metrics),
                   interval={k: v for k, v in interval.items() if v is not None} if has_intervals else {})


Measured = tuple[str, list[MetricResult], dict]  # dataset, metrics, how the intervals were made


def _run_metrics(run: Path) -> Measured:
    results = _read_json(run / RESULTS_NAME)
    dataset = str(results.get("dataset") or "unknown")
    splits = results.get("metrics") or {}
    split = "test" if "test" in splits else str(results.get("selected_on"))
    values = splits.get(split) or {}
    cis, interval = _run_intervals(run, values) if split == "test" else ({}, {})
    return dataset, [_metric(k, values[k], dataset, split, ci=cis.get(k))
                     for k in METRIC_TYPES if _is_number(values.get(k))], interval


def _shipped_metrics(shipped: dict) -> Measured:
    values = shipped.get("metrics", {}).get("upperson", {})
    ci_meta = shipped.get("intervals", {})
    cis = ci_meta.get("models", {}).get("upperson", {})
    interval = {k: ci_meta[k] for k in ("method", "level", "resamples", "seed") if k in ci_meta}
    interval["queries"] = values.get("queries")
    preset = shipped.get("evaluation", {}).get("toypedes", {}).get("preset")
    return "ToyPEDES", [_metric(k, values[k], "ToyPEDES", "test", config=preset, ci=cis.get(k))
                        for k in METRIC_TYPES if _is_number(values.get(k))], interval


def _saved_metrics(checkpoint: Path) -> Measured:
    extra = read_checkpoint_config(checkpoint).get("extra") or {}
    values = extra.get("metrics") or {}
    dataset = str(extra.get("dataset") or "unknown")
    return dataset, [_metric(k, values[k], dataset, str(extra.get("split") or "val"))
                     for k in METRIC_TYPES if _is_number(values.get(k))], {}


def _metric(key: str, value: float, dataset: str, split: str, *, config: Optional[str] = None,
            ci: Optional[Sequence[float]] = None) -> MetricResult:
    low, high = (float(ci[0]), float(ci[1])) if ci else (None, None)
    return MetricResult(key, float(value), dataset, split, config=config, low=low, high=high)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _read_json(path: Path) -> dict:
    try:
        out = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); the file is truncated or corrupted") from None
    if not isinstance(out, dict):
        raise ValueError(f"{path}: not a JSON object")
    return out


def _run_intervals(run: Path, values: dict) -> tuple[dict[str, tuple[float, float]], dict]:
    """Bootstrap intervals of the run's test metrics from its per-query file, when it has one that agrees."""
    path = run / PER_QUERY_NAME
    if not path.is_file():
        log.info("%s has no %s: the card gives no intervals (python -m analysis ablation writes it)", run,
                 PER_QUERY_NAME)
        return {}, {}
    ci = stats.bootstrap_ci(stats.read_per_query_csv(path).values())
    differ = [k for k, m in ci["metrics"].items() if _is_number(values.get(k)) and abs(m["value"] - values[k]) > 1e-6]
    if differ:
        log.warning("%s does not match %s (%s): the card gives no intervals", path, RESULTS_NAME, ", ".join(differ))
        return {}, {}
    meta = {k: ci[k] for k in ("method", "level", "resamples", "seed", "queries")}
    return {k: (m["low"], m["high"]) for k, m in ci["metrics"].items()}, meta


def _probe_features(model: UPPerson) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of a fixed random batch: what a loaded-back folder must reproduce exactly."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, *model.image_size, generator=g)
    tokens = build_tokenizer(model.config.name)(["a woman in a red coat with a black bag", "a man in grey"])
    model = model.eval()
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def validate_hub_folder(folder: Path, model: UPPerson, pretrained: Optional[str] = None) -> None:
    """Load ``folder`` back and refuse it unless it gives ``model``'s features bit for bit."""
    loaded = from_pretrained(folder, pretrained=pretrained)
    for what, a, b in zip(("image", "text"), _probe_features(model), _probe_features(loaded)):
        if not torch.equal(a, b):
            raise RuntimeError(f"{folder}: the folder loads, but its {what} features differ from the source "
                               f"model's (max {float((a - b).abs().max()):.3g}); nothing was uploaded")


def push(source: Path, repo_id: str, *, revision: Optional[str] = None, private: bool = False,
         dry_run: bool = False, out: Optional[Path] = None, license: str = UNKNOWN_LICENSE,
         pretrained: Optional[str] = None, uploader: Uploader = hf_upload) -> PushResult:
    """Build, validate and (unless ``dry_run``) upload the Hub folder of run or checkpoint ``source``.

    ``out`` keeps the folder there (it must not exist); a dry run without ``out`` keeps it in
    a new temporary folder. Every check runs before the uploader is called.
    """
    check_repo_id(repo_id, "--repo")
    if out is not None and Path(out).exists():
        raise FileExistsError(f"--out {out} exists; choose a new folder")
    checkpoint, run = source_checkpoint(Path(source))
    model = load_model(checkpoint, pretrained=pretrained)
    card = card_for(checkpoint, run, repo_id=repo_id, license=license)
    created = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="upperson-push-"))
    staging = created if out is not None else created / "hub"
    try:
        save_pretrained(model, staging, card=card, extra=_extra(checkpoint, run))
        travels = portable_backbone(model.config)[1]
        validate_hub_folder(staging, model, None if travels else model.config.pretrained)
        files = {p.name: file_digest(p) for p in sorted(staging.iterdir())}
        uploaded = None if dry_run else _upload(uploader, staging, repo_id, revision, private,
                                                f"UP-Person {model.config.name} adapter from {Path(source).name}")
    except BaseException:
        shutil.rmtree(created, ignore_errors=True)  # a refused push leaves nothing behind
        raise
    if not dry_run and out is None:
        shutil.rmtree(created, ignore_errors=True)
    return PushResult(folder=staging, repo_id=repo_id, revision=revision, files=files, card=card, uploaded=uploaded)


def _upload(uploader: Uploader, folder: Path, repo_id: str, revision: Optional[str], private: bool,
            message: str) -> str:
    """The uploader's answer, or one RuntimeError line naming the repository and what to check."""
    try:
        return uploader(folder, repo_id, revision=revision, private=private, commit_message=message)
    except Exception as exc:  # network, authentication and Hub errors come in many types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RuntimeError(
            f"could not push to the Hugging Face Hub repository {repo_id} ({type(exc).__name__}: {first}); check "
            "the network and your token (`hf auth login`, or HF_TOKEN), or build the folder only with --dry-run"
        ) from exc


def _extra(checkpoint: Path, run: Optional[Path]) -> dict:
    """What the checkpoint saved as ``extra`` (epoch, selection metrics), and where it came from."""
    extra = dict(read_checkpoint_config(checkpoint).get("extra") or {})
    return {**extra, "source": {"checkpoint": checkpoint.name, "run": run.name if run else None}}


__all__ = ["CARD_NAME", "PushResult", "card_for", "hf_upload", "push", "source_checkpoint", "validate_hub_folder"]
