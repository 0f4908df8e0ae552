"""Uncertainty of retrieval metrics: bootstrap intervals over queries, paired comparisons, seeds.

Every metric of ``upperson.metrics`` is a mean over queries of a per-query value (in percent):
R@k is the mean of ``100 * (first_rank <= k)``, mAP of ``100 * AP`` and mINP of ``100 * INP``.
The test queries are a sample, so each metric has a sampling error, estimated here by the
percentile bootstrap: draw the queries with replacement ``resamples`` times, recompute the
mean each time, and take the 2.5th and 97.5th percentiles of those means as the 95 % interval.

- :func:`bootstrap_ci`: intervals of each metric of one model.
- :func:`paired_bootstrap`: the difference between two models evaluated on the same queries,
  with one resampling of the queries shared by both (a paired test), its interval and whether
  that interval excludes zero.
- :func:`combine_seeds`: several training seeds of one variant: mean, across-seed std, and an
  interval that resamples queries with each query's value averaged over the seeds.

The resampling is seeded (``seed``) and drawn in fixed blocks, so the same inputs, resample
count and seed give the same interval on any machine. Outputs record both. Per-query results
are kept as CSV files (:func:`write_per_query_csv`), so every statistic can be rebuilt from
them without evaluating or training again.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import logging
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np

log = logging.getLogger(__name__)

#: the metrics of ``retrieval_metrics`` and their order in tables
METRICS = ("R1", "R5", "R10", "mAP", "mINP")
DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0
DEFAULT_LEVEL = 0.95
#: resamples drawn per block; part of the definition of the resampling stream (do not change)
_BLOCK = 250

PER_QUERY_COLUMNS = ("query_index", "pid", "image_id", "caption", "caption_key", "images", "first_rank", "ap", "inp")
#: what identifies a query across per-query files (:func:`aligned`)
QUERY_IDENTITY = ("query_index", "pid", "image_id", "caption_key")

Values = Mapping[str, np.ndarray]

log = logging.getLogger(__name__)

#: below this many queries an interval over queries says little (8 queries can give [100, 100]):
#: every result then carries a ``note`` saying so, shown next to the numbers, and a WARNING is logged
MIN_QUERIES = 30


def query_values(first_rank: np.ndarray, ap: np.ndarray, inp: np.ndarray,
                 ranks: Sequence[int] = (1, 5, 10)) -> dict[str, np.ndarray]:
    """Per-query values in percent whose means are the metrics: ``R{k}``, ``mAP``, ``mINP``.

    ``first_rank`` is the 1-based rank of each query's first match; ``ap`` and ``inp`` are
    fractions. Only queries with a match belong here (as in ``retrieval_metrics``).
    """
    first_rank = np.asarray(first_rank, dtype=np.int64)
    out = {f"R{k}": 100.0 * (first_rank <= k).astype(np.float64) for k in ranks}
    out["mAP"] = 100.0 * np.asarray(ap, dtype=np.float64)
    out["mINP"] = 100.0 * np.asarray(inp, dtype=np.float64)
    n = {len(v) for v in out.values()}
    if len(n) != 1:
        raise ValueError(f"per-query arrays differ in length: {sorted(n)}")
    return out


def values_of(per_query, ranks: Sequence[int] = (1, 5, 10)) -> dict[str, np.ndarray]:
    """:func:`query_values` of a ``upperson.metrics.PerQueryMetrics`` (or anything with
    ``first_rank``, ``ap`` and ``inp``)."""
    return query_values(per_query.first_rank, per_query.ap, per_query.inp, ranks)


def _check_args(resamples: int, level: float) -> None:
    if not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")


def _stack(values: Values, keys: Sequence[str]) -> np.ndarray:
    cols = [np.asarray(values[k], dtype=np.float64) for k in keys]
    n = {len(c) for c in cols}
    if len(n) != 1:
        raise ValueError(f"per-query arrays differ in length: {sorted(n)}")
    if not n or next(iter(n)) == 0:
        raise ValueError("no queries to resample")
    return np.stack(cols, axis=1)  # (queries, metrics)


def resampled_means(table: np.ndarray, *, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """(resamples, columns): the column means of ``table`` (queries, columns) over bootstrap
    resamples of its rows. Row ``b`` uses the same resampled queries for every column, which
    is what makes a difference column a paired bootstrap."""
    table = np.asarray(table, dtype=np.float64)
    q = table.shape[0]
    rng = np.random.default_rng(seed)
    out = np.empty((resamples, table.shape[1]), dtype=np.float64)
    for start in range(0, resamples, _BLOCK):
        b = min(_BLOCK, resamples - start)
        idx = rng.integers(0, q, size=(b, q))
        # how often each query is drawn in each resample, then one matrix product for all means
        counts = np.bincount((idx + q * np.arange(b)[:, None]).ravel(), minlength=b * q).reshape(b, q)
        out[start:start + b] = counts @ table / q
    return out


def _percentiles(means: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    alpha = (1.0 - level) / 2.0
    lo, hi = np.percentile(means, [100.0 * alpha, 100.0 * (1.0 - alpha)], axis=0)
    return lo, hi


def few_queries_note(queries: int) -> Optional[str]:
    """The note shown next to an interval over ``queries`` queries when they are too few, else None."""
    if queries >= MIN_QUERIES:
        return None
    return (f"n = {queries} queries: too few for a meaningful interval (fewer than {MIN_QUERIES}; "
            "the bootstrap cannot see the variation a larger test set would show)")


def _meta(resamples: int, seed: int, level: float, queries: int) -> dict:
    meta = {"method": "percentile bootstrap over queries", "resamples": int(resamples), "seed": int(seed),
            "level": float(level), "queries": int(queries)}
    note = few_queries_note(queries)
    if note is not None:
        log.warning("%s", note)
        meta["note"] = note
    return meta


def bootstrap_ci(values: Values, *, keys: Optional[Sequence[str]] = None, resamples: int = DEFAULT_RESAMPLES,
                 seed: int = DEFAULT_SEED, level: float = DEFAULT_LEVEL) -> dict:
    """Percentile-bootstrap intervals of the mean of each per-query array in ``values``.

    Returns ``{"metrics": {key: {"value", "low", "high"}}, "method", "resamples", "seed",
    "level", "queries"}``; ``value`` is the mean over all queries (the metric itself).
    """
    _check_args(resamples, level)
    keys = [k for k in METRICS if k in values] if keys is None else list(keys)
    table = _stack(values, keys)
    lo, hi = _percentiles(resampled_means(table, resamples=resamples, seed=seed), level)
    est = table.mean(axis=0)
    return {"metrics": {k: {"value": float(est[i]), "low": float(lo[i]), "high": float(hi[i])}
                        for i, k in enumerate(keys)},
            **_meta(resamples, seed, level, table.shape[0])}


def paired_bootstrap(a: Values, b: Values, *, keys: Optional[Sequence[str]] = None,
                     resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                     level: float = DEFAULT_LEVEL) -> dict:
    """The difference ``a - b`` of each metric between two models on the same queries.

    Both arrays must list the same queries in the same order. Each resample draws one set
    of queries for both models, so what is shared (easy and hard queries) cancels out.
    Returns ``{"metrics": {key: {"a", "b", "diff", "low", "high", "significant"}}, ...}``
    where ``significant`` means the interval excludes zero.
    """
    _check_args(resamples, level)
    keys = [k for k in METRICS if k in a and k in b] if keys is None else list(keys)
    ta, tb = _stack(a, keys), _stack(b, keys)
    if ta.shape != tb.shape:
        raise ValueError(f"paired comparison needs the same queries: {ta.shape[0]} vs {tb.shape[0]}")
    diff = ta - tb
    lo, hi = _percentiles(resampled_means(diff, resamples=resamples, seed=seed), level)
    ma, mb, md = ta.mean(axis=0), tb.mean(axis=0), diff.mean(axis=0)
    out = {}
    for i, k in enumerate(keys):
        out[k] = {"a": float(ma[i]), "b": float(mb[i]), "diff": float(md[i]), "low": float(lo[i]),
                  "high": float(hi[i]), "significant": bool(lo[i] > 0 or hi[i] < 0)}
    return {"metrics": out, **_meta(resamples, seed, level, ta.shape[0]),
            "discordant": {k: float(np.mean(diff[:, i] != 0)) for i, k in enumerate(keys)}}


def average_over_seeds(runs: Sequence[Values], keys: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
    """Each query's value averaged over the runs (seeds); the runs must share their queries."""
    if not runs:
        raise ValueError("no runs to combine")
    keys = [k for k in METRICS if all(k in r for r in runs)] if keys is None else list(keys)
    tables = [_stack(r, keys) for r in runs]
    if len({t.shape for t in tables}) != 1:
        raise ValueError(f"the seeds were evaluated on different queries: {sorted({t.shape[0] for t in tables})}")
    mean = np.mean(tables, axis=0)
    return {k: mean[:, i] for i, k in enumerate(keys)}


