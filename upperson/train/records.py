"""A run's records, checked against each other before a resume (docs/runs.md).

``last/state.json`` (format 3) carries, besides the optimiser and RNG state, the epoch's
metrics rows (``history``), the resolved config and the SHA-256 of ``config.yaml``, all swapped
in with the state as one unit. ``metrics.jsonl`` is derived from ``history``: a kill between
the two leaves it short, and the resume rewrites it. Anything else that disagrees (a
``state.json`` whose epoch, best score or learning rate does not fit, a ``metrics.jsonl`` row
that differs, a ``config.yaml`` edited outside the tool) is refused, naming the file and key.

This module imports no torch: the command line checks the records before heavy imports.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from upperson.io import file_digest
from upperson.train.rundir import CONFIG_NAME, SAFE_RESUME_KEYS, RunFolderError, config_differences

STATE_JSON = "state.json"
STATE_WEIGHTS = "state.safetensors"
METRICS_NAME = "metrics.jsonl"
STATE_VERSION = 3  # 3: state.json holds the metrics rows, the config and config.yaml's sha256
KNOWN_VERSIONS = (1, 2, 3)


class RunRecordError(RunFolderError):
    """A run's records that are damaged, out of range or disagree with each other."""


@dataclass
class RunRecords:
    """What a resume continues from: the state folder, its checked ``state.json`` and the rows."""

    state_dir: Optional[Path] = None
    meta: Optional[dict] = None
    history: list[dict] = field(default_factory=list)
    repair_metrics: bool = False  # metrics.jsonl lacks rows that the state holds: rewrite it
    notes: list[str] = field(default_factory=list)  # warnings for train.log


def find_state_dir(run_dir: Path) -> Optional[Path]:
    """The newest complete state folder of a run, if any (``last.old`` survives a cut between renames)."""
    for name in ("last", "last.old"):
        d = Path(run_dir) / name
        if (d / STATE_JSON).is_file() and (d / STATE_WEIGHTS).is_file():
            return d
    return None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"key {twice[0]!r} given twice")
    return dict(pairs)


def read_json_strict(path: Path, what: str) -> Any:
    """JSON from ``path``; a key given twice, invalid JSON or bytes are a :class:`RunRecordError`."""
    try:
        return json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RunRecordError(f"{path}: not valid JSON ({exc}); {what} is truncated or corrupted") from exc


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bad(path: Path, key: str, value: Any, rule: str) -> RunRecordError:
    return RunRecordError(f"{path}: {key} is {json.dumps(value)}, {rule}; the file was changed outside the tool "
                          "or is damaged: restore it, or start a new run (another --output)")


def check_state_meta(meta: Any, path: Path) -> dict:
    """Types and ranges of a ``state.json``; returns it."""
    if not isinstance(meta, dict) or not all(k in meta for k in ("progress", "optimizer", "rng")):
        raise RunRecordError(f"{path}: not a training state (missing progress, optimizer or rng)")
    version = meta.get("version", 1)
    if version not in KNOWN_VERSIONS or not _is_int(version):
        raise _bad(path, "version", version, f"not one of {list(KNOWN_VERSIONS)} (written by a newer upperson?)")
    _check_progress(meta["progress"], path)
    _check_param_groups(meta["optimizer"], path)
    if version >= 3:
        _check_v3_fields(meta, path)
    return meta


def _check_progress(progress: Any, path: Path) -> None:
    if not isinstance(progress, dict) or not all(k in progress for k in ("epoch", "best_score", "best_epoch")):
        raise RunRecordError(f"{path}: its progress record is incomplete (epoch, best_score, best_epoch)")
    epoch, best_epoch, best = progress["epoch"], progress["best_epoch"], progress["best_score"]
    if not _is_int(epoch) or epoch < 0:
        raise _bad(path, "progress.epoch", epoch, "not a whole number >= 0 (the 0-based last epoch done)")
    if not _is_int(best_epoch) or not -1 <= best_epoch <= epoch + 1:
        raise _bad(path, "progress.best_epoch", best_epoch, f"not a whole number in [-1, {epoch + 1}]")
    if not _is_number(best) or not (best == -math.inf or 0.0 <= best <= 100.0):
        raise _bad(path, "progress.best_score", best, "neither -Infinity nor an R1 in [0, 100]")
    t = progress.get("train_time_s", 0.0)
    if not _is_number(t) or not math.isfinite(t) or t < 0:
        raise _bad(path, "progress.train_time_s", t, "not a finite number >= 0")


