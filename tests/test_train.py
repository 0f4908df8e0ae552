"""Training end to end on ToyPEDES tiny: learning, resume, NaN guard, DDP, evaluate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from upperson.cli import main
from upperson.config import load_config
from upperson.data import build_tokenizer, load_dataset
from upperson.embedded import backbone_file, embedded_available
from upperson.evaluation import evaluate
from upperson.model import build_model
from upperson.model.checkpoint import CheckpointMismatchError, load_model
from upperson.train import TrainingDiverged, TrainingInterrupted, train
from upperson.train.rundir import RunFolderError
import upperson.train.loop as loop

REPO = Path(__file__).resolve().parent.parent
FAST = [
    "model.image_size=[48, 16]",
    "model.prefix.length=2",
    "model.lora.rank=4",
    "data.batch_size=16",
    "data.eval_batch_size=64",
    "train.warmup_epochs=0",
]


def _cfg(root, *extra):
    return load_config("toypedes", FAST + [f"data.root={root}", *extra])


def _weights(run: Path, sub: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run / sub / "petl.safetensors"))


def test_training_lowers_the_loss_and_raises_r1(tmp_path, toypedes_root):
    # on the shipped pretrained backbone when present (a random one learns too slowly to show R@1)
    pretrained = json.dumps(str(backbone_file())) if embedded_available() else "random"
    cfg = _cfg(toypedes_root, "train.epochs=5", "train.lr=0.01", f"model.pretrained={pretrained}",
               "model.image_size=[96, 32]")
    data = load_dataset("toypedes", toypedes_root)
    tok = build_tokenizer("upp-tiny")
    untrained = evaluate(build_model(cfg.model), data.split("train"), tok, progress=False)

    results = train(cfg, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert results["selected_on"] == "val" and "test" in results["metrics"]
    assert (tmp_path / "run" / "config.yaml").exists() and (tmp_path / "run" / "train.log").exists()
    if embedded_available():
        trained = evaluate(load_model(tmp_path / "run" / "last"), data.split("train"), tok, progress=False)
        assert trained["R1"] > untrained["R1"] + 10 and trained["mAP"] > untrained["mAP"] + 10


def test_resume_reaches_the_uninterrupted_weights(tmp_path, toypedes_root, monkeypatch):
    cfg = _cfg(toypedes_root, "train.epochs=3", "train.eval_every=1")
    train(cfg, tmp_path / "straight", progress=False)

    calls = {"n": 0}
    real_evaluate = loop.evaluate

    def crash_in_epoch_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # end of epoch 2, before its state is saved: like a kill
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", crash_in_epoch_2)
    with pytest.raises(TrainingInterrupted, match=r"interrupted at epoch 2 step 9; `--resume` continues from epoch 2$"):
        train(cfg, tmp_path / "interrupted", progress=False)
    monkeypatch.setattr(loop, "evaluate", real_evaluate)
    assert json.loads((tmp_path / "interrupted" / "last" / "state.json").read_text())["progress"]["epoch"] == 0
    assert "error: interrupted at epoch 2 step 9" in (tmp_path / "interrupted" / "train.log").read_text()
    with pytest.raises(RunFolderError, match="--resume"):
        train(cfg, tmp_path / "interrupted", progress=False)
    train(cfg, tmp_path / "interrupted", resume=True, progress=False)

    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "interrupted")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = (tmp_path / "interrupted" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2, 3]


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_state(tmp_path, toypedes_root, monkeypatch):
    cfg = _cfg(toypedes_root, "train.epochs=3")
    real = loop.build_loss

    class NanAfterEpoch1(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, f, g, pids):
            self.calls += 1
            loss = self.inner(f, g, pids)
            return loss * float("nan") if self.calls > 9 else loss  # tiny train split: 9 steps an epoch

    monkeypatch.setattr(loop, "build_loss", lambda c: NanAfterEpoch1(real(c)))
    with pytest.raises(TrainingDiverged, match="the loss became nan at epoch 2") as err:
        train(cfg, tmp_path / "run", progress=False)
    assert "last good state" in str(err.value)
    state = json.loads((tmp_path / "run" / "last" / "state.json").read_text())
    assert state["progress"]["epoch"] == 0  # epoch 1 (0-based 0) is the last good one
    assert all(torch.isfinite(v).all() for v in _weights(tmp_path / "run").values())


def test_evaluate_reproduces_the_logged_metrics_and_writes_json(tmp_path, toypedes_root, capsys):
    run = tmp_path / "run"
    train(_cfg(toypedes_root, "train.epochs=2"), run, progress=False)
    results = json.loads((run / "results.json").read_text())
    out = tmp_path / "m.json"
    assert main(["evaluate", "--run", str(run), "--data-root", str(toypedes_root), "--split", "test",
                 "--json", str(out)]) == 0
    m = json.loads(out.read_text())
    assert set(m) == {"R1", "R5", "R10", "mAP", "mINP", "queries", "gallery", "ci"}
    for k in ("R1", "R5", "R10", "mAP", "mINP"):
        assert m[k] == pytest.approx(results["metrics"]["test"][k], abs=1e-6)
    best_row = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()][results["best_epoch"] - 1]
    assert best_row["R1"] == pytest.approx(results["metrics"]["val"]["R1"], abs=1e-6)
    assert "R1" in capsys.readouterr().out


def test_a_checkpoint_for_the_wrong_backbone_is_rejected(tmp_path, toypedes_root):
    run = tmp_path / "run"
    train(_cfg(toypedes_root, "train.epochs=1"), run, progress=False)
    other = build_model(load_config("toypedes", FAST + ["model.lora.rank=2"]).model)
    from upperson.model.checkpoint import load_petl
    with pytest.raises(CheckpointMismatchError, match="shape mismatch"):
        load_petl(other, run / "best")
    rc = main(["evaluate", "--checkpoint", str(run / "best"), "--data-root", str(toypedes_root),
               "--dataset", "toypedes", "--pretrained", str(tmp_path / "missing.safetensors")])
    assert rc == 2  # a clean error line, not a traceback


def test_zero_shot_preset_evaluates_without_training(tmp_path, toypedes_root):
    cfg = load_config("zero-shot", ["model.name=upp-tiny", "model.pretrained=random", "model.image_size=[48, 16]",
                                    "data.dataset=toypedes", f"data.root={toypedes_root}"])
    results = train(cfg, tmp_path / "zs", progress=False)
    assert results["best_epoch"] == -1 and results["parameters"]["trainable"] == 0
    assert 0 <= results["metrics"]["test"]["R1"] <= 100


def test_two_gloo_processes_match_one(tmp_path, toypedes_root):
    common = ["--config", "toypedes", "--data-root", str(toypedes_root), "--no-progress", "--device", "cpu"]
    sets = [x for s in FAST + ["train.epochs=1", "train.eval_every=0"] for x in ("--set", s)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    single = subprocess.run([sys.executable, "-m", "upperson", "train", *common, *sets, "--output", str(tmp_path / "one")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    double = subprocess.run([*torchrun, "-m", "upperson", "train", *common, *sets, "--output", str(tmp_path / "two")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert double.returncode == 0, double.stderr[-3000:]
    # rank 0 says the INFO lines, once; the other ranks only what goes wrong (WARNING and above, "[rank N]")
    assert double.stderr.count("INFO upperson.data.readers: loaded ToyPEDES") == 1, double.stderr[-3000:]
    assert "process 0 of 2" in double.stderr and "process 1 of 2" not in double.stderr
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=2e-5, rtol=1e-4), k
    rows = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1  # written once, by rank 0


def test_early_stopping_ends_after_patience_evaluations_without_improvement(tmp_path, toypedes_root, monkeypatch):
    scripted = [10.0, 20.0, 15.0, 18.0, 30.0, 40.0]  # val R1 of each epoch's evaluation; epoch 5 would improve
    val = load_dataset("toypedes", toypedes_root).split("val")
    real_evaluate = loop.evaluate

    def scripted_val(model, records, *args, **kwargs):
        m = real_evaluate(model, records, *args, **kwargs)
        in_training = [r.path for r in records] == [r.path for r in val] and scripted
        return {**m, "R1": scripted.pop(0)} if in_training else m

    monkeypatch.setattr(loop, "evaluate", scripted_val)
    cfg = _cfg(toypedes_root, "train.epochs=6", "train.early_stop_patience=2")
    results = train(cfg, tmp_path / "run", progress=False)
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]  # best at 2, then 3 and 4 do not improve: stop
    assert results["best_epoch"] == 2
    assert "early stop before epoch 5" in (tmp_path / "run" / "train.log").read_text()

    # a resumed run with more epochs stays stopped: no more training
    train(cfg, tmp_path / "run", resume=True, progress=False)
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 4


def test_evaluations_since_best_counts_only_evaluated_epochs_after_the_best():
    history = [{"epoch": 1, "R1": 5.0}, {"epoch": 2, "R1": 9.0}, {"epoch": 3}, {"epoch": 4, "R1": 7.0}]
    assert loop.evaluations_since_best(history, best_epoch=2) == 1
    assert loop.evaluations_since_best(history, best_epoch=4) == 0
    assert loop.evaluations_since_best([], best_epoch=-1) == 0