def combine_seeds(runs: Sequence[Values], *, keys: Optional[Sequence[str]] = None,
                  resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                  level: float = DEFAULT_LEVEL) -> dict:
    """Several seeds of one variant on the same queries.

    ``mean``: the mean over seeds of each metric (equal to the metric of the per-query values
    averaged over seeds); ``std``: the across-seed sample standard deviation (ddof 1; NaN for
    one seed); ``low``/``high``: the bootstrap interval over queries of the seed-averaged
    per-query values, i.e. the test-sampling uncertainty of the seed-averaged model. Seed
    variability is reported by ``std``, not folded into the interval.
    """
    avg = average_over_seeds(runs, keys)
    keys = list(avg)
    per_seed = np.array([[float(np.mean(np.asarray(r[k], dtype=np.float64))) for k in keys] for r in runs])
    std = per_seed.std(axis=0, ddof=1) if len(runs) > 1 else np.full(len(keys), math.nan)
    ci = bootstrap_ci(avg, keys=keys, resamples=resamples, seed=seed, level=level)
    out = {k: {"mean": ci["metrics"][k]["value"], "std": float(std[i]), "low": ci["metrics"][k]["low"],
               "high": ci["metrics"][k]["high"], "per_seed": per_seed[:, i].tolist()}
           for i, k in enumerate(keys)}
    return {"metrics": out, "seeds": len(runs), **{k: v for k, v in ci.items() if k != "metrics"}}


