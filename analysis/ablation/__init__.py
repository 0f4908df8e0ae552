"""The per-component ablation: variants as data, a sweep that trains them, a table, figures.

Each variant is a list of config overrides on a base preset (default ``toypedes``). The
sweep trains each variant for ``seeds`` seeds (``train.seed`` = the base config's seed, +1,
...) into ``<runs-dir>/<variant>/seed-<s>/`` with ``upperson.train.train`` (zero-shot:
``train.epochs=0``, i.e. evaluation only, one seed: it is deterministic), skipping run
folders that are complete (``results.json`` written by the trainer) and resuming those that
are not. Each run's selected checkpoint is evaluated once more on the test split, query by
query, into ``per_query_test.csv`` (``upperson.stats``), so that the statistics are rebuilt
from files, never by training again. The table is collected from the run folders: test
metrics (mean over seeds), the across-seed std, 95 % bootstrap intervals over queries and the
paired difference to UP-Person (docs/statistics.md), trainable parameters and training time.
A run folder of the older layout (``<runs-dir>/<variant>/results.json``) counts as one seed.

Outputs in ``--out``: ``ablation.csv``, ``ablation_bars.{png,svg}``,
``ablation_params.{png,svg}``, ``ablation_curves.{png,svg}``, ``curves/<variant>.jsonl``
(each run's per-epoch log, first seed), ``per_query/<variant>/seed-<i>.csv`` (each run's
per-query results) and ``README.md`` (the exact command, the table and the significance of
each difference to UP-Person).

Modules: :mod:`~analysis.ablation.study` (the variants), :mod:`~analysis.ablation.runs` (the
sweep), :mod:`~analysis.ablation.table` (the table and its statistics),
:mod:`~analysis.ablation.files` (CSV and the copied files), :mod:`~analysis.ablation.figures`,
:mod:`~analysis.ablation.folder` (all of them written in order) and :mod:`~analysis.ablation.readme`. Every public name is importable from ``analysis.ablation``.
"""

from __future__ import annotations

from analysis.ablation.figures import (BAR_METRICS, GROUP_MARKERS, ablation_figures, bars_figure, params_figure,
                                       plot_bars, plot_params, uncertainty_note)
from analysis.ablation.files import (PER_QUERY_DIR, copy_curves, copy_per_query, per_query_in, read_csv, read_table,
                                     write_csv)
from analysis.ablation.folder import write_study
from analysis.ablation.readme import significance_table, write_readme
from analysis.ablation.runs import (PER_QUERY_NAME, SweepPlan, TrainFn, run_complete, run_variant,
                                    seed_runs, sweep, write_run_per_query)
from analysis.ablation.study import (ADAPTER_OFF, ALL_OFF, LORA_OFF, PREFIX_OFF, VARIANT_NAMES, VARIANTS, Variant,
                                     get_variants, variant_config)
from analysis.ablation.table import COLUMNS, REFERENCE, STAT_COLUMNS, add_statistics, collect, has_intervals, row_from_run
from upperson.config import load_config  # noqa: F401  (re-exported: the sweep's base config, as before the split)

__all__ = [
    "ADAPTER_OFF", "ALL_OFF", "BAR_METRICS", "COLUMNS", "GROUP_MARKERS", "LORA_OFF", "PER_QUERY_DIR", "PER_QUERY_NAME",
    "PREFIX_OFF", "REFERENCE", "STAT_COLUMNS", "SweepPlan", "TrainFn", "VARIANTS", "VARIANT_NAMES",
    "Variant", "ablation_figures", "add_statistics", "bars_figure", "collect", "copy_curves", "copy_per_query",
    "get_variants", "has_intervals", "load_config", "params_figure", "per_query_in", "plot_bars", "plot_params",
    "read_csv", "read_table", "row_from_run", "run_complete", "run_variant", "seed_runs", "significance_table",
    "sweep", "uncertainty_note", "variant_config", "write_csv", "write_readme", "write_run_per_query", "write_study",
]
