"""upperson.train.run.Run: the one place that knows a run folder's layout (no model, no torch)."""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest

from upperson.train.run import Run


def _checkpoint(folder):
    folder.mkdir(parents=True)
    (folder / "petl.json").write_text("{}")
    return folder


def test_the_best_checkpoint_falls_back_to_best_old_only_when_best_is_gone(tmp_path, caplog):
    run = Run(tmp_path)
    _checkpoint(tmp_path / "best.old")
    with caplog.at_level(logging.WARNING):
        assert run.best_checkpoint() == tmp_path / "best.old"  # a cut between the swap's renames
    assert "best is missing" in caplog.text
    _checkpoint(tmp_path / "best")
    assert run.best_checkpoint() == tmp_path / "best"


def test_find_checkpoint_prefers_best_then_the_folder_then_the_newest(tmp_path):
    with pytest.raises(FileNotFoundError, match="run folder not found"):
        Run(tmp_path / "nothing").find_checkpoint()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Run(tmp_path).find_checkpoint()
    older, newer = _checkpoint(tmp_path / "a" / "x"), _checkpoint(tmp_path / "b")
    os.utime(older / "petl.json", (1, 1))
    os.utime(older, (1, 1))
    assert Run(tmp_path).find_checkpoint() == newer
    (tmp_path / "petl.json").write_text("{}")
    assert Run(tmp_path).find_checkpoint() == tmp_path
    _checkpoint(tmp_path / "best")
    assert Run(tmp_path).find_checkpoint() == tmp_path / "best"


def test_results_history_and_state(tmp_path):
    run = Run(str(tmp_path))
    assert not run.is_run() and run.state_dir() is None
    with pytest.raises(FileNotFoundError, match="did the run finish"):
        run.results()
    rows = [{"epoch": 1, "R1": 10.0}, {"epoch": 2, "R1": 12.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    (tmp_path / "results.json").write_text(json.dumps({"best_epoch": 2}))
    (tmp_path / "config.yaml").write_text("base: toypedes\n")
    assert run.history() == rows and run.results() == {"best_epoch": 2} and run.is_run()
    (tmp_path / "last.old").mkdir()
    for name in ("state.json", "state.safetensors"):
        (tmp_path / "last.old" / name).write_text("")
    assert run.state_dir() == tmp_path / "last.old"  # last/ is gone: the previous state


def test_a_checkpoint_is_labelled_by_its_run(tmp_path):
    run_dir = tmp_path / "runs" / "a"
    best = _checkpoint(run_dir / "best")
    assert Run.of_checkpoint(best) is None and Run.label_of(best) == "best"  # no config.yaml: not a run
    (run_dir / "config.yaml").write_text("base: toypedes\n")
    assert Run.of_checkpoint(best) == Run(run_dir) and Run.label_of(best) == "a"
    assert Run.label_of(run_dir / "best.old") == "a"
    loose = _checkpoint(tmp_path / "ckpt")
    assert Run.of_checkpoint(loose) is None and Run.label_of(loose) == "ckpt"


def test_the_demo_labels_checkpoints_by_their_run_name(tmp_path):
    """Every run's checkpoint is `best/`: the dropdown names the runs (a, b), not "best" and a path."""
    from demo.__main__ import load_model
    from upperson.embedded import EMBEDDED_DIR, backbone_file

    checkpoints = []
    for name in ("a", "b"):
        run = tmp_path / "runs" / name
        shutil.copytree(EMBEDDED_DIR / "upperson", run / "best")
        (run / "config.yaml").write_text("model: {}\n")
        checkpoints.append(run / "best")
    _, first, rest = load_model(checkpoints, str(backbone_file()))
    assert first == "a" and list(rest) == ["b"]
