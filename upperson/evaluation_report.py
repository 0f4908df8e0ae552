"""One model evaluated on one split, with its bootstrap intervals, as ``python -m upperson evaluate``
prints and writes it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from upperson.data import build_tokenizer, load_dataset
from upperson.data.holdout import hold_out_val
from upperson.evaluation import QueryResults, evaluate_per_query
from upperson.io import atomic_write_json
from upperson.metrics import format_metrics
from upperson.model import UPPerson
from upperson.stats import bootstrap_ci, format_interval, values_of, write_per_query_csv

JSON_METRICS = ("R1", "R5", "R10", "mAP", "mINP", "queries", "gallery")


@dataclass
class EvaluationReport:
    """The metrics of a split, their intervals (``stats.bootstrap_ci``) and the per-query results."""

    dataset: str
    split: str
    results: QueryResults
    metrics: dict[str, Any]
    ci: dict[str, Any]

    def lines(self) -> list[str]:
        """What ``evaluate`` prints."""
        m, ci = self.metrics, self.ci
        lines = [f"{self.dataset} {self.split}: {m['queries']} queries, {m['gallery']} images",
                 format_metrics(m),
                 f"95% bootstrap intervals over queries ({ci['resamples']} resamples, seed {ci['seed']}): "
                 + "; ".join(f"{k} {format_interval(v['value'], v['low'], v['high'])}"
                             for k, v in ci["metrics"].items())]
        if ci.get("note"):  # too few queries (stats.MIN_QUERIES): said next to the numbers, not only logged
            lines.append(f"note: {ci['note']}")
        return lines

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` file: the metrics and, under ``ci``, the intervals ``[low, high]`` (and the
        ``note`` of a test set too small for them, when it is)."""
        ci_json = {k: v for k, v in self.ci.items() if k != "metrics"} | {
            k: [v["low"], v["high"]] for k, v in self.ci["metrics"].items()}
        return {k: self.metrics[k] for k in JSON_METRICS} | {"ci": ci_json}

    def write_json(self, path: Path) -> None:
        atomic_write_json(Path(path), self.to_json())

    def write_per_query(self, path: Path) -> None:
        """One row per query (docs/statistics.md)."""
        write_per_query_csv(Path(path), self.results.rows())


def evaluate_split(model: UPPerson, dataset: str, data_root: Union[str, Path], split: str, *,
                   skip_bad_images: bool = False, batch_size: int = 256, precision: str = "bf16",
                   resamples: int = 2000, seed: int = 0, val_from_train: Optional[int] = None,
                   val_from_train_seed: int = 0) -> EvaluationReport:
    """Evaluate ``model`` (on its device, in eval mode) on ``split`` of ``dataset`` under ``data_root``.

    ``val_from_train``: the run's held-out val (``data.val_from_train``), applied to a val split
    only, so a run trained on a dataset without val is scored on the val it selected on.
    """
    data = load_dataset(dataset, data_root, skip_bad_images=skip_bad_images)
    if split == "val" and val_from_train is not None:
        data = hold_out_val(data, val_from_train, val_from_train_seed)
    results = evaluate_per_query(model, data.split(split), build_tokenizer(model.config.name),
                                 batch_size=batch_size, precision=precision)
    ci = bootstrap_ci(values_of(results.per_query), resamples=resamples, seed=seed)
    return EvaluationReport(data.name, split, results, results.metrics(), ci)