def _check_param_groups(optimizer: Any, path: Path) -> None:
    groups = optimizer.get("param_groups") if isinstance(optimizer, dict) else None
    if not isinstance(groups, list) or not groups or not all(isinstance(g, dict) for g in groups):
        raise RunRecordError(f"{path}: optimizer.param_groups is missing or empty")
    for i, g in enumerate(groups):
        for key in ("lr", "initial_lr"):
            v = g.get(key)
            if not _is_number(v) or not math.isfinite(v) or v < 0:
                raise _bad(path, f"optimizer.param_groups[{i}].{key}", v, "not a finite number >= 0")


def _check_v3_fields(meta: dict, path: Path) -> None:
    digest = meta.get("config_sha256")
    if not isinstance(digest, str) or len(digest) != 64:
        raise _bad(path, "config_sha256", digest, "not a SHA-256")
    if not isinstance(meta.get("config"), dict):
        raise RunRecordError(f"{path}: config (the config the state was trained with) is missing")
    history = meta.get("history")
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        raise RunRecordError(f"{path}: history (the metrics rows saved with the state) is missing")
    check_history(history, meta, path, "history")


def check_history(rows: list[dict], meta: dict, path: Path, what: str) -> None:
    """The rows are epochs 1..epoch+1 with finite numbers, and the best score is theirs."""
    progress = meta["progress"]
    done = progress["epoch"] + 1
    epochs = [r.get("epoch") for r in rows]
    if epochs != list(range(1, len(rows) + 1)) or len(rows) != done:
        raise _bad(path, "progress.epoch", progress["epoch"],
                   f"but {what} holds the rows of epochs {epochs} (0-based epoch {done - 1} means epochs 1..{done})")
    for r in rows:
        for k, v in r.items():
            if isinstance(v, float) and not math.isfinite(v):
                raise _bad(path, f"{what} epoch {r['epoch']} {k}", v, "not finite")
    evaluated = [(r["R1"], r["epoch"]) for r in rows if _is_number(r.get("R1"))]
    if evaluated:
        top = max(s for s, _ in evaluated)
        expect_score, expect_epoch = top, next(e for s, e in evaluated if s == top)
        allowed_epochs = {expect_epoch}
    else:
        expect_score, allowed_epochs = -math.inf, {-1, done}
    if progress["best_score"] != expect_score:
        raise _bad(path, "progress.best_score", progress["best_score"], f"but the best R1 in {what} is {expect_score}")
    if progress["best_epoch"] not in allowed_epochs:
        raise _bad(path, "progress.best_epoch", progress["best_epoch"],
                   f"but {what} says {sorted(allowed_epochs)}")
    if rows and _is_number(rows[-1].get("lr")) and \
            not math.isclose(rows[-1]["lr"], meta["optimizer"]["param_groups"][0]["lr"], rel_tol=1e-9, abs_tol=0.0):
        raise _bad(path, "optimizer.param_groups[0].lr", meta["optimizer"]["param_groups"][0]["lr"],
                   f"but the last epoch's row says lr {rows[-1]['lr']}")


def read_state_json(state_dir: Path) -> dict:
    """``state.json`` of a state folder: valid JSON, no key twice, types and ranges checked."""
    path = Path(state_dir) / STATE_JSON
    return check_state_meta(read_json_strict(path, "the training state"), path)


def read_metrics_rows(path: Path) -> list[dict]:
    """The rows of ``metrics.jsonl`` (none when it does not exist)."""
    if not path.exists():
        return []
    if not path.is_file():
        raise RunRecordError(f"{path} is not a file; move it away and --resume rewrites it from the saved state")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, object_pairs_hook=_no_duplicates)
        except ValueError as exc:
            raise RunRecordError(f"{path} line {n}: not valid JSON ({exc}); delete the file and --resume "
                                 "rewrites it from the saved state") from exc
        if not isinstance(row, dict):
            raise RunRecordError(f"{path} line {n}: not a JSON object")
        rows.append(row)
    return rows


