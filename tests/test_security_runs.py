"""Run folders under attack (security and durability issue): a kill between the state and its
metrics row, a full disk, an unwritable metrics.jsonl, and state.json / config.yaml / metrics.jsonl
edited outside the tool. Tiny runs: 2 steps an epoch, mostly without evaluation."""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file

import upperson.io as io_mod
import upperson.train.loop as loop
import upperson.train.state as state_mod
from tests.test_cli_errors import FAST, folder_digest
from upperson.cli import main
from upperson.config import load_config
from upperson.train import train
from upperson.train.rundir import LOCK_NAME, RunFolderError, RunLock

NO_EVAL = ["train.eval_every=0"]


class _Killed(BaseException):
    """Stands for kill -9: nothing in the tool catches it."""


def _cfg(root: Path, *extra: str):
    return load_config("toypedes", FAST + [f"data.root={root}", *extra])


def _epochs(run: Path) -> list[int]:
    return [json.loads(r)["epoch"] for r in (run / "metrics.jsonl").read_text().splitlines() if r.strip()]


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "petl.safetensors")), load_file(str(b / "petl.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def _kill_at_last_swap(monkeypatch, nth: int, both_renames: bool) -> None:
    """Kill the run at the ``nth`` swap of ``last/``: just after ``last.old`` appears (one rename
    done), or after both renames, before ``last.old`` is removed."""
    real = state_mod.replace_dir
    calls = {"n": 0}

    def swap(tmp, final):
        tmp, final = Path(tmp), Path(final)
        if final.name == "last":
            calls["n"] += 1
            if calls["n"] == nth:
                final.rename(final.with_name("last.old"))
                if both_renames:
                    tmp.rename(final)
                raise _Killed
        return real(tmp, final)

    monkeypatch.setattr(state_mod, "replace_dir", swap)


def test_a_kill_as_last_old_appears_resumes_from_it_and_tidies_up(tmp_path, toypedes_root, monkeypatch):
    # (a kill after both renames is the early-stopping test below: weights and rows as uninterrupted)
    cfg = _cfg(toypedes_root, "train.epochs=3", *NO_EVAL)
    run = tmp_path / "run"
    _kill_at_last_swap(monkeypatch, 3, both_renames=False)
    with pytest.raises(_Killed):
        train(cfg, run, progress=False)
    assert not (run / "last").exists() and (run / "last.old").is_dir() and (run / "last.tmp").is_dir()
    monkeypatch.undo()
    train(cfg, run, resume=True, progress=False)
    assert _epochs(run) == [1, 2, 3]
    assert json.loads((run / "last" / "state.json").read_text())["progress"]["epoch"] == 2
    assert not (run / "last.old").exists() and not (run / "last.tmp").exists()


def test_a_lost_row_does_not_change_when_early_stopping_stops(tmp_path, toypedes_root, monkeypatch):
    scripted = {1: 10.0, 2: 20.0, 3: 15.0, 4: 18.0, 5: 30.0, 6: 40.0}  # best at 2; 3 and 4 do not improve
    now = {"epoch": 0}
    real_lr, real_evaluate = loop.set_epoch_lr, loop.evaluate

    def track(optimizer, epoch, cfg):
        now["epoch"] = epoch + 1
        return real_lr(optimizer, epoch, cfg)

    def scripted_r1(*args, **kwargs):
        return {**real_evaluate(*args, **kwargs), "R1": scripted[now["epoch"]]}

    monkeypatch.setattr(loop, "set_epoch_lr", track)
    monkeypatch.setattr(loop, "evaluate", scripted_r1)
    cfg = _cfg(toypedes_root, "train.epochs=6", "train.early_stop_patience=2")
    train(cfg, tmp_path / "straight", progress=False)
    assert _epochs(tmp_path / "straight") == [1, 2, 3, 4]

    run = tmp_path / "run"
    _kill_at_last_swap(monkeypatch, 3, both_renames=True)
    with pytest.raises(_Killed):
        train(cfg, run, progress=False)
    monkeypatch.setattr(state_mod, "replace_dir", io_mod.replace_dir)
    results = train(cfg, run, resume=True, progress=False)
    assert _epochs(run) == [1, 2, 3, 4]
    assert results["best_epoch"] == 2
    _same_weights(run / "last", tmp_path / "straight" / "last")


def test_an_unwritable_metrics_log_loses_no_row_for_good(tmp_path, toypedes_root, monkeypatch, capsys):
    run = tmp_path / "run"
    train(_cfg(toypedes_root, "train.epochs=1", *NO_EVAL), run, progress=False)
    real_replace = io_mod.os.replace
    calls = {"n": 0}

    def refuse_metrics(src, dst):
        if Path(dst).name == "metrics.jsonl":
            calls["n"] += 1
            if calls["n"] == 1:
                raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(io_mod.os, "replace", refuse_metrics)
    resume = ["train", "--output", str(run), "--resume", "--no-progress", "--device", "cpu", "--set", "train.epochs=3"]
    capsys.readouterr()
    assert main(resume) == 2
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "metrics.jsonl" in err[0]
    monkeypatch.setattr(io_mod.os, "replace", real_replace)
    assert main(resume) == 0
    assert _epochs(run) == [1, 2, 3]


def _safetensors_disk_full(path: str) -> None:
    Path(path).write_bytes(b"\0" * 64)  # a part written before the disk filled up
    raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                          'message: "No space left on device" })')


def _os_disk_full(path: str) -> None:
    raise OSError(errno.ENOSPC, "No space left on device", path)


@pytest.mark.parametrize("where,nth,fail", [("upperson.train.state.save_file", 1, _safetensors_disk_full),
                                            ("upperson.model.checkpoint.save_file", 1, _os_disk_full)],
                         ids=["state-safetensors", "best-checkpoint"])
def test_a_full_disk_is_one_error_naming_the_folder_and_leaves_no_temporary_file(
        tmp_path, toypedes_root, monkeypatch, capsys, where, nth, fail):
    module, name = where.rsplit(".", 1)
    target = __import__(module, fromlist=[name])
    real = getattr(target, name)
    calls = {"n": 0}

    def writer(tensors, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == nth:
            fail(path)
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(target, name, writer)
    run = tmp_path / "run"
    sets = [x for s in [*FAST, "train.epochs=1", *NO_EVAL] for x in ("--set", s)]
    capsys.readouterr()
    assert main(["train", "--config", "toypedes", "--data-root", str(toypedes_root), "--output", str(run),
                 "--no-progress", "--device", "cpu", *sets]) == 2
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1, err
    assert "internal error" not in err[0] and "SafetensorError" not in err[0]
    assert str(run) in err[0] and "free" in err[0] and "MB" in err[0]
    assert [p.name for p in run.rglob("*") if p.name.endswith(".tmp")] == []
    if nth == 1 and "state" in where:  # the run, with no epoch saved yet, resumes from its start
        monkeypatch.setattr(target, name, real)
        assert main(["train", "--output", str(run), "--resume", "--no-progress", "--device", "cpu"]) == 0
        assert _epochs(run) == [1]


# ---- records edited outside the tool: each resume is refused with one line naming the file
# and key, and changes no byte of the run

@pytest.fixture(scope="module")
def evaluated_run(toypedes_root, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("evaluated") / "run"
    train(_cfg(toypedes_root, "train.epochs=2"), run, progress=False)
    return run


def _edit_state(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        path = run / "last" / "state.json"
        meta = json.loads(path.read_text())
        change(meta)
        path.write_text(json.dumps(meta, indent=2))
    return edit


def _edit_config(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        tree = yaml.safe_load((run / "config.yaml").read_text())
        change(tree)
        (run / "config.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    return edit


def _edit_metrics(change: Callable[[list], None]) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
        change(rows)
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return edit


def _progress(**values) -> Callable[[Path], None]:
    return _edit_state(lambda meta: meta["progress"].update(values))


def _forge_three_epochs(run: Path) -> None:
    """epoch, history and metrics.jsonl edited consistently: only the optimiser's step count still tells"""
    def forge(meta: dict) -> None:
        meta["progress"]["epoch"] = 2
        meta["history"].append({**meta["history"][-1], "epoch": 3})
    _edit_state(forge)(run)
    _edit_metrics(lambda rows: rows.append({**rows[-1], "epoch": 3}))(run)


def _set_lr(meta: dict) -> None:
    meta["optimizer"]["param_groups"][0]["lr"] = 0.5


def _set_lr_and_its_row(run: Path) -> None:
    """the optimiser's lr and the last row's (state and metrics.jsonl) edited together: only the schedule tells"""
    def edit(meta: dict) -> None:
        _set_lr(meta)
        meta["history"][-1]["lr"] = 0.5
    _edit_state(edit)(run)
    _edit_metrics(lambda rows: rows[-1].update(lr=0.5))(run)


def _legacy_with_config_lr(run: Path) -> None:
    """a run written before the checksums, whose config.yaml lr was edited: the state's lr tells"""
    _edit_state(_as_version_2)(run)
    _edit_config(lambda t: t["train"].update(lr=0.5))(run)


def _as_version_2(meta: dict) -> None:
    meta["version"] = 2
    for key in [k for k in meta if k not in ("version", "sha256", "progress", "optimizer", "rng", "scaler")]:
        del meta[key]


def _metrics_is_a_folder(run: Path) -> None:
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").mkdir()
    (run / "metrics.jsonl" / "keep").write_text("x")


TAMPERED = {
    "epoch-ahead": (_progress(epoch=7), ["state.json", "progress.epoch"]),
    "epoch-negative": (_progress(epoch=-7), ["state.json", "progress.epoch"]),
    "epoch-a-string": (_progress(epoch="1"), ["state.json", "progress.epoch"]),
    "best-score-1e9": (_progress(best_score=1e9), ["state.json", "progress.best_score"]),
    "best-epoch-beyond": (_progress(best_epoch=99), ["state.json", "progress.best_epoch"]),
    "train-time-negative": (_progress(train_time_s=-5.0), ["state.json", "progress.train_time_s"]),
    "history-forged": (_forge_three_epochs, ["state.json", "step"]),
    "optimizer-lr": (_edit_state(_set_lr), ["state.json", "lr"]),
    "optimizer-lr-and-row": (_set_lr_and_its_row, ["state.json", "param_groups[0]", "schedule"]),
    "legacy-config-lr": (_legacy_with_config_lr, ["state.json", "initial_lr 0.001"]),
    "config-lr": (_edit_config(lambda t: t["train"].update(lr=0.5)), ["config.yaml", "train.lr"]),
    "config-placement": (_edit_config(lambda t: t["model"]["adapter"].update(placement="sequential")),
                         ["config.yaml", "model.adapter.placement"]),
    "metrics-row-edited": (_edit_metrics(lambda rows: rows[0].update(loss=0.001)), ["metrics.jsonl", "loss"]),
    "metrics-row-extra": (_edit_metrics(lambda rows: rows.append({**rows[-1], "epoch": 3})), ["metrics.jsonl", "3"]),
    "metrics-a-folder": (_metrics_is_a_folder, ["metrics.jsonl"]),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_records_changed_outside_the_tool_are_refused_and_change_no_byte(tmp_path, evaluated_run, capsys, case):
    edit, must = TAMPERED[case]
    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    edit(run)
    before = folder_digest(run)
    capsys.readouterr()
    assert main(["train", "--output", str(run), "--resume", "--no-progress", "--device", "cpu",
                 "--set", "train.epochs=3"]) == 2
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1, err
    for text in must:
        assert text in err[0], (text, err[0])
    assert folder_digest(run) == before


def test_a_lost_metrics_row_is_repaired_from_the_state(tmp_path, evaluated_run):
    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    _edit_metrics(lambda rows: rows.pop())(run)  # as a kill between the state and the row would leave it
    train(load_config(str(run / "config.yaml"), ["train.epochs=3"]), run, resume=True, progress=False)
    assert _epochs(run) == [1, 2, 3]
    assert "metrics.jsonl" in (run / "train.log").read_text().split("resumed")[0]


def test_a_run_written_before_the_checksums_still_resumes_with_one_line(tmp_path, evaluated_run):
    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)

    _edit_state(_as_version_2)(run)
    train(load_config(str(run / "config.yaml"), ["train.epochs=3"]), run, resume=True, progress=False)
    assert _epochs(run) == [1, 2, 3]
    log = (run / "train.log").read_text()
    assert sum("written before" in line for line in log.splitlines()) == 1


# ---- a second process on the same run folder

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_two_writers_taking_over_one_stale_lock_do_not_both_hold_it(tmp_path, monkeypatch):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
    first, second = RunLock(tmp_path), RunLock(tmp_path)
    real_stale = RunLock._stale

    def the_other_one_acts_in_between(self, holder):
        verdict = real_stale(self, holder)
        if self is second and not first.held:  # second judged the lock stale; first takes it over now
            monkeypatch.setattr(RunLock, "_stale", real_stale)
            with contextlib.suppress(RunFolderError):
                first.acquire()
        return verdict

    monkeypatch.setattr(RunLock, "_stale", the_other_one_acts_in_between)
    with contextlib.suppress(RunFolderError):
        second.acquire()
    try:
        assert [first.held, second.held].count(True) == 1
    finally:
        first.release()
        second.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_held_by_a_live_writer_is_refused_whatever_its_file_says(tmp_path):
    holder = RunLock(tmp_path)
    holder.acquire()
    try:
        (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
        with pytest.raises(RunFolderError, match="in use by another process"):
            RunLock(tmp_path).acquire()  # the file was rewritten to look stale: the writer still holds it
    finally:
        holder.release()
