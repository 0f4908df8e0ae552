"""``python -m analysis transfer``: the sweep of runs, the matrix, its per-query files, the gaps.

A stub trainer stands in for ``upperson.train.train``: it writes what the trainer writes (config,
the selected checkpoint ``best/``, ``results.json`` with val and test metrics computed by the real
``evaluate`` on the source's splits) for a tiny model with seeded weights, so the command's own
evaluation of every cell is real and can be checked against the runs' results.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from analysis import sweep
from analysis.__main__ import main as analysis_main
from analysis.transfer import cells as transfer_cells
from tests.conftest import tiny_model_config
from upperson import stats
from upperson.config import save_config, to_dict
from upperson.data import build_tokenizer, load_dataset
from upperson.embedded import zero_shot_config
from upperson.evaluation import evaluate
from upperson.model import build_model
from upperson.model.checkpoint import save_petl

TINY = ["--set", "model.image_size=[48,16]", "--set", "model.prefix.length=3", "--set", "model.lora.rank=4",
        "--set", "data.batch_size=16", "--set", "data.eval_batch_size=64", "--set", "train.precision=fp32"]


class StubTrain:
    """Writes a complete run: seeded weights (by method and seed), real evaluation of them."""

    def __init__(self, interrupt_at: int = -1):
        self.calls: list[tuple[str, bool]] = []
        self.interrupt_at = interrupt_at

    def __call__(self, cfg, run_dir, *, resume=False, progress=True):
        run_dir = Path(run_dir)
        name = "/".join(run_dir.parts[-3:])
        self.calls.append((name, resume))
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        if len(self.calls) - 1 == self.interrupt_at:
            raise KeyboardInterrupt  # as a Ctrl-C mid-training: a config, no results
        torch.manual_seed(zlib.crc32(name.split("/")[0].encode()) % 1000 + 7 * cfg.train.seed)
        model = build_model(cfg.model)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn_like(p))
        save_petl(model, run_dir / "best")
        data = load_dataset(cfg.data.dataset, cfg.data.root)
        tok = build_tokenizer(model.config.name)
        kw = dict(batch_size=cfg.data.eval_batch_size, precision=cfg.train.precision, progress=False)
        metrics = {"test": evaluate(model, data.split("test"), tok, **kw)}  # (val: not read by transfer)
        results = {"dataset": data.name, "selected_on": "val", "best_epoch": cfg.train.epochs, "metrics": metrics,
                   "train_time_s": 2.0 * cfg.train.epochs, "config": to_dict(cfg)}
        (run_dir / "results.json").write_text(json.dumps(results))
        return results


@pytest.fixture(scope="module")
def world(toypedes_root, tmp_path_factory) -> dict:
    """Two domains: ``cuhk`` (tiny ToyPEDES) and ``icfg`` (the same images, its val identities as the test
    split: other queries), and a saved tiny backbone."""
    d = tmp_path_factory.mktemp("transfer")
    other = d / "icfg" / "ToyPEDES"
    other.mkdir(parents=True)
    (other / "imgs").symlink_to(Path(toypedes_root) / "ToyPEDES" / "imgs")
    swap = {"val": "test", "test": "val"}
    entries = json.loads((Path(toypedes_root) / "ToyPEDES" / "reid_raw.json").read_text())
    (other / "reid_raw.json").write_text(json.dumps([e | {"split": swap.get(e["split"], e["split"])} for e in entries]))
    torch.manual_seed(0)
    backbone = build_model(zero_shot_config(tiny_model_config()))
    save_file({k: v.contiguous() for k, v in backbone.clip.state_dict().items()}, str(d / "bb.safetensors"))
    return {"cuhk": Path(toypedes_root), "icfg": d / "icfg", "backbone": d / "bb.safetensors", "dir": d}


def argv(world, runs: Path, out: Path, *extra: str) -> list[str]:
    return ["transfer", "--source", "cuhk", "--target", "icfg", "--data-root", f"cuhk={world['cuhk']}",
            "--data-root", f"icfg={world['icfg']}", "--runs-dir", str(runs), "--out", str(out), "--no-progress",
            "--epochs", "1", "--resamples", "300", *TINY, "--set", f"model.pretrained={world['backbone']}", *extra]


def test_transfer_matrix_diagonal_per_query_files_and_gaps(world, tmp_path, monkeypatch, capsys):
    stub = StubTrain()
    monkeypatch.setattr(sweep, "_default_train_fn", lambda: stub)
    runs, out = tmp_path / "runs", tmp_path / "out"
    assert analysis_main(argv(world, runs, out)) == 0
    printed = capsys.readouterr().out
    assert [c[0] for c in stub.calls] == ["upperson/cuhk/seed-0", "full-finetune/cuhk/seed-0", "zero-shot/cuhk/seed-0"]
    df = pd.read_csv(out / "transfer.csv")
    assert sorted(zip(df["method"], df["target"])) == sorted(
        (m, t) for m in ("upperson", "full-finetune", "zero-shot") for t in ("cuhk", "icfg"))
    # the diagonal: each run's own results.json test metrics on the source's test split
    for _, r in df[df["in_domain"]].iterrows():
        test = json.loads((runs / r["method"] / "cuhk" / "seed-0" / "results.json").read_text())["metrics"]["test"]
        assert r["R1"] == pytest.approx(test["R1"], abs=1e-9) and r["mAP"] == pytest.approx(test["mAP"], abs=1e-9)
    # every per-query file reproduces its cell: the metric and its bootstrap interval
    for _, r in df.iterrows():
        (rel,) = r["per_query"].split(";")
        f = stats.read_per_query_csv(out / rel)
        assert f.metrics()["R1"] == pytest.approx(r["R1"], abs=1e-9) and f.metrics()["mAP"] == pytest.approx(r["mAP"])
        ci = stats.bootstrap_ci(f.values(), keys=["R1", "mAP"], resamples=300, seed=0)["metrics"]
        assert (r["R1_ci_low"], r["R1_ci_high"]) == pytest.approx((ci["R1"]["low"], ci["R1"]["high"]))
        assert "person" not in (out / rel).read_text().lower()  # keys, no caption text
        texts = [c for rec in load_dataset("toypedes", world[r["target"]]).split("test") for c in rec.captions]
        assert f.caption_key.tolist() == [stats.caption_key(t) for t in texts]  # each query's own caption's key
    by_target = {t: stats.read_per_query_csv(out / df[df["target"] == t]["per_query"].iloc[0]) for t in ("cuhk", "icfg")}
    assert stats.first_difference(by_target["cuhk"], by_target["icfg"]) is not None  # the target's own queries
    # the paired difference per cell, on the UP-Person rows, from the two methods' files
    up = df[df["method"] == "upperson"].set_index("target")
    ft = df[df["method"] == "full-finetune"].set_index("target")
    for t in ("cuhk", "icfg"):
        a = stats.read_per_query_csv(out / up.loc[t, "per_query"]).values()
        b = stats.read_per_query_csv(out / ft.loc[t, "per_query"]).values()
        d = stats.paired_bootstrap(a, b, keys=["R1"], resamples=300, seed=0)["metrics"]["R1"]
        assert up.loc[t, "R1_diff"] == pytest.approx(up.loc[t, "R1"] - ft.loc[t, "R1"])
        assert (up.loc[t, "R1_diff_ci_low"], up.loc[t, "R1_diff_ci_high"]) == pytest.approx((d["low"], d["high"]))
    assert df[df["method"] != "upperson"]["R1_diff"].isna().all()
    # the summary: the gap definitions of docs/transfer.md, recomputed here
    summary = json.loads((out / "transfer_summary.json").read_text())
    g = summary["gaps"]["R1"]
    assert g["in_domain"]["value"] == pytest.approx(up.loc["cuhk", "R1_diff"])
    assert g["cross_domain"]["value"] == pytest.approx(up.loc["icfg", "R1_diff"])
    assert g["cross_minus_in"]["value"] == pytest.approx(up.loc["icfg", "R1_diff"] - up.loc["cuhk", "R1_diff"])
    for k in ("in_domain", "cross_domain", "cross_minus_in"):
        assert g[k]["low"] <= g[k]["value"] + 1e-9 <= g[k]["high"] + 2e-9
    assert summary["summary"] in printed and "in-domain gap" in printed
    assert summary["diagonal_mismatches"] == []
    # the caption texts of the app's example queries: exactly those of every cell's disagreements
    from analysis.transfer.examples import EXAMPLE_CAPTIONS, disagreements, read_frame

    texts = json.loads((out / EXAMPLE_CAPTIONS).read_text())["captions"]
    wanted = set()
    for t in ("cuhk", "icfg"):
        wanted |= {e["caption_key"] for e in disagreements([read_frame(out / up.loc[t, "per_query"])],
                                                          [read_frame(out / ft.loc[t, "per_query"])])}
    assert set(texts) == wanted and all(stats.caption_key(v) == k for k, v in texts.items())
    png = out / "transfer_matrix.png"
    assert png.is_file() and (out / "transfer_matrix.svg").is_file()
    svg = (out / "transfer_matrix.svg").read_text()
    r = up.loc["icfg"]
    assert f"{r['R1_diff']:+.1f}" in svg and f"[{r['R1_diff_ci_low']:.1f}, {r['R1_diff_ci_high']:.1f}]" in svg  # in the cell
    assert "in-domain gap" in svg and f"{g['cross_minus_in']['value']:+.1f}" in svg  # the gaps at its foot

    # --runs: the same runs, taken as they are: nothing trains, the same cells
    stub.calls.clear()
    given = [a for m in ("upperson", "full-finetune") for a in ("--runs", f"{m}:cuhk={runs / m / 'cuhk' / 'seed-0'}")]
    out2 = tmp_path / "out2"
    in_domain = [a for a in argv(world, tmp_path / "unused", out2, *given) if a not in ("--target", "icfg")]
    assert analysis_main(in_domain) == 0
    assert stub.calls == [] and not (tmp_path / "unused").exists()
    again = pd.read_csv(out2 / "transfer.csv")
    cols = ["method", "target", "R1", "R1_ci_low", "R1_ci_high", "mAP", "R1_diff", "R1_diff_ci_low"]
    expected = df[(df["method"] != "zero-shot") & df["in_domain"]][cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(again[cols], expected)
    # the finished sweep: every run complete, nothing to train
    assert analysis_main(argv(world, runs, tmp_path / "out3", "--dry-run")) == 0
    assert "3 runs, 0 to train" in capsys.readouterr().out


def test_interrupted_sweep_continues_and_dry_run_plans(world, tmp_path, monkeypatch, capsys):
    runs, out = tmp_path / "runs", tmp_path / "out"
    # the dry run: the planned runs, nothing written
    assert analysis_main(argv(world, runs, out, "--dry-run", "--seeds", "2")) == 0
    plan = capsys.readouterr().out
    for name in ("upperson/cuhk/seed-0", "upperson/cuhk/seed-1", "full-finetune/cuhk/seed-1", "zero-shot/cuhk/seed-0"):
        assert name in plan, name
    assert "zero-shot/cuhk/seed-1" not in plan and "5 runs, 5 to train" in plan and "evaluations" in plan
    assert not runs.exists() and not out.exists()

    stub = StubTrain(interrupt_at=2)  # Ctrl-C during the third run (the full fine-tune's first seed)
    monkeypatch.setattr(sweep, "_default_train_fn", lambda: stub)
    only = ["--methods", "upperson,full-finetune", "--seeds", "2"]
    in_domain = [a for a in argv(world, runs, out, *only) if a not in ("--target", "icfg")]
    assert analysis_main(in_domain) == 2
    assert "interrupted" in capsys.readouterr().err
    assert (runs / "upperson" / "cuhk" / "seed-1" / "results.json").is_file()
    assert not (runs / "full-finetune" / "cuhk" / "seed-0" / "results.json").exists() and not out.exists()
    # the dry run now sees the complete runs, one to resume, one new, with UP-Person's measured time
    assert analysis_main(in_domain + ["--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert re.search(r"upperson/cuhk/seed-1\s+complete\s+0 epochs", plan)
    assert re.search(r"full-finetune/cuhk/seed-0\s+resume\s+1 epochs.*time unknown", plan)
    assert re.search(r"full-finetune/cuhk/seed-1\s+new", plan)
    # the same command again: the finished runs are reused, the interrupted one resumed
    stub.interrupt_at = -1
    stub.calls.clear()
    assert analysis_main(in_domain) == 0
    assert stub.calls == [("full-finetune/cuhk/seed-0", True), ("full-finetune/cuhk/seed-1", False)]
    df = pd.read_csv(out / "transfer.csv")
    assert df["method"].tolist() == ["upperson", "full-finetune"] and df["R1_diff"].notna().sum() == 1
    assert "no gap summary" in capsys.readouterr().out  # in-domain cells only: no cross-domain gap
    # two seeds: the cell is the mean of the runs' own test metrics, its interval over seed-averaged queries
    for _, r in df.iterrows():
        tests = [json.loads((runs / r["method"] / "cuhk" / f"seed-{k}" / "results.json").read_text())["metrics"]["test"]
                 for k in (0, 1)]
        assert r["seeds"] == 2 and r["R1"] == pytest.approx(np.mean([t["R1"] for t in tests]), abs=1e-9)
        files = [stats.read_per_query_csv(out / rel).values() for rel in r["per_query"].split(";")]
        ci = stats.bootstrap_ci(stats.average_over_seeds(files), keys=["mAP"], resamples=300, seed=0)["metrics"]["mAP"]
        assert (r["mAP_ci_low"], r["mAP_ci_high"]) == pytest.approx((ci["low"], ci["high"]))


def test_bad_input_is_one_error_line(world, tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "out"
    fake = tmp_path / "fake"
    fake.mkdir()
    noval = tmp_path / "noval"  # train and test only, as ICFG-PEDES
    (noval / "ToyPEDES").mkdir(parents=True)
    (noval / "ToyPEDES" / "imgs").symlink_to(Path(world["cuhk"]) / "ToyPEDES" / "imgs")
    entries = json.loads((Path(world["cuhk"]) / "ToyPEDES" / "reid_raw.json").read_text())
    (noval / "ToyPEDES" / "reid_raw.json").write_text(json.dumps([e | {"split": e["split"].replace("val", "train")}
                                                                  for e in entries]))
    broken, on_test = tmp_path / "broken", tmp_path / "on_test"
    for d, text in ((broken, '{"metrics": 1}'), (on_test, json.dumps(
            {"selected_on": "test", "metrics": {}, "config": {"train": {"seed": 0, "precision": "fp32"},
                                                              "data": {"eval_batch_size": 8}}}))):
        (d / "best").mkdir(parents=True)
        (d / "best" / "petl.json").write_text("{}")
        (d / "results.json").write_text(text)
    base = ["transfer", "--out", str(out), "--runs-dir", str(runs), "--dry-run"]
    roots = ["--data-root", f"cuhk={world['cuhk']}", "--data-root", f"icfg={world['icfg']}"]
    cases = [
        (base + roots, "no source domain"),
        (base + ["--source", "mars"] + roots, "unknown domain 'mars'"),
        (base + ["--source", "cuhk"], "cuhk has no data root"),
        (base + ["--source", "cuhk", "--data-root", "cuhk"], "NAME=DIR"),
        (base + ["--source", "cuhk", "--data-root", f"cuhk={tmp_path / 'nowhere'}"], "no such folder"),
        (base + ["--source", "cuhk", "--target", "icfg-pedes", *roots, "--data-root", f"icfg-pedes={world['icfg']}"],
         "mixes ToyPEDES domains and real datasets"),
        (base + ["--source", "cuhk", *roots, "--seeds", "0"], "--seeds 0"),
        (base + ["--source", "cuhk", *roots, "--methods", "lora"], "unknown method"),
        (base + ["--source", "cuhk", *roots, "--runs", "upperson:cuhk"], "METHOD:SOURCE=RUN_DIR"),
        (base + ["--source", "cuhk", *roots, "--runs", f"upperson:cuhk={fake}"], "not a complete run folder"),
        (base + ["--source", "cuhk", *roots, "--runs", f"upperson:cuhk={broken}"], "is not a results file"),
        (base + ["--source", "cuhk", *roots, "--runs", f"upperson:cuhk={on_test}"], "selected on 'test'"),
        (base + ["--source", "rstp", *roots, "--data-root", f"rstp={noval}"], "rstp (" + str(noval) + ") has no val split"),
        (base + ["--source", "cuhk", *roots, "--resamples", "0"], "--resamples"),
        (base + ["--source", "cuhk", *roots, "--set", "model.nope=1"], "nope"),
    ]
    for args, pattern in cases:
        assert analysis_main(args) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
        assert re.search(re.escape(pattern), err), (pattern, err)
    assert not runs.exists() and not out.exists() and sorted(p.name for p in fake.iterdir()) == []
    assert sorted(p.name for p in broken.iterdir()) == ["best", "results.json"]  # given runs: not a byte changed


def test_gaps_resample_each_target_once_for_its_cells():
    """Two cells on one target share its resampled queries: their difference's interval is the
    paired one (here: identical per-query differences give a zero-width cross - in interval)."""
    rng = np.random.default_rng(0)
    same = 100.0 * (rng.random(50) < 0.3) - 100.0 * (rng.random(50) < 0.2)
    diffs = {("cuhk", "cuhk"): {"R1": same, "mAP": same / 2}, ("icfg", "cuhk"): {"R1": same, "mAP": same / 2}}
    g = transfer_cells.gaps(diffs, resamples=200, seed=0)
    assert g["R1"]["cross_minus_in"] == {"value": 0.0, "low": 0.0, "high": 0.0}
    assert g["R1"]["in_domain"]["low"] < g["R1"]["in_domain"]["value"] < g["R1"]["in_domain"]["high"]
    assert transfer_cells.gaps({("cuhk", "cuhk"): {"R1": same, "mAP": same}}) is None
    assert not math.isnan(g["mAP"]["cross_domain"]["value"])


def test_real_datasets_give_the_standard_cells_and_configs(tmp_path):
    from analysis.transfer.domains import cells, parse_roots, resolve
    from analysis.transfer.plan import TransferPlan, jobs

    roots = parse_roots([f"{n}={tmp_path}" for n in ("cuhk-pedes", "icfg-pedes", "rstp-pedes")])
    src, tgt = resolve(["cuhk-pedes", "icfg-pedes"], roots), resolve(["icfg-pedes", "rstpreid"], roots)
    assert [(s.name, t.name) for s, t in cells(src, tgt)] == [
        ("cuhk-pedes", "cuhk-pedes"), ("cuhk-pedes", "icfg-pedes"), ("cuhk-pedes", "rstpreid"),  # CUHK->ICFG, ->RSTP
        ("icfg-pedes", "icfg-pedes"), ("icfg-pedes", "rstpreid")]  # ICFG->RSTP
    planned = jobs(TransferPlan(sources=src, targets=tgt, config="cuhk-pedes", full_config="full-finetune", seeds=2),
                   tmp_path / "runs")
    by = {p.job.name: p.job.cfg for p in planned}
    assert all(p.job.run_dir == tmp_path / "runs" / p.method / p.source / f"seed-{p.seed}" for p in planned)
    assert sorted(by) == sorted(f"{m}/{s}/seed-{k}" for s in ("cuhk-pedes", "icfg-pedes")
                                for m, ks in (("upperson", (0, 1)), ("full-finetune", (0, 1)), ("zero-shot", (0,)))
                                for k in ks)
    assert by["upperson/icfg-pedes/seed-1"].data.dataset == "icfg-pedes" and by["upperson/icfg-pedes/seed-1"].train.seed == 1
    assert not by["full-finetune/cuhk-pedes/seed-0"].model.freeze_backbone
    zero = by["zero-shot/cuhk-pedes/seed-0"]
    assert zero.train.epochs == 0 and not (zero.model.prefix.enabled or zero.model.lora.enabled or zero.model.adapter.enabled)


def test_a_rerun_reuses_only_the_cells_that_still_match(world, tmp_path, monkeypatch, caplog):
    """Per-query files already in ``--out`` are reused when the run's checkpoint, the target's test
    split, the eval batch size, the precision and the file itself are unchanged; otherwise evaluated again."""
    stub = StubTrain()
    monkeypatch.setattr(sweep, "_default_train_fn", lambda: stub)
    runs, out = tmp_path / "runs", tmp_path / "out"
    args = argv(world, runs, out, "--methods", "upperson,zero-shot")
    assert analysis_main(args) == 0
    first = (out / "transfer.csv").read_text()
    evaluated: list[str] = []
    real = transfer_cells.evaluate_per_query

    def counting(model, records, *a, **k):
        evaluated.append(str(records[0].path))
        return real(model, records, *a, **k)

    monkeypatch.setattr(transfer_cells, "evaluate_per_query", counting)
    caplog.set_level("INFO")
    assert analysis_main(args) == 0
    assert evaluated == [] and (out / "transfer.csv").read_text() == first
    assert "reused" in caplog.text
    # a per-query file changed after it was written: its cell (only) is evaluated again, and restored
    rel = Path(transfer_cells.cell_file_path("upperson", "cuhk", "icfg", 0))
    good = (out / rel).read_text()
    lines = good.splitlines()
    (out / rel).write_text("\n".join([lines[0], *lines[2:]]) + "\n")
    assert analysis_main(args) == 0
    assert len(evaluated) == 1 and (out / rel).read_text() == good and (out / "transfer.csv").read_text() == first
    # the same runs given with --runs: reused; then one run's eval batch size changed: its cells only
    given = [*args, *(a for m in ("upperson", "zero-shot") for a in ("--runs", f"{m}:cuhk={runs / m / 'cuhk' / 'seed-0'}"))]
    evaluated.clear()
    assert analysis_main(given) == 0 and evaluated == []
    res = runs / "upperson" / "cuhk" / "seed-0" / "results.json"
    r = json.loads(res.read_text())
    r["config"]["data"]["eval_batch_size"] = 32
    res.write_text(json.dumps(r))
    assert analysis_main(given) == 0
    assert len(evaluated) == 2  # upperson on cuhk and on icfg; zero-shot's cells reused
    # an unreadable record of what was evaluated: everything is evaluated again, said once
    evaluated.clear()
    (out / transfer_cells.CELLS_MANIFEST).write_text("{not json")
    assert analysis_main(given) == 0
    assert len(evaluated) == 4 and "unreadable" in caplog.text


def test_a_per_query_file_changed_between_evaluation_and_the_matrix_is_refused(world, tmp_path, monkeypatch, capsys):
    """The matrix reads each per-query file once and checks it against the SHA-256 recorded when it was
    evaluated or reused: a file swapped in between is refused, and nothing is written."""
    from analysis.transfer import command as transfer_command

    stub = StubTrain()
    monkeypatch.setattr(sweep, "_default_train_fn", lambda: stub)
    runs, out = tmp_path / "runs", tmp_path / "out"
    args = argv(world, runs, out, "--methods", "upperson,zero-shot")
    assert analysis_main(args) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.suffix != ".csv"}
    rel = Path(transfer_cells.cell_file_path("upperson", "cuhk", "icfg", 0))
    real = transfer_command.evaluate_cells

    def then_tamper(*a, **k):
        files = real(*a, **k)
        lines = (out / rel).read_text().splitlines()
        (out / rel).write_text("\n".join([lines[0], *lines[2:]]) + "\n")  # a query gone: still a valid CSV
        return files

    monkeypatch.setattr(transfer_command, "evaluate_cells", then_tamper)
    capsys.readouterr()
    assert analysis_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "changed after it was evaluated" in err and str(rel) in err, err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.suffix != ".csv"} == before
