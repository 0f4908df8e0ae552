"""Per-query files kept while what they were evaluated from holds (the studies' shared cache).

A study evaluates a run's selected checkpoint on a test split, query by query, into a CSV
(``upperson.stats``, no caption text: the key identifies each caption). With the file goes a
record: its **key** (the SHA-256 of the checkpoint's ``petl.json``, which records its weights';
a digest of the test split as evaluated; the eval batch size; the precision; and what the study
adds, such as the target's name) and the file's own SHA-256. A rerun reuses the file only while
both still match (:func:`is_current`), and reads it through :func:`read_checked`: the bytes
checked are the bytes parsed. The transfer matrix keeps its records in one manifest; the
ablation's and the budget's targets keep one record beside each file (:func:`sidecar_path`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from upperson import stats
from upperson.io import atomic_write_json, file_digest

log = logging.getLogger(__name__)


def records_digest(records: Sequence, root: Path) -> str:
    """SHA-256 of a split's queries and gallery as evaluated: each image's path (relative to the data
    ``root``, so that the same data elsewhere gives the same digest), identity and captions, in order."""
    h = hashlib.sha256()
    for rec in records:
        path = Path(os.path.relpath(rec.path, root)).as_posix()  # records hold absolute paths
        h.update(json.dumps([path, int(rec.pid), list(rec.captions)]).encode())
    return h.hexdigest()


def evaluation_key(checkpoint: Path, test_digest: str, *, eval_batch_size: int, precision: str,
                   **where: Any) -> dict:
    """What a per-query file depends on: the checkpoint folder's ``petl.json`` (its SHA-256), the
    test split (:func:`records_digest`), the eval batch size, the precision, and ``where`` (the
    study's own fields: the target's name or dataset)."""
    return {"checkpoint": file_digest(Path(checkpoint) / "petl.json"), **where, "test": test_digest,
            "eval_batch_size": int(eval_batch_size), "precision": str(precision)}


def is_current(path: Path, record: Optional[Mapping], key: Mapping) -> bool:
    """Whether ``path`` was evaluated from ``key`` (its ``record``) and is unchanged since."""
    return (bool(record) and record.get("key") == dict(key) and Path(path).is_file()
            and record.get("sha256") == file_digest(path))


def write(path: Path, rows: Sequence) -> str:
    """Write per-query ``rows`` (``PerQueryResult.rows()``) to ``path`` atomically; returns the file's SHA-256."""
    stats.write_per_query_csv(path, rows, caption_text=False)
    return file_digest(path)


def read_checked(path: Path, sha256: Optional[str], *, record: str = "its record",
                 remedy: str = "run the command again to evaluate it again") -> stats.PerQueryFile:
    """A per-query file, read once and checked against ``sha256`` (recorded when it was written or
    reused; None: not checked); a ValueError naming ``record`` and ``remedy`` when it changed."""
    path = Path(path)
    data = path.read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"{path} changed after it was evaluated (its SHA-256 is not the one {record} records); "
                         f"{remedy}")
    return stats.read_per_query_csv(path, data=data)


def sidecar_path(path: Path) -> Path:
    """The record kept beside per-query file ``path`` (``X.csv`` or ``X.csv.gz`` -> ``X.json``)."""
    path = Path(path)
    name = path.name[:-len(".gz")] if path.name.endswith(".csv.gz") else path.name
    return path.with_name(name).with_suffix(".json")


def read_sidecar(path: Path) -> Optional[dict]:
    """The record beside ``path``; None when there is none or it is unreadable (then the file is
    evaluated again)."""
    record = sidecar_path(path)
    if not record.is_file():
        return None
    try:
        value = json.loads(record.read_text())
    except (ValueError, UnicodeDecodeError):
        log.warning("%s is unreadable: %s is evaluated again", record, Path(path).name)
        return None
    return value if isinstance(value, dict) else None


def write_sidecar(path: Path, key: Mapping, sha256: str, **extra: Any) -> None:
    """Record beside ``path`` what it was evaluated from (``key``) and its SHA-256."""
    atomic_write_json(sidecar_path(path), {"key": dict(key), "sha256": sha256, **extra})


def checked_bytes(path: Path) -> bytes:
    """A per-query file's bytes, checked against the SHA-256 its record (:func:`sidecar_path`) holds;
    a ValueError when the record is missing or the file changed."""
    path = Path(path)
    record = read_sidecar(path)
    if not record or not isinstance(record.get("sha256"), str):
        raise ValueError(f"{path}: no readable record {sidecar_path(path).name} beside it; run the command again "
                         "to evaluate it again")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != record["sha256"]:
        raise ValueError(f"{path} changed after it was evaluated (its SHA-256 is not the one "
                         f"{sidecar_path(path).name} records); run the command again to evaluate it again")
    return data


def read_with_sidecar(path: Path) -> stats.PerQueryFile:
    """A per-query file checked against its record (:func:`checked_bytes`), read once and parsed."""
    return stats.read_per_query_csv(path, data=checked_bytes(path))
