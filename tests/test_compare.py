"""``python -m upperson compare`` and the query-identity check of per-query files (``stats.aligned``)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from upperson import stats
from upperson.cli import main


def rows(n: int = 40, seed: int = 0, *, image_id=lambda i: i // 2, caption=lambda i: f"a person {i}") -> list[dict]:
    """``n`` per-query rows with seeded ranks; pids two by two."""
    rng = np.random.default_rng(seed)
    first = rng.integers(1, 6, n)
    return [{"query_index": i, "pid": i // 2, "image_id": image_id(i), "caption": caption(i), "images": 2,
             "first_rank": int(f), "ap": 1.0 / f, "inp": 0.5 / f} for i, f in enumerate(first)]


def write(path, items) -> str:
    stats.write_per_query_csv(path, items)
    return str(path)


@pytest.mark.parametrize("field", ["image_id", "caption"])
def test_aligned_refuses_queries_that_agree_on_index_and_pid_only(tmp_path, field):
    a = stats.read_per_query_csv(write(tmp_path / "a.csv", rows()))
    changed = {"image_id": dict(image_id=lambda i: i // 2 + (i == 7)),
               "caption": dict(caption=lambda i: f"a person {i}" + (" in red" if i == 7 else ""))}[field]
    b = stats.read_per_query_csv(write(tmp_path / "b.csv", rows(**changed)))
    assert np.array_equal(a.query_index, b.query_index) and np.array_equal(a.pid, b.pid)
    with pytest.raises(ValueError, match="different queries.*query_index 7"):
        stats.aligned([a, b])
    stats.aligned([a, stats.read_per_query_csv(write(tmp_path / "c.csv", rows(seed=1)))])  # other ranks: fine


def _drop_columns(src, dst, drop: set[str]) -> str:
    with open(src, newline="", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    with open(dst, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=[c for c in table[0] if c not in drop])
        w.writeheader()
        w.writerows({k: v for k, v in r.items() if k not in drop} for r in table)
    return str(dst)


def test_older_files_keep_working(tmp_path, caplog):
    new = stats.read_per_query_csv(write(tmp_path / "new.csv", rows()))
    assert new.caption_key.tolist() == [stats.caption_key(f"a person {i}") for i in range(40)]
    # a file from before caption_key: the key comes from its caption text, so it matches a new file
    old = stats.read_per_query_csv(_drop_columns(tmp_path / "new.csv", tmp_path / "old.csv", {"caption_key"}))
    assert old.caption_key.tolist() == new.caption_key.tolist()
    stats.aligned([new, old])
    # a file with neither text nor key (nor image ids): matched on index and pid, and said so
    bare = stats.read_per_query_csv(_drop_columns(tmp_path / "new.csv", tmp_path / "bare.csv",
                                                  {"caption_key", "caption", "image_id"}))
    assert bare.caption_key is None and bare.image_id is None
    stats.aligned([new, bare])
    assert "image_id and caption identity not checked" in caplog.text
    # without text: the key stays, and a key that is not its text's is refused
    stats.write_per_query_csv(tmp_path / "notext.csv", rows(), caption_text=False)
    notext = stats.read_per_query_csv(tmp_path / "notext.csv")
    assert "a person" not in (tmp_path / "notext.csv").read_text() and notext.caption_key.tolist() == new.caption_key.tolist()
    edited = (tmp_path / "new.csv").read_text().replace("a person 3,", "a person 33,", 1)
    (tmp_path / "edited.csv").write_text(edited)
    with pytest.raises(ValueError, match="caption_key .* in data row 4 is not the key of its caption"):
        stats.read_per_query_csv(tmp_path / "edited.csv")
