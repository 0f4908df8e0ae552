"""The ablation's files: the table as CSV, and the training curves and per-query results copied beside it."""

from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path

import pandas as pd

from analysis.ablation.table import add_statistics
from upperson import stats
from upperson.io import atomic_path

PER_QUERY_DIR = "per_query"
CURVES_DIR = "curves"


#: a shipped per-query file: ``seed-<i>.csv.gz`` (gzipped, as :func:`copy_per_query` writes), or
#: ``seed-<i>.csv`` (a study shipped before they were)
SEED_FILE = re.compile(r"seed-(\d+)\.csv(\.gz)?")


def copy_per_query(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Copy each run's per-query file to ``out_dir/per_query/<variant>/seed-<i>.csv.gz`` (shippable,
    gzipped without a time in the header: a plain file is compressed, a gzipped one copied;
    :func:`per_query_in` reads them back)."""
    copied = []
    for name, files in df.attrs.get("per_query", {}).items():
        for i, src in enumerate(files):
            dst = Path(out_dir) / PER_QUERY_DIR / name / f"seed-{i}.csv.gz"
            if Path(src).resolve() == dst.resolve():
                continue
            with atomic_path(dst) as tmp:
                if Path(src).name.endswith(".gz"):
                    shutil.copyfile(src, tmp)
                else:
                    Path(tmp).write_bytes(gzip.compress(Path(src).read_bytes(), compresslevel=9, mtime=0))
            plain = dst.with_name(f"seed-{i}.csv")  # an older study's file of the same run: replaced
            plain.unlink(missing_ok=True)
            copied.append(dst)
    return copied


def per_query_in(folder: Path) -> dict[str, list[Path]]:
    """``{variant: [seed files]}`` from a ``per_query/`` folder written by :func:`copy_per_query`
    (``seed-<i>.csv.gz``, or an older study's ``seed-<i>.csv``), in seed order."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    out = {}
    for d in sorted(folder.iterdir()):
        if d.is_dir():
            seeds = sorted((int(m.group(1)), p) for p in d.iterdir() if (m := SEED_FILE.fullmatch(p.name)))
            if seeds:
                out[d.name] = [p for _, p in seeds]
    return out


def write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.4f")


def read_csv(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path)
    missing = [c for c in ("variant", "R1", "mAP", "trainable_params", "train_time_s") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not an ablation table (missing columns {missing})")
    if "label" not in df.columns:
        df["label"] = df["variant"]
    return df


def read_table(path: Path, *, resamples: int = stats.DEFAULT_RESAMPLES, ci_seed: int = stats.DEFAULT_SEED) -> pd.DataFrame:
    """:func:`read_csv`, with the statistics recomputed from the ``per_query/`` folder beside it
    when there is one (a shipped study's intervals are rebuilt from its files). A table of an
    older sweep, without per-query files, reads as it is: no interval is made up."""
    df = read_csv(path)
    files = per_query_in(Path(path).parent / PER_QUERY_DIR)
    if files:
        df = add_statistics(df, files, resamples=resamples, seed=ci_seed)
    curves = Path(path).parent / CURVES_DIR  # a shipped study's curves travel with its table
    df.attrs["curves"] = {p.stem: p for p in sorted(curves.glob("*.jsonl"))} if curves.is_dir() else {}
    return df


def copy_curves(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Copy each run's ``metrics.jsonl`` to ``out_dir/curves/<variant>.jsonl`` (small, shippable);
    a variant whose run folder is gone keeps the curve its table's folder shipped, if any."""
    copied = []
    shipped = df.attrs.get("curves", {})
    for _, row in df.iterrows():
        src = Path(str(row.get("run_dir", ""))) / "metrics.jsonl"
        if not (src.is_file() and src.stat().st_size > 0):
            src = shipped.get(str(row["variant"]))
            if src is None or not src.is_file():
                continue
        dst = Path(out_dir) / CURVES_DIR / f"{row['variant']}.jsonl"
        if src.resolve() == dst.resolve():
            continue
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
        copied.append(dst)
    return copied
