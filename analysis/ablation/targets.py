"""The ablation on another test split (a cross-domain ablation): each variant's selected checkpoint
evaluated on a target's test split, query by query, beside the run.

``--test-on NAME=ROOT``: every complete run of the table gets ``per_query_test-NAME.csv`` (the
target's test split, as the trainer evaluates: its precision and eval batch size) and
``per_query_test-NAME.json``, what the file was evaluated from (the SHA-256 of the checkpoint's
``petl.json``, which records its weights'; a digest of the test split; the dataset, the batch
size, the precision) and the file's own SHA-256. A run whose record still matches is not
evaluated again (logged); one whose checkpoint or target changed is. The table is then made
from those files: its metrics are theirs (mean over seeds), not the runs' ``results.json``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Optional, Sequence

from analysis.transfer.cells import records_digest
from upperson import stats
from upperson.io import atomic_write_json, file_digest
from upperson.train.run import Run

log = logging.getLogger(__name__)

#: a target's name: it names files, so letters, digits, "-" and "_" only
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")


def parse_test_on(value: str) -> tuple[str, Path]:
    """``NAME=ROOT`` of ``--test-on``; a ValueError naming the option otherwise."""
    name, sep, root = str(value).partition("=")
    if not sep or not NAME_PATTERN.match(name) or not root.strip():
        raise ValueError(f"--test-on {value!r}: give NAME=ROOT, NAME of letters, digits, '-' or '_' (it names the "
                         "per-query files), ROOT the target's data folder")
    path = Path(root).expanduser()
    if not path.exists():
        raise ValueError(f"--test-on {name}={root}: no such path; give the target's data folder")
    return name, path


def per_query_name(name: str) -> str:
    """The per-query file of target ``name`` in a run folder."""
    return f"per_query_test-{name}.csv"


def _record_path(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / f"per_query_test-{name}.json"


def evaluate_on_target(runs: Sequence[Path], name: str, root: Path, dataset: str, *,
                       progress: bool = False) -> list[Path]:
    """Each run's per-query file on the target's test split (evaluated, or reused when its record
    matches); returns the files in the runs' order."""
    # (torch and open_clip: only when a run is evaluated)
    from upperson.data import build_tokenizer, load_dataset
    from upperson.evaluation import evaluate_per_query
    from upperson.model.checkpoint import load_model

    records = load_dataset(dataset, root).split("test")
    digest = records_digest(records, Path(root))
    out = []
    for run_dir in map(Path, runs):
        r = Run(run_dir)
        cfg = r.results()["config"]
        batch, precision = int(cfg["data"]["eval_batch_size"]), str(cfg["train"]["precision"])
        checkpoint = r.best_checkpoint(log)
        key = {"checkpoint": file_digest(checkpoint / "petl.json"), "dataset": dataset, "test": digest,
               "eval_batch_size": batch, "precision": precision}
        path, record = run_dir / per_query_name(name), _record_path(run_dir, name)
        old: Optional[dict] = None
        if record.is_file():
            try:
                old = json.loads(record.read_text())
            except ValueError:
                old = None
        if old and old.get("key") == key and path.is_file() and old.get("sha256") == file_digest(path):
            log.info("%s on %s test: reused %s", run_dir, name, path.name)
        else:
            res = evaluate_per_query(load_model(checkpoint), records, build_tokenizer(cfg["model"]["name"]),
                                     batch_size=batch, precision=precision, progress=progress)
            stats.write_per_query_csv(path, res.rows(), caption_text=False)
            atomic_write_json(record, {"key": key, "sha256": file_digest(path), "root": str(root)})
            log.info("%s on %s test: R1 %.2f", run_dir, name, res.metrics()["R1"])
        out.append(path)
    return out
