"""TensorBoard event files: read back with TensorBoard's own reader, equal to metrics.jsonl."""

from __future__ import annotations

import json

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from upperson.config import load_config
from upperson.train import train

FAST = ["model.image_size=[48, 16]", "model.prefix.length=2", "model.lora.rank=4", "model.pretrained=random",
        "data.batch_size=16", "data.eval_batch_size=64", "train.warmup_epochs=0", "train.max_steps_per_epoch=3"]


def _events(run):
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return acc


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_events_mirror_metrics_and_survive_a_resume(tmp_path, toypedes_root):
    run = tmp_path / "run"
    cfg = load_config("toypedes", FAST + [f"data.root={toypedes_root}", "train.epochs=2", "train.tensorboard=true"])
    train(cfg, run, progress=False)
    train(load_config("toypedes", FAST + [f"data.root={toypedes_root}", "train.epochs=3", "train.tensorboard=true"]),
          run, resume=True, progress=False)
    acc = _events(run)
    rows = _rows(run)
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/step_time_s", "epoch/loss", "val/R1", "val/mAP"} <= tags
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == list(range(1, 10))  # 3 epochs of 3 steps, once each (the resume appends, no repeats)
    assert [round(e.value, 4) for e in acc.Scalars("val/R1")] == [round(r["R1"], 4) for r in rows]
    assert [round(e.value, 4) for e in acc.Scalars("epoch/loss")] == [round(r["loss"], 4) for r in rows]
    layers = {t for t in tags if t.startswith("prefix_scale/")}
    assert {t.split("/")[1] for t in layers} == {"image", "text"} and len(layers) == 8  # 4 + 4 layers of upp-tiny


def test_no_tensorboard_folder_unless_asked(tmp_path, toypedes_root):
    run = tmp_path / "run"
    train(load_config("toypedes", FAST + [f"data.root={toypedes_root}", "train.epochs=1"]), run, progress=False)
    assert not (run / "tensorboard").exists()