def half_width_needed(discordance: float, half_width: float = 1.0, z: float = 1.959964) -> int:
    """Queries needed so that the paired R@1 difference's interval has ``half_width`` points.

    For two models whose R@1 outcomes differ on a fraction ``d`` of queries (discordance),
    the per-query difference is in {-100, 0, 100} with variance at most ``d * 100**2``, so the
    interval's half-width is about ``z * 100 * sqrt(d / n)`` points; solved for ``n``.
    """
    if not 0.0 < discordance <= 1.0:
        raise ValueError(f"discordance must be in (0, 1], got {discordance}")
    return int(math.ceil((z * 100.0 / half_width) ** 2 * discordance))


# ----------------------------------------------------------------------------- per-query files


def caption_key(text: str) -> str:
    """A caption's identity without its text: the first 16 hex digits of the SHA-256 of its UTF-8."""
    return hashlib.sha256(str(text).encode("utf-8")).hexdigest()[:16]


def write_per_query_csv(path: Union[str, Path], rows: Sequence[Mapping], *, caption_text: bool = True) -> None:
    """Write per-query rows (:data:`PER_QUERY_COLUMNS`) atomically, full float precision; a path
    ending in ``.gz`` is gzipped, deterministically (no name or time in the header).

    A query with no match in the gallery has ``images`` 0 and empty rank, AP and INP.
    ``caption_key`` is computed from ``caption`` when a row has none; with ``caption_text``
    False the caption column is left empty (the key still identifies the caption).
    """
    from upperson.io import atomic_path

    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=PER_QUERY_COLUMNS, extrasaction="raise")
    w.writeheader()
    for r in rows:
        r = dict(r)
        if r.get("caption_key") is None and r.get("caption") is not None:
            r["caption_key"] = caption_key(r["caption"])
        if not caption_text:
            r["caption"] = None
        w.writerow({k: ("" if r.get(k) is None else (repr(float(r[k])) if k in ("ap", "inp") else r[k]))
                    for k in PER_QUERY_COLUMNS})
    data = text.getvalue().encode("utf-8")
    if Path(path).name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=9, mtime=0)  # no time in the header: the same rows, the same bytes
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


