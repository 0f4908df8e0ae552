"""analysis/per_query_cache.py: the studies' per-query files are reused only while their key and
their bytes hold, and read checked (the bytes checked are the bytes parsed)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from analysis import per_query_cache as cache
from upperson import stats
from upperson.data.records import ImageRecord


def _rows(ranks):
    return [{"query_index": q, "pid": q, "image_id": q, "caption": f"caption {q}", "images": 1, "first_rank": r,
             "ap": 1.0 / r, "inp": 1.0 / r} for q, r in enumerate(ranks)]


def _checkpoint(tmp_path: Path, text: str = '{"weights": "a"}') -> Path:
    d = tmp_path / "best"
    d.mkdir(exist_ok=True)
    (d / "petl.json").write_text(text)
    return d


def test_a_file_is_current_only_while_its_key_and_bytes_hold(tmp_path):
    ckpt = _checkpoint(tmp_path)
    key = cache.evaluation_key(ckpt, "t" * 64, eval_batch_size=8, precision="fp32", target="icfg")
    assert key["checkpoint"] == hashlib.sha256(b'{"weights": "a"}').hexdigest()
    path = tmp_path / "per_query_test-icfg.csv"
    sha = cache.write(path, _rows([1, 2, 3]))
    cache.write_sidecar(path, key, sha, root="/data/icfg")
    record = cache.read_sidecar(path)
    assert cache.is_current(path, record, key)
    assert cache.read_with_sidecar(path).first_rank.tolist() == [1, 2, 3]
    # another batch size, another checkpoint: not current
    assert not cache.is_current(path, record, {**key, "eval_batch_size": 16})
    assert not cache.is_current(path, record, cache.evaluation_key(_checkpoint(tmp_path, "{}"), "t" * 64,
                                                                   eval_batch_size=8, precision="fp32", target="icfg"))
    # changed bytes (a valid file): not current, and refused when read
    stats.write_per_query_csv(path, _rows([1, 2, 4]))
    assert not cache.is_current(path, record, key)
    with pytest.raises(ValueError, match="changed after it was evaluated"):
        cache.read_with_sidecar(path)
    # no record: refused when read; an unreadable record: none
    cache.sidecar_path(path).write_text("{not json")
    assert cache.read_sidecar(path) is None
    cache.sidecar_path(path).unlink()
    with pytest.raises(ValueError, match="no readable record"):
        cache.read_with_sidecar(path)


def test_the_split_digest_follows_the_data_not_its_folder(tmp_path):
    def split(root: Path, captions=("a red coat",)):
        return [ImageRecord(path=root / "imgs" / "0.jpg", pid=3, captions=list(captions), image_id=0)]

    a, b = tmp_path / "a", tmp_path / "b"
    assert cache.records_digest(split(a), a) == cache.records_digest(split(b), b)
    assert cache.records_digest(split(a), a) != cache.records_digest(split(a, ("a blue coat",)), a)
