"""The GPU precision paths, run on CPU: bf16 autocast with a half frozen backbone, fp16 with the grad scaler.

Tolerances: features are compared by relative L2 error against the fp32 features of the
same weights. One rounding to bf16 costs up to 2^-8 = 0.4 % relative (fp16: 2^-11 = 0.05 %);
the tiny towers round at about a dozen stages (input, Q/K/V, attention, output, MLP, two
blocks, projection), and errors of independent roundings add roughly in quadrature, so 5 %
(bf16) and 1 % (fp16) are about 10x the expected error and far below the distance between
unrelated features (about 140 % relative for random unit vectors).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from upperson.config import load_config
from upperson.losses import sdm_loss
from upperson.model import build_model
from upperson.runtime import autocast, grad_scaler, mixed_precision
from upperson.train import train
from upperson.train.loop import _cast_frozen_to_half
from tests.conftest import tiny_batch, tiny_model_config

TOLERANCE = {"bf16": 0.05, "fp16": 0.01}
STEPS = {"bf16": 4, "fp16": 12}


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_cpu_stays_fp32_unless_asked():
    cpu = torch.device("cpu")
    assert mixed_precision(cpu, "bf16") == "fp32" and mixed_precision(cpu, "bf16", amp_on_cpu=True) == "bf16"
    with autocast(cpu, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with autocast(cpu, "bf16", cpu=True):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert grad_scaler(cpu, "fp16").is_enabled() and not grad_scaler(cpu, "bf16").is_enabled()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_steps_on_cpu(precision):
    cpu = torch.device("cpu")
    model = build_model(tiny_model_config())
    with torch.no_grad():  # PETL weights as after some training, so that every path matters
        for p in model.parameters():
            if p.requires_grad and p.numel() > 1:
                p.normal_(0, 0.05)
    reference = build_model(tiny_model_config())
    reference.load_state_dict(model.state_dict())
    _cast_frozen_to_half(model, precision)
    petl = {n: p for n, p in model.named_parameters() if p.requires_grad}
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert petl and all(p.dtype == torch.float32 for p in petl.values())
    assert all(p.dtype == (torch.bfloat16 if precision == "bf16" else torch.float16) for p in frozen)

    images, tokens, pids = tiny_batch(6)
    model.eval(), reference.eval()
    with torch.no_grad(), autocast(cpu, precision, cpu=True):
        img, txt = model.encode_image(images), model.encode_text(tokens)
    with torch.no_grad():
        img32, txt32 = reference.encode_image(images), reference.encode_text(tokens)
    assert _relative_error(img, img32) < TOLERANCE[precision]
    assert _relative_error(txt, txt32) < TOLERANCE[precision]

    opt = torch.optim.Adam(list(petl.values()), lr=1e-2, eps=1e-3)
    scaler = grad_scaler(cpu, precision)
    assert scaler.is_enabled() == (precision == "fp16")
    model.train()
    losses, finite = [], []
    for _ in range(STEPS[precision]):
        with autocast(cpu, precision, cpu=True):
            f, g = model(images, tokens)
        loss = sdm_loss(f.float(), g.float(), pids)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        grads = [p.grad for p in petl.values() if p.grad is not None]
        assert len(grads) == len(petl) and all(gr.dtype == torch.float32 for gr in grads)
        finite.append(all(bool(torch.isfinite(gr).all()) for gr in grads))
        scale = scaler.get_scale()
        scaler.step(opt)  # skipped when the scaled gradients overflowed
        scaler.update()
        assert finite[-1] or scaler.get_scale() < scale  # an overflow lowers the scale
        losses.append(float(loss.detach()))
    # the scaler starts at 2^16, which overflows fp16 here; it backs off until gradients are finite
    assert all(finite[-3:]) and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[finite.index(True)]
    assert all(p.dtype == torch.float32 for p in petl.values())  # PETL weights stay fp32
    assert all(p.dtype != torch.float32 for p in frozen)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_training_loop_runs_the_gpu_precision_path_on_cpu(tmp_path, toypedes_root, precision, monkeypatch):
    import upperson.train.loop as loop

    calls = []  # checkpointing on CPU fixes glibc's mmap threshold: process-wide, so not in the test process
    monkeypatch.setattr(loop, "return_freed_memory_to_os", lambda: calls.append(1) or True)
    cfg = load_config("toypedes", [
        f"data.root={toypedes_root}", "model.image_size=[48, 16]", "model.prefix.length=2", "model.lora.rank=4",
        "data.batch_size=16", "data.eval_batch_size=64", "train.warmup_epochs=0", "train.epochs=1",
        "train.max_steps_per_epoch=3", f"train.precision={precision}", "train.amp_on_cpu=true",
        "train.grad_checkpointing=true",
    ])
    results = train(cfg, tmp_path / "run", progress=False)
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["loss"] == row["loss"] and abs(row["loss"]) < 1e3  # finite
    assert 0.0 <= results["metrics"]["test"]["R1"] <= 100.0
    weights = load_file(str(tmp_path / "run" / "best" / "petl.safetensors"))
    assert weights and all(t.dtype == torch.float32 for t in weights.values())
    assert calls == [1]
