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


def test_compare_prints_paired_differences_with_intervals(tmp_path, capsys):
    a, b, c = (write(tmp_path / f"{n}.csv", rows(seed=s)) for n, s in (("a", 0), ("b", 1), ("c", 2)))
    js = tmp_path / "cmp.json"
    assert main(["compare", a, b, c, "--resamples", "300", "--ci-seed", "4", "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert f"{b} - {a}:" in out and f"{c} - {a}:" in out
    fa, fb = stats.read_per_query_csv(a), stats.read_per_query_csv(b)
    ref = stats.paired_bootstrap(fb.values(), fa.values(), resamples=300, seed=4)["metrics"]
    for k in ("R1", "mAP", "mINP"):  # every metric the files hold, B - A, as the project's paired bootstrap gives
        m = ref[k]
        assert m["diff"] == pytest.approx(fb.values()[k].mean() - fa.values()[k].mean())
        assert f"{m['diff']:+7.2f} [{m['low']:+.2f}, {m['high']:+.2f}]" in out, k
    import json

    saved = json.loads(js.read_text())
    assert saved["reference"] == a and [x["file"] for x in saved["comparisons"]] == [b, c]
    assert saved["comparisons"][0]["metrics"]["R1"]["low"] == ref["R1"]["low"]


def test_compare_refuses_bad_input_with_one_error_line(tmp_path, capsys):
    a = write(tmp_path / "a.csv", rows())
    other = write(tmp_path / "other.csv", rows(caption=lambda i: f"a person {i}" + ("!" if i == 5 else "")))
    short = write(tmp_path / "short.csv", rows(39))
    (tmp_path / "junk.csv").write_text("a,b\n1,2\n")
    (tmp_path / "bin.csv").write_bytes(b"query_index,pid,first_rank,ap,inp\n\x00\xff\xfe\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    cases = [([a], "at least two"),
             ([a, other], "different queries.*query_index 5, pid 2, image_id 2, caption_key"),
             ([a, short], "40 queries with a match.*39.*query_index 39"),
             ([a, str(tmp_path / "missing.csv")], "missing.csv"),
             ([a, str(tmp_path / "junk.csv")], "not a per-query file"),
             ([a, str(tmp_path / "bin.csv")], "bin.csv"),
             ([a, str(tmp_path)], "not a regular file"),
             ([a, a, "--resamples", "0"], "--resamples"),
             ([a, a, "--json", str(tmp_path / "a.csv" / "x.json")], "a.csv")]
    import re

    for argv, pattern in cases:
        assert main(["compare", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
        assert re.search(pattern, err), (pattern, err)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing written or changed