def _compare_rows(rows: list[dict], history: list[dict], path: Path, state_json: Path) -> bool:
    """Whether ``metrics.jsonl`` must be rewritten (it lacks trailing rows); refuse any other difference."""
    for i, row in enumerate(rows):
        if i >= len(history):
            raise RunRecordError(
                f"{path} has a row for epoch {row.get('epoch')}, but {state_json} holds only {len(history)} "
                "epoch(s): the state is older than the record (restored or replaced?); restore the matching "
                "last/, or start a new run")
        if row != history[i]:
            keys = sorted(k for k in set(row) | set(history[i]) if row.get(k) != history[i].get(k))
            shown = "; ".join(f"{k}: saved {json.dumps(history[i].get(k))}, file {json.dumps(row.get(k))}"
                              for k in keys)
            raise RunRecordError(
                f"{path}: the row of epoch {history[i].get('epoch')} differs from the one saved with the state in "
                f"{state_json} ({shown}); it was changed outside the tool: restore it, or delete {path.name} "
                "and --resume rewrites it from the state")
    return len(rows) < len(history)


def check_config_record(run_dir: Path, meta: dict, state_json: Path) -> list[str]:
    """``config.yaml`` must be the one the state was trained with (its SHA-256), up to the safe keys."""
    from upperson.config import load_run_config, to_dict  # the config module pulls in the PETL configs

    path = Path(run_dir) / CONFIG_NAME
    if file_digest(path) == meta["config_sha256"]:
        return []
    diff = config_differences(meta["config"], to_dict(load_run_config(path)))
    unsafe = {k: v for k, v in diff.items() if k not in SAFE_RESUME_KEYS}
    if unsafe:
        shown = "; ".join(f"{k}: trained with {json.dumps(a)}, file {json.dumps(b)}" for k, (a, b) in unsafe.items())
        raise RunRecordError(
            f"{path} was changed outside the tool ({shown}; its SHA-256 differs from the one in {state_json}); "
            f"put the trained values back: on --resume only {', '.join(sorted(SAFE_RESUME_KEYS))} may change, "
            "with --set")
    if not diff:
        return [f"{path}: its bytes changed but not its values (formatting or comments): resuming"]
    shown = "; ".join(f"{k}: {json.dumps(a)} -> {json.dumps(b)}" for k, (a, b) in diff.items())
    return [f"{path} differs from the config saved with the state on safe keys only ({shown}): accepted, "
            "as --resume --set would"]


def check_run_records(run_dir: Path) -> RunRecords:
    """Read and cross-check a run's state, metrics rows and config; raise :class:`RunRecordError` if
    they disagree. Reads only."""
    run_dir = Path(run_dir)
    metrics = run_dir / METRICS_NAME
    if metrics.exists() and not metrics.is_file():
        raise RunRecordError(f"{metrics} is not a file; move it away and --resume rewrites it from the saved state")
    state_dir = find_state_dir(run_dir)
    if state_dir is None:
        return RunRecords()
    meta = read_state_json(state_dir)
    state_json = state_dir / STATE_JSON
    rows = read_metrics_rows(metrics)
    if meta.get("version", 1) >= 3:
        history = meta["history"]
        repair = _compare_rows(rows, history, metrics, state_json)
        notes = check_config_record(run_dir, meta, state_json)
        if repair:
            lost = [r["epoch"] for r in history[len(rows):]]
            notes.append(f"{metrics} lacked the row(s) of epoch(s) {lost} (a stop between the state and its row): "
                         f"rewritten from {state_json}")
        return RunRecords(state_dir, meta, history, repair, notes)
    check_history(rows, meta, state_json, str(metrics))  # an older run: its rows must all be there
    note = (f"{run_dir} was written before state.json recorded config.yaml's checksum and the metrics rows "
            f"(state.json version {meta.get('version', 1)}): config.yaml and metrics.jsonl cannot be verified; "
            "resuming")
    return RunRecords(state_dir, meta, rows, False, [note])
