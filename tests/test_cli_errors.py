"""Command-line failures of train / evaluate / params: one ``error:`` line, exit 2, no traceback.

Each case is a real ``python -m upperson ...`` subprocess. They are started together (three at
a time) by one module fixture, so the battery costs about one import time per three cases.
Refusals must also leave every byte of an existing run folder unchanged.
"""

from __future__ import annotations

import hashlib
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.cli_battery import assert_one_error, run_cli
from upperson.config import load_config
from upperson.train import train

FAST = ["model.image_size=[48, 16]", "model.prefix.length=2", "model.lora.rank=4", "data.batch_size=16",
        "data.eval_batch_size=64", "train.warmup_epochs=0", "train.max_steps_per_epoch=2"]


def folder_digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (relative path -> hex digest)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _sets(*items: str) -> list[str]:
    return [x for s in items for x in ("--set", s)]


def _unwritable(base: Path) -> Path:
    """A folder this process cannot create files in (root ignores chmod: use /sys there)."""
    import os

    if os.geteuid() == 0:
        return Path("/sys/upperson-test-unwritable")
    ro = base / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    return ro


def _corrupt_copies(best: Path, base: Path) -> dict[str, Path]:
    """Copies of a checkpoint: one with a bit flipped, one truncated."""
    out = {}
    for kind in ("bitflip", "truncated"):
        d = base / f"ckpt-{kind}"
        shutil.copytree(best, d)
        w = d / "petl.safetensors"
        data = bytearray(w.read_bytes())
        if kind == "bitflip":
            data[-10] ^= 0x04
            w.write_bytes(bytes(data))
        else:
            w.write_bytes(bytes(data[: len(data) // 2]))
        out[kind] = d
    return out


@pytest.fixture(scope="module")
def battery(tmp_path_factory, toypedes_root):
    """Run every case of CASES concurrently; returns {case id: (CompletedProcess, run digest before)}."""
    base = tmp_path_factory.mktemp("cli-errors")
    run = base / "run"
    train(load_config("toypedes", FAST + [f"data.root={toypedes_root}", "train.epochs=1"]), run, progress=False)
    (base / "empty.yaml").write_text("")
    (base / "not-a-run").mkdir()
    ckpts = _corrupt_copies(run / "best", base)
    unwritable = _unwritable(base)
    root = ["--data-root", str(toypedes_root)]
    new = ["train", "--config", "toypedes", *root, "--no-progress", "--output"]
    ev = ["evaluate", *root, "--dataset", "toypedes"]
    cases = {
        "batch-size-0": (new + [str(base / "n1"), *_sets("data.batch_size=0")], "data.batch_size"),
        "epochs-negative": (new + [str(base / "n3"), *_sets("train.epochs=-1")], "train.epochs"),
        "pretrained-null": (new + [str(base / "n6"), *_sets("model.pretrained=null")], "random"),
        "empty-yaml": (["train", "--config", str(base / "empty.yaml"), *root, "--output", str(base / "n7")], "empty"),
        "existing-run": (new + [str(run)], "--resume"),
        "resume-unsafe-set": (["train", "--output", str(run), "--resume", *_sets("model.lora.rank=8")],
                              "model.lora.rank"),
        "resume-fewer-epochs": (["train", "--output", str(run), "--resume", "--no-progress",
                                 *_sets("train.epochs=0")], "train.epochs"),
        "resume-not-a-run": (["train", "--output", str(base / "not-a-run"), "--resume"], "no run"),
        "unwritable-output": (new + [str(unwritable / "run")], "cannot write"),
        "ckpt-bitflip": (ev + ["--checkpoint", str(ckpts["bitflip"])], ["petl.safetensors", "corrupted"]),
        "ckpt-truncated": (ev + ["--checkpoint", str(ckpts["truncated"])], ["petl.safetensors", "truncated"]),
        "evaluate-json-unwritable": (ev + ["--run", str(run), "--json", str(unwritable / "m.json")], "m.json"),
        "evaluate-batch-0": (ev + ["--run", str(run), "--batch-size", "0"], "--batch-size"),
        "params-empty-yaml": (["params", "--config", str(base / "empty.yaml")], "empty"),
    }
    before = folder_digest(run)
    with ThreadPoolExecutor(3) as pool:
        futures = {name: pool.submit(run_cli, args, cwd=base) for name, (args, _) in cases.items()}
        procs = {name: f.result() for name, f in futures.items()}
    return {"cases": cases, "procs": procs, "run": run, "before": before, "base": base}


# (more number ranges, and NaN weights, are checked in-process: tests/test_config.py, tests/test_checkpoint.py)
CASE_IDS = ["batch-size-0", "epochs-negative", "pretrained-null", "empty-yaml", "existing-run", "resume-unsafe-set",
            "resume-fewer-epochs", "resume-not-a-run", "unwritable-output", "ckpt-bitflip", "ckpt-truncated",
            "evaluate-json-unwritable", "evaluate-batch-0", "params-empty-yaml"]


@pytest.mark.parametrize("case", CASE_IDS)
def test_bad_invocation_is_one_error_line(battery, case):
    _, must_contain = battery["cases"][case]
    assert_one_error(battery["procs"][case], must_contain=must_contain)


def test_refusals_leave_the_run_byte_identical_and_create_no_folder(battery):
    assert folder_digest(battery["run"]) == battery["before"]
    base = battery["base"]
    for name in ("n1", "n3", "n6", "n7"):
        assert not (base / name).exists(), name
    assert list((base / "not-a-run").iterdir()) == []


def test_a_bug_is_one_line_that_says_how_to_see_the_traceback(monkeypatch, capsys):
    import upperson.cli.params as params
    from upperson.cli import main

    def bug(args):
        raise TypeError("unsupported operand type(s)")

    monkeypatch.setattr(params, "run", bug)
    assert main(["params"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "internal error" in lines[0] and "TypeError" in lines[0] and "-v" in lines[0]
    with pytest.raises(TypeError):  # -v: the traceback, for the bug report
        main(["-v", "params"])


def test_os_errors_are_one_line_naming_the_path(monkeypatch, capsys):
    import upperson.cli.params as params
    from upperson.cli import main

    def disk_full(args):
        raise OSError(28, "No space left on device", "/runs/x/petl.safetensors")

    monkeypatch.setattr(params, "run", disk_full)
    assert main(["params"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert lines == ["error: No space left on device: /runs/x/petl.safetensors"]
