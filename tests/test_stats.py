"""Bootstrap intervals, paired comparisons, seeds and per-query files (upperson.stats)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from upperson import stats


def binary(n: int, ones: int) -> np.ndarray:
    """n outcomes in percent (0 or 100), exactly ``ones`` of them 100, in a shuffled order."""
    v = np.zeros(n)
    v[:ones] = 100.0
    return np.random.default_rng(1).permutation(v)


def test_resampled_means_are_means_of_resampled_queries():
    """The count-matrix product equals the plain gather-and-average of the same draws."""
    table = np.random.default_rng(2).normal(size=(37, 3))
    got = stats.resampled_means(table, resamples=300, seed=5)
    rng = np.random.default_rng(5)
    ref = []
    for b in (250, 50):  # the fixed drawing blocks
        idx = rng.integers(0, 37, size=(b, 37))
        ref.append(table[idx].mean(axis=1))
    np.testing.assert_allclose(got, np.concatenate(ref), rtol=1e-12, atol=1e-12)


def test_bootstrap_interval_of_a_proportion_matches_the_binomial():
    """p = 0.3 on 1,000 queries: the interval covers 30 and is 30 +- 1.96 * sqrt(p(1-p)/n) wide."""
    n, p = 1000, 0.3
    values = {"R1": binary(n, int(p * n))}
    ci = stats.bootstrap_ci(values, resamples=4000, seed=0)
    r1 = ci["metrics"]["R1"]
    assert r1["value"] == pytest.approx(30.0)
    assert r1["low"] < 30.0 < r1["high"]
    expected = 1.959964 * math.sqrt(p * (1 - p) / n) * 100  # 2.84 points
    assert (r1["high"] - r1["low"]) / 2 == pytest.approx(expected, rel=0.08)
    assert abs((r1["high"] + r1["low"]) / 2 - 30.0) < 0.3
    assert ci["resamples"] == 4000 and ci["seed"] == 0 and ci["queries"] == n and ci["level"] == 0.95
    # same seed, same interval; another seed, other draws (and a close interval)
    assert stats.bootstrap_ci(values, resamples=4000, seed=0) == ci
    assert not np.array_equal(stats.resampled_means(values["R1"][:, None], resamples=50, seed=0),
                              stats.resampled_means(values["R1"][:, None], resamples=50, seed=1))
    other = stats.bootstrap_ci(values, resamples=4000, seed=1)["metrics"]["R1"]
    assert abs(other["low"] - r1["low"]) < 0.5


def test_a_constant_has_a_zero_width_interval():
    ci = stats.bootstrap_ci({"mAP": np.full(50, 42.0)}, keys=["mAP"], resamples=100)
    assert ci["metrics"]["mAP"] == {"value": 42.0, "low": 42.0, "high": 42.0}


def test_query_values_reproduce_the_metric_definitions():
    first = np.array([1, 3, 7, 12])
    v = stats.query_values(first, ap=np.array([1.0, 0.5, 0.2, 0.1]), inp=np.array([1.0, 0.25, 0.1, 0.05]))
    assert v["R1"].tolist() == [100, 0, 0, 0] and v["R5"].tolist() == [100, 100, 0, 0]
    assert v["R10"].tolist() == [100, 100, 100, 0]
    assert v["mAP"].mean() == pytest.approx(45.0) and v["mINP"].mean() == pytest.approx(35.0)


def test_paired_bootstrap_of_a_variant_against_itself_is_exactly_zero():
    rng = np.random.default_rng(3)
    a = stats.query_values(rng.integers(1, 20, 500), rng.random(500), rng.random(500))
    res = stats.paired_bootstrap(a, a, resamples=500, seed=0)
    for k, m in res["metrics"].items():
        assert m["diff"] == 0.0 and m["low"] == 0.0 and m["high"] == 0.0, k
        assert not m["significant"]
    assert res["discordant"]["R1"] == 0.0


def test_paired_bootstrap_finds_a_real_difference_and_pairs_the_queries():
    """b loses 30 of a's 600 hits on 1,000 queries: -3 points, and only 3 % of queries differ, so
    the paired interval is narrow (+-1.96*sqrt(0.03/1000)*100 = 1.06) and excludes zero, while
    two independent 1,000-query samples would give +-4.3."""
    a = binary(1000, 600)
    b = a.copy()
    b[np.flatnonzero(a)[:30]] = 0.0
    res = stats.paired_bootstrap({"R1": a}, {"R1": b}, resamples=4000, seed=0)
    r1 = res["metrics"]["R1"]
    assert r1["diff"] == pytest.approx(3.0) and r1["a"] == pytest.approx(60.0) and r1["b"] == pytest.approx(57.0)
    assert r1["significant"] and r1["low"] > 0
    assert res["discordant"]["R1"] == pytest.approx(0.03)
    # the per-query difference is 0 or 100: its bootstrap sd is 100 * sqrt(d(1-d)/n)
    assert (r1["high"] - r1["low"]) / 2 == pytest.approx(1.96 * 100 * math.sqrt(0.03 * 0.97 / 1000), rel=0.12)
    with pytest.raises(ValueError, match="same queries"):
        stats.paired_bootstrap({"R1": a}, {"R1": b[:-1]}, resamples=10)


def test_half_width_formula_agrees_with_the_bootstrap():
    d = 0.12
    n = stats.half_width_needed(d, half_width=1.0)
    assert n == math.ceil(1.959964 ** 2 * 1e4 * d)  # 4,610 queries
    # balanced discordance (no true difference): the paired interval is about +-1 point at that n
    diff = np.zeros(n)
    k = int(round(d * n / 2))
    diff[:k], diff[k:2 * k] = 100.0, -100.0
    res = stats.bootstrap_ci({"R1": diff}, resamples=3000, seed=0)["metrics"]["R1"]
    assert (res["high"] - res["low"]) / 2 == pytest.approx(1.0, abs=0.08)
    with pytest.raises(ValueError):
        stats.half_width_needed(0.0)


def test_combine_seeds_mean_std_and_interval():
    rng = np.random.default_rng(4)
    runs = [stats.query_values(rng.integers(1, 6, 400), rng.random(400), rng.random(400)) for _ in range(3)]
    res = stats.combine_seeds(runs, resamples=500, seed=0)
    assert res["seeds"] == 3 and res["resamples"] == 500 and res["seed"] == 0
    per_seed = [float(r["R1"].mean()) for r in runs]
    r1 = res["metrics"]["R1"]
    assert r1["mean"] == pytest.approx(np.mean(per_seed)) and r1["per_seed"] == pytest.approx(per_seed)
    assert r1["std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert r1["low"] < r1["mean"] < r1["high"]
    # the interval is that of the seed-averaged per-query values
    avg = stats.average_over_seeds(runs)
    assert stats.bootstrap_ci(avg, resamples=500, seed=0)["metrics"]["R1"]["low"] == r1["low"]
    one = stats.combine_seeds(runs[:1], resamples=100)
    assert math.isnan(one["metrics"]["R1"]["std"])
    with pytest.raises(ValueError, match="different queries"):
        stats.combine_seeds([runs[0], {k: v[:-1] for k, v in runs[1].items()}], resamples=10)


def test_per_query_csv_round_trip(tmp_path):
    rows = [{"query_index": 0, "pid": 7, "image_id": 0, "caption": 'a "quoted", comma\ncaption', "images": 2,
             "first_rank": 1, "ap": 1 / 3, "inp": 0.1},
            {"query_index": 1, "pid": 9, "image_id": 1, "caption": "no match", "images": 0,
             "first_rank": None, "ap": None, "inp": None},
            {"query_index": 2, "pid": 7, "image_id": 2, "caption": "x", "images": 2,
             "first_rank": 4, "ap": 0.7, "inp": 2 / 7}]
    path = tmp_path / "q.csv"
    stats.write_per_query_csv(path, rows)
    f = stats.read_per_query_csv(path)
    assert f.num_queries == 3 and f.query_index.tolist() == [0, 2]
    assert f.ap.tolist() == [1 / 3, 0.7] and f.inp.tolist() == [0.1, 2 / 7]  # full precision
    assert f.metrics()["R1"] == 50.0 and f.metrics()["R5"] == 100.0
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a per-query file"):
        stats.read_per_query_csv(tmp_path / "bad.csv")


def test_a_gzipped_per_query_file_reads_as_its_plain_twin_and_is_written_the_same_every_time(tmp_path, monkeypatch):
    """``.csv.gz``: written deterministically (no name or time in the header: the same rows give the
    same bytes, so a study's copy and a run's file are one blob), read from the path or from
    checked bytes; a decompression bomb and a damaged stream are one clear error."""
    rows = [{"query_index": i, "pid": 7 + i % 3, "image_id": i, "caption": None, "caption_key": f"{i:016x}",
             "images": 2, "first_rank": 1 + i % 5, "ap": 1 / (1 + i), "inp": 0.5} for i in range(300)]
    plain, packed, again = tmp_path / "q.csv", tmp_path / "q.csv.gz", tmp_path / "again" / "q.csv.gz"
    again.parent.mkdir()
    stats.write_per_query_csv(plain, rows)
    stats.write_per_query_csv(packed, rows)
    stats.write_per_query_csv(again, rows)
    assert packed.read_bytes()[:2] == b"\x1f\x8b" and packed.read_bytes() == again.read_bytes()
    assert packed.stat().st_size < plain.stat().st_size / 2
    want = stats.read_per_query_csv(plain)
    for got in (stats.read_per_query_csv(packed), stats.read_per_query_csv(packed, data=packed.read_bytes())):
        assert got.num_queries == want.num_queries and list(got.caption_key) == list(want.caption_key)
        assert np.array_equal(got.ap, want.ap) and np.array_equal(got.first_rank, want.first_rank)
    bad = tmp_path / "bad.csv.gz"
    bad.write_bytes(packed.read_bytes()[:40])
    with pytest.raises(ValueError, match="bad.csv.gz: not a per-query file"):
        stats.read_per_query_csv(bad)
    monkeypatch.setattr(stats, "MAX_PER_QUERY_BYTES", 1000)
    with pytest.raises(ValueError, match="more than 1000 bytes"):
        stats.read_per_query_csv(packed)


def test_bad_arguments():
    with pytest.raises(ValueError, match="resamples"):
        stats.bootstrap_ci({"R1": np.ones(3)}, resamples=0)
    with pytest.raises(ValueError, match="level"):
        stats.bootstrap_ci({"R1": np.ones(3)}, level=1.5)
    with pytest.raises(ValueError, match="no queries"):
        stats.bootstrap_ci({"R1": np.ones(0)})


def test_evaluate_per_query_csv_reproduces_the_aggregate_metrics_exactly(toypedes_root, tmp_path, capsys):
    """``evaluate --per-query``: one row per query whose ranks, AP and INP give back every metric."""
    import json

    import torch
    from safetensors.torch import save_file

    from tests.conftest import tiny_model_config
    from upperson.cli import main
    from upperson.data import build_tokenizer, load_dataset
    from upperson.embedded import zero_shot_config
    from upperson.evaluation import evaluate, evaluate_per_query
    from upperson.model import build_model
    from upperson.model.checkpoint import save_petl

    # in process: the per-query results aggregate to exactly what evaluate() returns
    torch.manual_seed(0)
    backbone = build_model(zero_shot_config(tiny_model_config()))
    save_file({k: v.contiguous() for k, v in backbone.clip.state_dict().items()}, str(tmp_path / "bb.safetensors"))
    model = build_model(tiny_model_config(pretrained=str(tmp_path / "bb.safetensors")))
    records = load_dataset("toypedes", toypedes_root).split("test")
    tok = build_tokenizer("upp-tiny")
    res = evaluate_per_query(model, records, tok, precision="fp32", progress=False)
    assert res.metrics() == evaluate(model, records, tok, precision="fp32", progress=False)
    rows = res.rows()
    assert len(rows) == sum(len(r.captions) for r in records) and [r["query_index"] for r in rows] == list(range(len(rows)))
    assert rows[0]["caption"] == records[0].captions[0] and rows[0]["pid"] == records[0].pid

    # the command: its CSV reproduces its JSON exactly, and the JSON's interval is the file's bootstrap
    save_petl(model, tmp_path / "ckpt")
    out, js = tmp_path / "q.csv", tmp_path / "m.json"
    assert main(["evaluate", "--checkpoint", str(tmp_path / "ckpt"), "--data-root", str(toypedes_root),
                 "--dataset", "toypedes", "--per-query", str(out), "--json", str(js),
                 "--resamples", "300", "--ci-seed", "3"]) == 0
    assert "95% bootstrap intervals" in capsys.readouterr().out
    m = json.loads(js.read_text())
    f = stats.read_per_query_csv(out)
    assert f.num_queries == m["queries"] == len(rows) and len(f.first_rank) == m["queries"]
    for k, v in f.metrics().items():
        assert v == m[k], k  # exactly: the same per-query numbers, the same arithmetic
    assert (f.images == 3).all() and (f.first_rank >= 1).all()  # tiny: 3 images per identity
    assert m["ci"]["resamples"] == 300 and m["ci"]["seed"] == 3
    ci = stats.bootstrap_ci(f.values(), resamples=300, seed=3)["metrics"]
    assert all(m["ci"][k] == [ci[k]["low"], ci[k]["high"]] for k in stats.METRICS)
    # a bad resample count is refused before any work, and nothing is written
    assert main(["evaluate", "--checkpoint", str(tmp_path / "ckpt"), "--data-root", str(toypedes_root),
                 "--resamples", "0", "--per-query", str(tmp_path / "none.csv")]) == 2
    assert "--resamples" in capsys.readouterr().err and not (tmp_path / "none.csv").exists()


def test_an_interval_over_too_few_queries_is_flagged_and_warned(caplog):
    """Issue 21: 8 queries gave intervals like [100, 100] without saying that so few queries say little."""
    import logging

    from upperson.evaluation_report import EvaluationReport

    few = {"R1": np.full(8, 100.0), "mAP": binary(8, 5)}
    with caplog.at_level(logging.WARNING, logger="upperson.stats"):
        ci = stats.bootstrap_ci(few, resamples=50)
    assert ci["metrics"]["R1"]["low"] == ci["metrics"]["R1"]["high"] == 100.0  # the degenerate interval
    note = "n = 8 queries: too few for a meaningful interval"
    assert ci["note"].startswith(note) and note in caplog.text and "WARNING" in caplog.text.upper()
    paired = stats.paired_bootstrap(few, few, resamples=50)
    assert paired["note"].startswith(note)
    assert stats.combine_seeds([few, few], resamples=50)["note"].startswith(note)
    # what `evaluate` prints and writes carries the note next to the numbers
    report = EvaluationReport("mine", "test", None, {"queries": 8, "gallery": 4, "R1": 100.0, "R5": 100.0,
                                                   "R10": 100.0, "mAP": 80.0, "mINP": 70.0}, ci)
    assert any(note in line for line in report.lines()) and report.to_json()["ci"]["note"].startswith(note)
    # enough queries: no note, no warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="upperson.stats"):
        enough = stats.bootstrap_ci({"R1": binary(stats.MIN_QUERIES, 10)}, resamples=50)
    assert "note" not in enough and caplog.text == ""
    assert not any("too few" in line for line in EvaluationReport("m", "test", None, report.metrics, enough).lines())
