"""Run folders (issue 10): resume from config.yaml, refusals change no byte, no folder before the
start, Ctrl-C, the lock, the training state's checksums, paths resolved against the checkpoint."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import upperson.train.loop as loop
from tests.test_cli_errors import FAST, folder_digest
from upperson.cli import main
from upperson.embedded import EMBEDDED_DIR, backbone_file, embedded_available
from upperson.model.checkpoint import CheckpointCorruptError, load_model
from upperson.train.rundir import LOCK_NAME

SETS = [x for s in FAST for x in ("--set", s)]


def _train_cli(root, out, *extra: str) -> int:
    return main(["train", "--config", "toypedes", "--data-root", str(root), "--output", str(out), "--no-progress",
                 "--device", "cpu", *SETS, *extra])


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def test_resume_reads_the_runs_config_not_the_command_line(tmp_path, toypedes_root, capsys):
    run = tmp_path / "run"
    assert _train_cli(toypedes_root, run, "--set", "train.epochs=1", "--set", "model.lora.rank=2") == 0
    # no --config, no --set of the first command: the run's config.yaml is the source of truth
    assert main(["train", "--output", str(run), "--resume", "--no-progress", "--device", "cpu",
                 "--set", "train.epochs=2"]) == 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["lora"]["rank"] == 2 and cfg["train"]["epochs"] == 2  # the safe change is recorded
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    log = (run / "train.log").read_text()
    assert "after 1 epoch(s)" in log and "continuing with epoch 2 of 2" in log
    assert "train.epochs changed from 1 to 2" in log


def test_refused_resume_changes_no_byte(tmp_path, toypedes_root, capsys):
    run = tmp_path / "run"
    assert _train_cli(toypedes_root, run, "--set", "train.epochs=1") == 0
    before = folder_digest(run)
    capsys.readouterr()
    assert main(["train", "--output", str(run), "--resume", "--set", "model.lora.rank=8",
                 "--set", "train.lr=0.5"]) == 2
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "model.lora.rank" in err[0] and "train.lr" in err[0]
    # the full first command again, with one --set forgotten: refused, naming the key
    assert main(["train", "--config", "toypedes", "--output", str(run), "--resume", *SETS[:-2]]) == 2
    err = _error_lines(capsys.readouterr().err)
    differing = err[0].split("On resume only")[0]
    assert len(err) == 1 and "train.max_steps_per_epoch" in differing and "train.epochs" not in differing
    assert folder_digest(run) == before


def test_failed_start_leaves_no_folder_and_the_rerun_works(tmp_path, toypedes_root, capsys):
    out = tmp_path / "new" / "run"
    assert _train_cli(tmp_path / "no-such-data", out, "--set", "train.epochs=1") == 2
    assert len(_error_lines(capsys.readouterr().err)) == 1
    assert not (tmp_path / "new").exists()  # nor the parent it had to create
    assert _train_cli(toypedes_root, out, "--set", "train.epochs=1") == 0
    assert (out / "config.yaml").exists() and (out / "best" / "petl.json").exists()
    assert not (out / LOCK_NAME).exists()


def test_failed_start_in_an_existing_empty_folder_keeps_the_folder(tmp_path, toypedes_root):
    out = tmp_path / "mine"
    out.mkdir()
    assert _train_cli(tmp_path / "no-such-data", out) == 2
    assert out.is_dir() and list(out.iterdir()) == []


def test_ctrl_c_is_one_line_logged_and_resumable(tmp_path, toypedes_root, capsys, monkeypatch):
    run = tmp_path / "run"
    calls = {"n": 0}
    real = loop.gather_batch

    def interrupt_at_epoch_2_step_1(x, info):
        calls["n"] += 1
        if calls["n"] == 3 * 2 + 1:  # 3 gathers a step, 2 steps an epoch: the first step of epoch 2
            raise KeyboardInterrupt
        return real(x, info)

    monkeypatch.setattr(loop, "gather_batch", interrupt_at_epoch_2_step_1)
    assert _train_cli(toypedes_root, run, "--set", "train.epochs=3") == 2
    err = capsys.readouterr().err
    expected = "error: interrupted at epoch 2 step 1; `--resume` continues from epoch 2"
    assert _error_lines(err) == [expected] and "Traceback" not in err
    assert expected in (run / "train.log").read_text()
    assert not (run / LOCK_NAME).exists()
    monkeypatch.setattr(loop, "gather_batch", real)
    assert main(["train", "--output", str(run), "--resume", "--no-progress", "--device", "cpu"]) == 0
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]


def test_a_second_writer_is_refused_and_a_stale_lock_is_taken_over(tmp_path, toypedes_root, capsys):
    run = tmp_path / "run"
    assert _train_cli(toypedes_root, run, "--set", "train.epochs=1") == 0
    before = folder_digest(run)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / LOCK_NAME).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
        capsys.readouterr()
        assert main(["train", "--output", str(run), "--resume", "--set", "train.epochs=2"]) == 2
        err = _error_lines(capsys.readouterr().err)
        assert len(err) == 1 and "in use by another process" in err[0] and str(holder.pid) in err[0]
        assert (run / LOCK_NAME).exists()  # not ours to remove
    finally:
        holder.kill()
        holder.wait()
    (run / LOCK_NAME).unlink()
    assert folder_digest(run) == before
    # the holder is gone: its lock is stale, the next writer takes it over
    (run / LOCK_NAME).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
    assert main(["train", "--output", str(run), "--resume", "--no-progress", "--set", "train.epochs=2"]) == 0
    assert not (run / LOCK_NAME).exists()


def test_corrupted_training_state_is_refused_and_changes_no_byte(tmp_path, toypedes_root, capsys):
    run = tmp_path / "run"
    assert _train_cli(toypedes_root, run, "--set", "train.epochs=1") == 0
    state = run / "last" / "state.safetensors"
    data = bytearray(state.read_bytes())
    data[-3] ^= 0x01
    state.write_bytes(bytes(data))
    before = folder_digest(run)
    capsys.readouterr()
    assert main(["train", "--output", str(run), "--resume", "--no-progress", "--set", "train.epochs=2"]) == 2
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "state.safetensors" in err[0] and "corrupted" in err[0]
    assert folder_digest(run) == before
    state.write_bytes(b"")  # truncated to nothing (a power cut before the data reached the disk)
    with pytest.raises(CheckpointCorruptError, match="state.safetensors"):
        from upperson.train.state import load_training_state

        load_training_state(run / "last", load_model(run / "last"), None, None)


def test_evaluate_a_run_from_another_directory(tmp_path, toypedes_root, monkeypatch, capsys):
    run = tmp_path / "run"
    assert _train_cli(toypedes_root, run, "--set", "train.epochs=1") == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["evaluate", "--run", str(run), "--data-root", str(toypedes_root)]) == 0


@pytest.mark.skipif(not embedded_available(), reason="no shipped embedded model")
def test_shipped_checkpoint_finds_its_backbone_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = load_model(EMBEDDED_DIR / "upperson")  # no --pretrained
    meta = json.loads((EMBEDDED_DIR / "upperson" / "petl.json").read_text())
    assert model.backbone_fingerprint == meta["backbone"]["fingerprint"]
    assert Path(model.config.pretrained).resolve() == backbone_file().resolve()


def test_toypedes_preset_uses_the_shipped_backbone_from_any_directory(tmp_path, monkeypatch):
    from upperson.config import load_config
    from upperson.model.backbone import resolve_pretrained

    monkeypatch.chdir(tmp_path)
    cfg = load_config("toypedes")
    assert cfg.model.pretrained == "embedded"
    if embedded_available():
        assert resolve_pretrained(cfg.model.pretrained, cfg.model.name).resolve() == backbone_file().resolve()
    assert load_config("pretrain-tiny").model.pretrained == "random"  # from scratch, said so


def test_random_backbone_is_announced(caplog, tiny_cfg):
    from upperson.model import build_model

    with caplog.at_level("WARNING"):
        build_model(tiny_cfg)
    assert "RANDOMLY initialised" in caplog.text


def test_state_json_records_the_state_checksum(tmp_path, toypedes_root):
    import hashlib

    run = tmp_path / "run"
    assert _train_cli(toypedes_root, run, "--set", "train.epochs=1") == 0
    meta = json.loads((run / "last" / "state.json").read_text())
    assert meta["sha256"] == hashlib.sha256((run / "last" / "state.safetensors").read_bytes()).hexdigest()
    assert not any(p.name.endswith(".tmp") for p in run.rglob("*"))


def test_library_resume_refuses_an_unsafe_config_too(tmp_path, toypedes_root):
    from upperson.config import load_config
    from upperson.train import train
    from upperson.train.rundir import RunFolderError

    run = tmp_path / "run"
    base = FAST + [f"data.root={toypedes_root}", "train.epochs=1"]
    train(load_config("toypedes", base), run, progress=False)
    before = folder_digest(run)
    with pytest.raises(RunFolderError, match="model.lora.rank"):
        train(load_config("toypedes", base + ["model.lora.rank=2"]), run, resume=True, progress=False)
    assert folder_digest(run) == before


def _default_sigint() -> None:
    """In the child: SIGINT back to its default, so Python turns it into KeyboardInterrupt.

    A shell without job control starts background commands (``cmd &``, ``nohup``) with SIGINT
    ignored, and Python keeps an inherited ignore, so the test would see no interrupt at all.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_a_real_sigint_during_training_is_one_line(tmp_path, toypedes_root):
    from tests.cli_battery import REPO, cli_env

    run = tmp_path / "run"
    sets = [x for s in [*FAST[:-1], "train.epochs=50", "train.log_every=1", "train.eval_every=0"] for x in ("--set", s)]
    proc = subprocess.Popen([sys.executable, "-m", "upperson", "train", "--config", "toypedes", "--data-root",
                             str(toypedes_root), "--output", str(run), "--no-progress", "--device", "cpu", *sets],
                            cwd=REPO, env=cli_env(), stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if "epoch 1 step 2/" in line:
                proc.send_signal(signal.SIGINT)
                break
        out, rest = proc.communicate(timeout=120)
    finally:
        proc.kill()
    err = "".join(seen) + rest
    assert proc.returncode == 2, err[-2000:]
    lines = _error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert lines[0].startswith("error: interrupted at epoch 1 step ") and "`--resume` continues from epoch 1" in lines[0]
    assert lines[0] in (run / "train.log").read_text()
    assert not (run / LOCK_NAME).exists()


def test_library_train_log_is_complete_without_logging_setup(tmp_path, toypedes_root):
    import logging

    from upperson.config import load_config
    from upperson.train import train

    logger = logging.getLogger("upperson")
    old = logger.level
    logger.setLevel(logging.NOTSET)  # as for a library caller who set nothing up
    try:
        train(load_config("toypedes", FAST + [f"data.root={toypedes_root}", "train.epochs=1"]), tmp_path / "run",
              progress=False)
    finally:
        logger.setLevel(old)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "epoch 1: loss" in log and "parameters:" in log
    assert logger.level == old


def test_a_cut_between_the_best_swap_renames_is_recovered(tmp_path, toypedes_root, capsys):
    run = tmp_path / "run"
    assert _train_cli(toypedes_root, run, "--set", "train.epochs=1") == 0
    (run / "best").rename(run / "best.old")  # replace_dir stopped after its first rename
    assert main(["evaluate", "--run", str(run), "--data-root", str(toypedes_root)]) == 0  # reads best.old
    assert not (run / "best").exists()  # evaluate changes nothing
    assert main(["train", "--output", str(run), "--resume", "--no-progress", "--set", "train.epochs=2"]) == 0
    assert (run / "best" / "petl.json").exists() and not (run / "best.old").exists()
