"""Backbones beyond ViT-B/16: the ViT-L/14 preset (the paper's second row) and its 27 x 9 grid."""

from __future__ import annotations

import dataclasses
import json

import open_clip
import pytest
import torch

from upperson.config import load_config
from upperson.losses import sdm_loss
from upperson.model import build_model
from upperson.model.checkpoint import load_model, save_petl
from upperson.model.params import count_parameters


def closed_form_trainable(cfg, spec: dict) -> int:
    """UP-Person's trainable parameters from the configs alone (docs/method.md): per block,
    prefix keys and values (2 p W) and its three scalars, LoRA on K and V (2 x 2 r W) and its two
    scales, and two adapters (2 W b + b + W each, b = round(ratio W)) with one scale each."""
    total = 0
    for width, layers in ((spec["vision_cfg"]["width"], spec["vision_cfg"]["layers"]),
                          (spec["text_cfg"]["width"], spec["text_cfg"]["layers"])):
        b = max(1, round(width * cfg.adapter.ratio))
        per_block = (2 * cfg.prefix.length * width + 3) + (4 * cfg.lora.rank * width + 2) \
            + 2 * (2 * width * b + b + width + 1)
        total += layers * per_block
    return total


def test_vit_l14_preset_builds_at_384x128_with_the_papers_components():
    cfg = dataclasses.replace(load_config("cuhk-pedes-vit-l14").model, pretrained="random")
    model = build_model(cfg)
    report = count_parameters(model)
    assert report.trainable == closed_form_trainable(cfg, open_clip.get_model_config("ViT-L-14"))
    # CLIP's logit_scale is left out: the losses use a fixed temperature
    assert report.total == sum(p.numel() for n, p in model.named_parameters() if n != "clip.logit_scale")
    assert 4.6 < report.percent < 4.8  # 21.2 M of 448.8 M (4.72 %), as measured when the preset was made
    assert tuple(model.clip.visual.grid_size) == (27, 9)  # 384 // 14, 128 // 14


@pytest.fixture
def tiny_l14(tmp_path):
    """ViT-L/14's shape (14-pixel patches, 384 x 128) at tiny widths."""
    spec = open_clip.get_model_config("ViT-L-14")
    spec["embed_dim"] = 32
    spec["vision_cfg"] |= {"width": 64, "layers": 2}
    spec["text_cfg"] |= {"width": 64, "layers": 2, "heads": 2}
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "test-tiny-l14.json").write_text(json.dumps(spec))
    open_clip.add_model_config(folder)
    cfg = load_config("cuhk-pedes-vit-l14").model
    return dataclasses.replace(cfg, name="test-tiny-l14", pretrained="random",
                               prefix=dataclasses.replace(cfg.prefix, length=3),
                               lora=dataclasses.replace(cfg.lora, rank=4))


def test_tiny_l14_trains_a_step_saves_loads_and_merges(tmp_path, tiny_l14):
    model = build_model(tiny_l14)
    assert tuple(model.clip.visual.grid_size) == (27, 9)
    images = torch.randn(4, 3, 384, 128)
    tokens = torch.zeros(4, 77, dtype=torch.long)
    for i in range(4):
        tokens[i, 0], tokens[i, 1:5 + i], tokens[i, 5 + i] = 49406, torch.randint(1, 49000, (4 + i,)), 49407
    pids = torch.tensor([0, 0, 1, 1])
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    loss = sdm_loss(*model(images, tokens), pids)
    loss.backward()
    optimizer.step()
    after = dict(model.named_parameters())
    assert any(not torch.equal(after[n], v) for n, v in trainable.items())
    assert all(torch.equal(after[n], v) for n, v in frozen.items())  # the backbone stays frozen

    model.eval()
    out = save_petl(model, tmp_path / "ckpt")
    again = load_model(out).eval()
    merged = model.merged()
    with torch.no_grad():
        want_i, want_t = model.encode_image(images), model.encode_text(tokens)
        assert torch.equal(again.encode_image(images), want_i) and torch.equal(again.encode_text(tokens), want_t)
        torch.testing.assert_close(merged.encode_image(images), want_i, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(merged.encode_text(tokens), want_t, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name, family", [
    ("ViT-B-16-SigLIP", "SigLIP"), ("EVA02-B-16", "EVA-CLIP"), ("convnext_base", "ConvNeXt"), ("RN50", "ResNet"),
])
def test_non_vit_towers_are_refused_naming_the_family(name, family):
    from upperson.model.backbone import BackboneError

    cfg = dataclasses.replace(load_config("cuhk-pedes").model, name=name, pretrained="random")
    with pytest.raises(BackboneError, match=family):
        build_model(cfg)
