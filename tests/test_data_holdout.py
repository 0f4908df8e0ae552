"""``data.val_from_train``: a held-out val split for a dataset without one (ICFG-PEDES format).

A tiny ICFG-PEDES (train and test only) is written to a temporary folder: 12 train identities,
two images each (two and one captions), 3 test identities.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from pathlib import Path

import pytest
from PIL import Image

from analysis.__main__ import main as analysis_main
from upperson.cli import main as upperson_main
from upperson.config import ConfigError, load_config, save_config, to_dict
from upperson.data import DatasetError, load_dataset
from upperson.data.holdout import hold_out_val
from upperson.train import train
from upperson.train.rundir import RunFolderError, resume_config

TRAIN_PIDS = [3, 8, 11, 14, 20, 21, 33, 40, 41, 57, 60, 99]
TEST_PIDS = [1000, 1001, 1002]
FAST = ["model.image_size=[48, 16]", "model.prefix.length=2", "model.lora.rank=4", "model.pretrained=random",
        "data.batch_size=8", "data.eval_batch_size=64", "train.warmup_epochs=0", "train.epochs=1",
        "data.dataset=icfg-pedes", "data.cache_images=false"]


def _entries(split_of=lambda pid: "train") -> list[dict]:
    out = []
    for pid in TRAIN_PIDS + TEST_PIDS:
        for k in range(2):
            out.append({"id": pid, "file_path": f"{pid}_{k}.png", "split": split_of(pid) if pid < 1000 else "test",
                        "captions": [f"a person {pid} in view {k} caption {j}" for j in range(2 - k)]})
    return out


def _write_icfg(root: Path, entries: list[dict]) -> Path:
    ddir = root / "ICFG-PEDES"
    (ddir / "imgs").mkdir(parents=True, exist_ok=True)
    for i, e in enumerate(entries):
        Image.new("RGB", (8, 24), (e["id"] % 256, 7 * i % 256, 90)).save(ddir / "imgs" / e["file_path"])
    (ddir / "ICFG-PEDES.json").write_text(json.dumps(entries))
    return root


@pytest.fixture(scope="module")
def icfg(tmp_path_factory) -> Path:
    return _write_icfg(tmp_path_factory.mktemp("icfg"), _entries())


def _pids(records) -> set[int]:
    return {r.pid for r in records}


def test_held_out_identities_leave_train_whole_and_deterministically(icfg, tmp_path, caplog):
    data = load_dataset("icfg-pedes", icfg)
    assert set(data.splits) == {"train", "test"}
    with caplog.at_level(logging.WARNING, logger="upperson.data"):
        held = hold_out_val(data, 4, seed=0)
    train, val = held.split("train"), held.split("val")
    assert len(_pids(val)) == 4 and not _pids(val) & _pids(train)
    assert _pids(val) | _pids(train) == set(TRAIN_PIDS)
    # whole identities: each held-out pid brings all its images and captions
    by_pid = {pid: [r for r in data.split("train") if r.pid == pid] for pid in TRAIN_PIDS}
    assert sorted(r.path for r in val) == sorted(r.path for pid in _pids(val) for r in by_pid[pid])
    assert [r.image_id for r in val] == list(range(8)) and [r.image_id for r in train] == list(range(16))
    assert held.split("test") == data.split("test") and data.counts("train") == (12, 24, 36)  # the input is kept
    assert held.counts("val") == (4, 8, 12)
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "held out 4 of 12 train identities (8 images, 12 captions)" in warning[0]
    assert "data.val_from_train=4" in warning[0]
    assert "held out 4 train identities (val 4)" in held.summary()  # counted under the summary table
    # the same pids from the same seed, whatever the order of the annotation file
    shuffled = _entries()
    random.Random(1).shuffle(shuffled)
    again = hold_out_val(load_dataset("icfg-pedes", _write_icfg(tmp_path, shuffled)), 4, seed=0)
    assert _pids(again.split("val")) == _pids(val)
    # another seed draws other identities (for some seed among a few: not all draws can coincide)
    assert any(_pids(hold_out_val(data, 4, seed=s).split("val")) != _pids(val) for s in (1, 2, 3))


def test_a_dataset_with_val_or_too_few_identities_is_refused(icfg, tmp_path):
    data = load_dataset("icfg-pedes", icfg)
    with pytest.raises(DatasetError, match=r"has 12 train identities; hold out fewer than 12"):
        hold_out_val(data, 12)
    with_val = load_dataset("icfg-pedes", _write_icfg(tmp_path, _entries(lambda p: "val" if p == 3 else "train")))
    with pytest.raises(DatasetError, match=r"has a val split \(1 identities\): data.val_from_train would replace it"):
        hold_out_val(with_val, 2)
    test_only = dataclasses.replace(data, splits={"test": data.split("test")})
    with pytest.raises(DatasetError, match=r"has no train split to hold identities out of; remove data.val_from_train"):
        hold_out_val(test_only, 1)
    with pytest.raises(ConfigError, match="data.val_from_train must be >= 1"):
        load_config("toypedes", ["data.val_from_train=0"])


def test_the_option_is_left_out_of_configs_that_do_not_use_it():
    plain = to_dict(load_config("toypedes"))
    assert "val_from_train" not in plain["data"] and "val_from_train_seed" not in plain["data"]
    held = to_dict(load_config("toypedes", ["data.val_from_train=5", "data.val_from_train_seed=7"]))
    assert held["data"]["val_from_train"] == 5 and held["data"]["val_from_train_seed"] == 7


def test_a_run_selects_on_the_held_out_val_and_records_it(icfg, tmp_path):
    cfg = load_config("toypedes", FAST + [f"data.root={icfg}", "data.val_from_train=3", "data.val_from_train_seed=2"])
    results = train(cfg, tmp_path / "run", progress=False)
    expected = hold_out_val(load_dataset("icfg-pedes", icfg), 3, seed=2).counts("val")
    assert results["selected_on"] == "val" and set(results["metrics"]) == {"val", "test"}
    assert results["metrics"]["val"]["queries"] == expected[2]
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["val_held_out"] == {"identities": 3, "images": expected[1], "captions": expected[2], "seed": 2,
                                      "option": "data.val_from_train=3"}
    assert record["config"]["data"]["val_from_train"] == 3
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "val_from_train: 3" in saved and "val_from_train_seed: 2" in saved
    assert "held out 3 of 12 train identities" in (tmp_path / "run" / "train.log").read_text()
    # `evaluate --run` on val is the run's own held-out val (the dataset has none), as the trainer scored it
    out = tmp_path / "val.json"
    assert upperson_main(["evaluate", "--run", str(tmp_path / "run"), "--data-root", str(icfg), "--split", "val",
                          "--json", str(out), "--device", "cpu"]) == 0
    val = json.loads(out.read_text())
    assert val["queries"] == expected[2]
    assert val["R1"] == pytest.approx(results["metrics"]["val"]["R1"], abs=1e-9)


def test_the_refusals_are_one_error_line_and_write_nothing(icfg, tmp_path, capsys):
    with_val = _write_icfg(tmp_path / "with-val", _entries(lambda p: "val" if p in (3, 8) else "train"))
    args = ["train", "--config", "toypedes", "--data-root", str(with_val), "--output", str(tmp_path / "run"),
            "--no-progress", *(x for item in FAST + ["data.val_from_train=2"] for x in ("--set", item))]
    assert upperson_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "data.val_from_train would replace it" in err
    assert not (tmp_path / "run").exists()
    base = ["transfer", "--dataset", "icfg-pedes", "--data-root", f"icfg-pedes={icfg}", "--dry-run",
            "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    for extra, pattern in (([], "pass --val-from-train N"), (["--val-from-train", "0"], "--val-from-train 0")):
        assert analysis_main(base + extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and pattern in err, err
    only_val = ["transfer", "--dataset", "icfg-pedes", "--data-root", f"icfg-pedes={with_val}", "--dry-run",
                "--val-from-train", "2", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    assert analysis_main(only_val) == 2
    assert "has a val split, which is never replaced; leave --val-from-train out" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


def test_transfer_passes_the_hold_out_to_sources_without_val(tmp_path):
    from analysis.transfer.domains import parse_roots, resolve
    from analysis.transfer.plan import TransferPlan, held_out_sources, jobs

    roots = parse_roots([f"{n}={tmp_path}" for n in ("cuhk-pedes", "icfg-pedes", "rstpreid")])
    sources = resolve(["cuhk-pedes", "icfg-pedes"], roots)
    held = held_out_sources(sources, {"cuhk-pedes": True, "icfg-pedes": False}, 50)
    assert held == {"icfg-pedes": 50}
    planned = jobs(TransferPlan(sources=sources, targets=resolve(["rstpreid"], roots), config="cuhk-pedes",
                                full_config="full-finetune", val_from_train=held), tmp_path / "runs")
    by = {(p.method, p.source): p.job.cfg.data.val_from_train for p in planned}
    assert by == {(m, s): (50 if s == "icfg-pedes" else None)
                  for m in ("upperson", "full-finetune", "zero-shot") for s in ("cuhk-pedes", "icfg-pedes")}


def test_a_hold_out_records_its_seed_even_the_default_and_resume_names_it(tmp_path):
    """data.md: config.yaml and results.json record both keys. The default seed (0) too, since it
    decides which identities are held out; a seed without a hold-out decides nothing and is left out."""
    held = to_dict(load_config("toypedes", ["data.val_from_train=5"]))["data"]
    assert (held["val_from_train"], held["val_from_train_seed"]) == (5, 0)
    unused = to_dict(load_config("toypedes", ["data.val_from_train_seed=3"]))["data"]
    assert "val_from_train" not in unused and "val_from_train_seed" not in unused
    save_config(load_config("toypedes", ["data.val_from_train=3"]), tmp_path / "config.yaml")
    assert "val_from_train_seed: 0" in (tmp_path / "config.yaml").read_text()
    with pytest.raises(RunFolderError, match=r"data.val_from_train_seed: run 0, now 1"):
        resume_config(tmp_path, ["data.val_from_train_seed=1"])


@pytest.mark.parametrize("identities", [12, 13])
def test_transfer_refuses_a_hold_out_that_leaves_no_train_identity_before_anything_trains(icfg, tmp_path, capsys,
                                                                                           identities):
    """The trainer would refuse it only when that source's first run starts (after the other sources'
    runs, and never in --dry-run): the command refuses it at once, as one error line, writing nothing."""
    argv = ["transfer", "--dataset", "icfg-pedes", "--data-root", f"icfg-pedes={icfg}", "--dry-run",
            "--val-from-train", str(identities), "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    assert analysis_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert f"--val-from-train {identities}" in err and "has 12 train identities" in err, err
    assert list(tmp_path.iterdir()) == []


def test_transfer_refuses_the_hold_out_given_through_set(tmp_path, capsys):
    """--set data.val_from_train=N would reach every source, those with a val split too (whose trainer
    refuses it, only when their first run starts): refused at once, naming --val-from-train."""
    with_val = _write_icfg(tmp_path / "with-val", _entries(lambda p: "val" if p in (3, 8) else "train"))
    argv = ["transfer", "--dataset", "icfg-pedes", "--data-root", f"icfg-pedes={with_val}", "--dry-run",
            "--set", "data.val_from_train=2", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    assert analysis_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --set data.val_from_train=2") and "--val-from-train N" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["with-val"]


def test_transfer_dry_run_says_which_sources_get_a_held_out_val(icfg, tmp_path, capsys):
    argv = ["transfer", "--dataset", "icfg-pedes", "--data-root", f"icfg-pedes={icfg}", "--dry-run",
            "--val-from-train", "4", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    assert analysis_main(argv) == 0
    out = capsys.readouterr().out
    assert "icfg-pedes: val held out of train: 4 of 12 identities (data.val_from_train=4, seed 0)" in out, out
    assert "x     16 images" in out  # the 8 train images of the held-out identities are not trained on
    assert list(tmp_path.iterdir()) == []
