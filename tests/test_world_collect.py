"""scripts/world_collect.py: selection on the source's val over every complete grid run, kept or new;
a study folder that is not there is one clear error."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world_collect():
    spec = importlib.util.spec_from_file_location("world_collect", REPO / "scripts" / "world_collect.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(folder: Path, val_r1: float, lr: float = 1e-3, seed: int = 0) -> None:
    (folder / "best").mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"selected_on": "val", "metrics": {"val": {"R1": val_r1}},
                                                     "config": {"train": {"lr": lr, "seed": seed}}}))
    for name in ("metrics.jsonl", "config.yaml", "train.log"):
        (folder / name).write_text("x\n")
    (folder / "best" / "petl.json").write_text("{}")


def test_runs_the_repository_keeps_count_in_the_selection(world_collect, tmp_path):
    study, dest = tmp_path / "w", tmp_path / "assets"
    _run(dest / "up_a", 90.0)  # collected earlier; the study folder no longer has it
    _run(study / "runs" / "cuhk" / "up_b", 85.0)
    _run(study / "runs" / "cuhk" / "up_b-seed1", 95.0, seed=1)  # a seed rerun is never selected
    _run(study / "runs" / "cuhk" / "ft_a", 80.0, lr=1e-4)
    sel = world_collect.collect("cuhk", study, dest)
    assert sel["selected"]["upperson"]["run"] == "up_a" and sel["selected"]["full-finetune"]["run"] == "ft_a"
    assert set(sel["val_R1"]) == {"up_a", "up_b", "up_b-seed1", "ft_a"}
    assert (dest / "up_b" / "best" / "petl.json").is_file()
    assert json.loads((dest / "selection.json").read_text()) == sel


def test_a_missing_study_folder_is_one_error_line(world_collect, tmp_path, capsys):
    assert world_collect.main(["cuhk", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "no such folder; give the study folder" in err


def test_a_run_made_again_does_not_overwrite_the_one_the_repository_keeps(world_collect, tmp_path, caplog):
    study, dest = tmp_path / "w", tmp_path / "assets"
    _run(dest / "ft_a", 90.0, lr=1e-4)
    (dest / "ft_a" / "train.log").write_text("the original run's log\n")
    _run(study / "runs" / "cuhk" / "ft_a", 90.0, lr=1e-4)
    again = json.loads((study / "runs" / "cuhk" / "ft_a" / "results.json").read_text())
    again["train_time_s"] = 999.0  # made again: the same numbers, other timings
    (study / "runs" / "cuhk" / "ft_a" / "results.json").write_text(json.dumps(again))
    _run(study / "runs" / "cuhk" / "up_a", 80.0)
    sel = world_collect.collect("cuhk", study, dest)
    assert (dest / "ft_a" / "train.log").read_text() == "the original run's log\n"
    assert "train_time_s" not in json.loads((dest / "ft_a" / "results.json").read_text())
    assert sel["selected"]["full-finetune"]["run"] == "ft_a" and "made again" in caplog.text
