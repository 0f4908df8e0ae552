"""Queries where UP-Person and the full fine-tune disagree on a cell, and the caption texts of those queries.

A cell's per-query files carry no caption text (a caption is identified by its key,
:func:`upperson.stats.caption_key`), so the app could show a disagreement only by its key. The
command has every target's test split in memory: it writes the texts of the example queries,
and only those, to :data:`EXAMPLE_CAPTIONS` beside the matrix (a few kB). The examples are the
same function's in the command and in the app's Transfer view (:func:`disagreements`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from analysis.transfer.plan import FULL, LABELS, UPPERSON
from upperson import stats

#: the columns that identify a query in a per-query file
IDENTITY = ["query_index", "pid", "image_id", "caption_key"]
#: examples per side of a cell: UP-Person right, full fine-tune right
MAX_EXAMPLES = 4
#: the file of the example queries' caption texts, in the study folder
EXAMPLE_CAPTIONS = "example_captions.json"


def disagreements(up: Sequence[pd.DataFrame], full: Sequence[pd.DataFrame], limit: int = MAX_EXAMPLES) -> list[dict]:
    """Queries where one method ranks the true person first on every seed and the other on none, up to
    ``limit`` of each side, in query order (each frame: one seed's per-query rows with a rank); a
    ValueError when the files are over different queries."""
    base = up[0][IDENTITY].astype(str)
    for f in [*up[1:], *full]:
        if len(f) != len(base) or not (f[IDENTITY].astype(str).values == base.values).all():
            raise ValueError("the cell's per-query files are not over the same queries; run the study again.")
    up_r1 = np.mean([f["first_rank"].to_numpy() <= 1 for f in up], axis=0)
    full_r1 = np.mean([f["first_rank"].to_numpy() <= 1 for f in full], axis=0)
    out: list[dict] = []
    for right, mask in ((LABELS[UPPERSON], (up_r1 == 1) & (full_r1 == 0)), (LABELS[FULL], (up_r1 == 0) & (full_r1 == 1))):
        for i in np.flatnonzero(mask)[:limit]:
            row = up[0].iloc[int(i)]
            out.append({"query_index": int(row["query_index"]), "pid": str(row["pid"]), "image_id": str(row["image_id"]),
                        "caption_key": str(row["caption_key"]), "right": right,
                        "upperson_ranks": [int(f["first_rank"].iloc[int(i)]) for f in up],
                        "full_finetune_ranks": [int(f["first_rank"].iloc[int(i)]) for f in full]})
    return out


def read_frame(path: Path) -> pd.DataFrame:
    """One per-query file's ranked rows, as the view reads them."""
    df = pd.read_csv(path, dtype={"caption_key": str})
    return df[df["first_rank"].notna()].reset_index(drop=True)


def frame_of(f: stats.PerQueryFile) -> pd.DataFrame:
    """A per-query file already read (and checked) as :func:`read_frame`'s rows: those with a rank."""
    if f.image_id is None or f.caption_key is None:
        raise ValueError(f"{f.path}: an older per-query file without image_id or caption_key; run the study again")
    return pd.DataFrame({"query_index": f.query_index, "pid": f.pid, "image_id": f.image_id,
                         "caption_key": f.caption_key, "first_rank": f.first_rank})


def example_captions(matrix: pd.DataFrame, test_splits: Mapping[str, list],
                     parsed: Mapping[str, stats.PerQueryFile]) -> dict[str, str]:
    """Caption text by key of every cell's example queries (both methods' rows present), from the
    targets' test splits (``test_splits``: records by target name); each cell's per-query files as
    :func:`analysis.transfer.cells.build_matrix` read and checked them (``parsed``, by path)."""
    keys: dict[str, set] = {}
    rows = {(r["method"], str(r["source"]), str(r["target"])): r for _, r in matrix.iterrows()}
    for (method, source, target), row in rows.items():
        other = rows.get((FULL, source, target))
        if method != UPPERSON or other is None:
            continue
        frames = [[frame_of(parsed[Path(n).as_posix()]) for n in str(r["per_query"]).split(";") if n.strip()]
                  for r in (row, other)]
        keys.setdefault(target, set()).update(e["caption_key"] for e in disagreements(*frames))
    texts: dict[str, str] = {}
    for target, wanted in keys.items():
        for rec in test_splits.get(target, []):
            for caption in rec.captions:
                k = stats.caption_key(caption)
                if k in wanted:
                    texts[k] = caption
    return dict(sorted(texts.items()))
