"""The ablation on another test split (a cross-domain ablation): each variant's selected checkpoint
evaluated on a target's test split, query by query, beside the run.

``--test-on NAME=ROOT``: every complete run of the table gets ``per_query_test-NAME.csv.gz`` (the
target's test split, as the trainer evaluates: its precision and eval batch size) and
``per_query_test-NAME.json``, what the file was evaluated from (the SHA-256 of the checkpoint's
``petl.json``, which records its weights'; a digest of the test split; the dataset, the batch
size, the precision) and the file's own SHA-256 (:mod:`analysis.per_query_cache`). A run whose
record still matches is not evaluated again (logged); one whose checkpoint or target changed is.
The table is then made from those files, each checked against its record when read: its metrics
are theirs (mean over seeds), not the runs' ``results.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from analysis import per_query_cache
from upperson.train.run import Run

log = logging.getLogger(__name__)


def per_query_name(name: str) -> str:
    """The per-query file of target ``name`` in a run folder (gzipped: a 3-seed rerun's 36 runs on two
    targets of ~6,000 queries are ~27 MB as plain CSV, ~9 MB so)."""
    return f"per_query_test-{name}.csv.gz"


def evaluate_on_target(runs: Sequence[Path], name: str, root: Path, dataset: str, *,
                       progress: bool = False) -> list[Path]:
    """Each run's per-query file on the target's test split (evaluated, or reused while its record
    matches: :mod:`analysis.per_query_cache`); returns the files in the runs' order."""
    # (torch and open_clip: only when a run is evaluated)
    from upperson.data import build_tokenizer, load_dataset
    from upperson.evaluation import evaluate_per_query
    from upperson.model.checkpoint import load_model

    records = load_dataset(dataset, root).split("test")
    digest = per_query_cache.records_digest(records, Path(root))
    out = []
    for run_dir in map(Path, runs):
        r = Run(run_dir)
        cfg = r.results()["config"]
        batch, precision = int(cfg["data"]["eval_batch_size"]), str(cfg["train"]["precision"])
        checkpoint = r.best_checkpoint(log)
        key = per_query_cache.evaluation_key(checkpoint, digest, eval_batch_size=batch, precision=precision,
                                             dataset=dataset)
        path = run_dir / per_query_name(name)
        if per_query_cache.is_current(path, per_query_cache.read_sidecar(path), key):
            log.info("%s on %s test: reused %s", run_dir, name, path.name)
        else:
            res = evaluate_per_query(load_model(checkpoint), records, build_tokenizer(cfg["model"]["name"]),
                                     batch_size=batch, precision=precision, progress=progress)
            per_query_cache.write_sidecar(path, key, per_query_cache.write(path, res.rows()), root=str(root))
            log.info("%s on %s test: R1 %.2f", run_dir, name, res.metrics()["R1"])
        out.append(path)
    return out