@dataclass(frozen=True)
class PerQueryFile:
    """A per-query CSV read back: arrays over the queries that have a match, in file order."""

    query_index: np.ndarray
    pid: np.ndarray
    first_rank: np.ndarray
    ap: np.ndarray
    inp: np.ndarray
    images: np.ndarray
    num_queries: int  # every row, with or without a match
    image_id: Optional[np.ndarray] = None  # None: an older file without the column
    caption_key: Optional[np.ndarray] = None  # None: a file with neither caption_key nor caption text
    row: Optional[np.ndarray] = None  # 1-based data row of each kept query
    path: Optional[str] = None

    def values(self, ranks: Sequence[int] = (1, 5, 10)) -> dict[str, np.ndarray]:
        return query_values(self.first_rank, self.ap, self.inp, ranks)

    def metrics(self, ranks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
        """The aggregate metrics (percent), computed as ``retrieval_metrics`` computes them."""
        from upperson.metrics import PerQueryMetrics

        n = len(self.first_rank)
        if n == 0:
            raise ValueError("no query has a match in the gallery")
        # only the rows with a match are kept, so no query is left out here (and no warning)
        out = PerQueryMetrics(query_index=self.query_index, first_rank=self.first_rank, ap=self.ap, inp=self.inp,
                              num_relevant=self.images, num_queries=n, num_gallery=0).aggregate(ranks)
        return {k: out[k] for k in (*(f"R{k}" for k in ranks), "mAP", "mINP")}


#: the largest per-query file read, decompressed (a CUHK-PEDES test split's is ~0.4 MB; a million
#: queries, ~70 MB): a gzipped file that inflates past it is refused unread
MAX_PER_QUERY_BYTES = 1 << 30
GZIP_MAGIC = b"\x1f\x8b"


def per_query_text(path: Path, data: Optional[bytes] = None) -> str:
    """The per-query file's text (``data``: its bytes, already read), gunzipped when it is gzipped,
    at most :data:`MAX_PER_QUERY_BYTES` of it."""
    if data is None:
        with open(path, "rb") as fh:
            data = fh.read(MAX_PER_QUERY_BYTES + 1)
    if data[:2] == GZIP_MAGIC:
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as fh:
                data = fh.read(MAX_PER_QUERY_BYTES + 1)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{path}: not a per-query file (damaged gzip: {exc})") from None
    if len(data) > MAX_PER_QUERY_BYTES:
        raise ValueError(f"{path}: more than {MAX_PER_QUERY_BYTES} bytes of per-query rows; not read")
    return data.decode("utf-8")


def read_per_query_csv(path: Union[str, Path], data: Optional[bytes] = None) -> PerQueryFile:
    """Read a file written by :func:`write_per_query_csv` (gzipped or not: its bytes tell); a clear
    error if it is not one. ``data``: the file's bytes, already read (and checked) by the caller;
    ``path`` then only names it.

    Older files have no ``caption_key`` column: the key is computed from their caption text
    (the same key a new file holds). A file with neither has ``caption_key`` None.
    """
    path = Path(path)
    try:
        with io.StringIO(per_query_text(path, data), newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in ("query_index", "pid", "first_rank", "ap", "inp") if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path}: not a per-query file (missing columns {missing})")
            rows = list(reader)
    except (csv.Error, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a per-query file (unreadable CSV: {exc})") from None
    numbers = [n for n, r in enumerate(rows, start=1) if r["first_rank"] not in ("", None)]
    keep = [rows[n - 1] for n in numbers]
    try:
        out = PerQueryFile(
            query_index=np.array([int(r["query_index"]) for r in keep], dtype=np.int64),
            pid=np.array([int(r["pid"]) for r in keep], dtype=np.int64),
            first_rank=np.array([int(r["first_rank"]) for r in keep], dtype=np.int64),
            ap=np.array([float(r["ap"]) for r in keep], dtype=np.float64),
            inp=np.array([float(r["inp"]) for r in keep], dtype=np.float64),
            images=np.array([int(r.get("images") or 0) for r in keep], dtype=np.int64),
            num_queries=len(rows),
            image_id=(np.array([int(r["image_id"]) for r in keep], dtype=np.int64)
                      if keep and all(r.get("image_id") not in ("", None) for r in keep) else None),
            caption_key=_caption_keys(path, keep, numbers),
            row=np.array(numbers, dtype=np.int64),
            path=str(path),
        )
    except (ValueError, OverflowError) as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ValueError(f"{path}: unreadable per-query value ({exc})") from None
    _check_per_query_ranges(path, out, numbers)
    return out


def _caption_keys(path: Path, rows: Sequence[Mapping], numbers: Sequence[int]) -> Optional[np.ndarray]:
    """Each row's caption key (from the column, else from the caption text); None if a row has neither."""
    keys = []
    for n, r in zip(numbers, rows):
        key, text = r.get("caption_key") or None, r.get("caption")
        if key is not None and text and caption_key(text) != key:
            raise ValueError(f"{path}: caption_key {key} in data row {n} is not the key of its caption text; "
                             "the file was edited or damaged: rewrite it with evaluate --per-query")
        key = key if key is not None else (caption_key(text) if text else None)
        if key is None:
            return None
        keys.append(key)
    return np.array(keys, dtype=object) if keys else None


def _check_per_query_ranges(path: Path, f: PerQueryFile, row_numbers: Sequence[int]) -> None:
    """Refuse values no evaluation can give (so no metric leaves [0, 100]), naming the column and data row."""
    checks = (("first_rank", f.first_rank >= 1), ("ap", np.isfinite(f.ap) & (f.ap > 0) & (f.ap <= 1)),
              ("inp", np.isfinite(f.inp) & (f.inp > 0) & (f.inp <= 1)))
    for column, ok in checks:
        if not ok.all():
            n = int(np.flatnonzero(~ok)[0])
            value = getattr(f, column)[n]
            raise ValueError(f"{path}: {column} {value} in data row {row_numbers[n]} is impossible "
                             f"({'a rank from 1' if column == 'first_rank' else 'a fraction in (0, 1]'}); "
                             "the file was edited or damaged: rewrite it with evaluate --per-query")


def _identity(f: PerQueryFile, n: int) -> str:
    parts = [f"query_index {f.query_index[n]}", f"pid {f.pid[n]}"]
    if f.image_id is not None:
        parts.append(f"image_id {f.image_id[n]}")
    if f.caption_key is not None:
        parts.append(f"caption_key {f.caption_key[n]}")
    row = f" (data row {f.row[n]})" if f.row is not None else ""
    return ", ".join(parts) + row


def first_difference(a: PerQueryFile, b: PerQueryFile) -> Optional[str]:
    """Where ``b``'s queries first differ from ``a``'s (index, pid, image id, caption key, in file
    order), as a phrase naming that query in both files; None when they agree."""
    name_a, name_b = a.path or "the first file", b.path or "the second file"
    checks = [(a.query_index, b.query_index), (a.pid, b.pid)]
    checks += [(x, y) for x, y in ((a.image_id, b.image_id), (a.caption_key, b.caption_key))
               if x is not None and y is not None]
    n = min(len(a.query_index), len(b.query_index))
    bad = [int(np.flatnonzero(x[:n] != y[:n])[0]) for x, y in checks if not np.array_equal(x[:n], y[:n])]
    if bad:
        i = min(bad)
        return f"first difference: {_identity(a, i)} in {name_a} against {_identity(b, i)} in {name_b}"
    if len(a.query_index) != len(b.query_index):
        longer, name = (a, name_a) if len(a.query_index) > n else (b, name_b)
        return (f"{name_a} has {len(a.query_index)} queries with a match, {name_b} {len(b.query_index)}; "
                f"first difference: {_identity(longer, n)} only in {name}")
    return None


def aligned(files: Sequence[PerQueryFile]) -> None:
    """Raise unless every file lists the same queries in the same order: the same query index,
    pid, image id and caption key (:data:`QUERY_IDENTITY`). A file without image ids or caption
    keys (an older one) is matched on what it has, with a WARNING naming what was not checked."""
    if not files:
        return
    first = files[0]
    for f in files[1:]:
        unchecked = [name for name, x, y in (("image_id", first.image_id, f.image_id),
                                             ("caption identity", first.caption_key, f.caption_key))
                     if x is None or y is None]
        if unchecked:
            log.warning("per-query files %s and %s: %s not checked (a file without them)",
                        first.path or "1", f.path or "2", " and ".join(unchecked))
        where = first_difference(first, f)
        if where is not None:
            raise ValueError("the per-query files list different queries: they were not evaluated on the same "
                             f"split ({where})")


def format_interval(value: float, low: float, high: float, digits: int = 2) -> str:
    """``64.85 [62.93, 66.76]``."""
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
