"""Merged inference and activation checkpointing compute the same function as the plain model."""

from __future__ import annotations

import dataclasses

import open_clip.transformer
import pytest
import torch

from upperson.losses import sdm_loss
from upperson.model import build_model
from upperson.petl import PrefixConfig
from tests.conftest import tiny_batch, tiny_model_config


def _trained_like(cfg) -> torch.nn.Module:
    """A tiny model whose PETL weights are all non-zero (as after training)."""
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.numel() == 1 else 0.0))
    return model


@pytest.mark.parametrize("variant", ["default", "sequential", "vanilla-prefix", "no-prefix"])
def test_merged_features_equal_the_unmerged_ones(variant):
    cfg = tiny_model_config()
    if variant == "sequential":
        cfg = dataclasses.replace(cfg, adapter=dataclasses.replace(cfg.adapter, placement="sequential"))
    elif variant == "vanilla-prefix":
        cfg = dataclasses.replace(cfg, prefix=PrefixConfig(length=3, scaled=False))
    elif variant == "no-prefix":
        cfg = dataclasses.replace(cfg, prefix=PrefixConfig(enabled=False))
    model = _trained_like(cfg).eval()
    merged = model.merged()
    images, tokens, _ = tiny_batch(4)
    with torch.no_grad():
        img, txt = model.encode_image(images), model.encode_text(tokens)
        assert (merged.encode_image(images) - img).abs().max() <= 1e-5 * max(1.0, float(img.abs().max()))
        assert (merged.encode_text(tokens) - txt).abs().max() <= 1e-5 * max(1.0, float(txt.abs().max()))
    # the merged blocks really are merged: no LoRA or prefix modules left, a new K/V weight
    block, source = merged.blocks()[0], model.blocks()[0]
    assert block.merged and block.lora_k is None and block.prefix is None
    assert not torch.equal(block.attn.in_proj_weight, source.attn.in_proj_weight)


def test_merging_leaves_the_training_model_alone_and_cannot_train():
    model = _trained_like(tiny_model_config())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    merged = model.merged()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    assert not any(p.requires_grad for p in merged.parameters())
    with pytest.raises(RuntimeError, match="inference"):
        merged.train()
    assert merged.merged() is merged
    from upperson.model.checkpoint import save_petl

    with pytest.raises(ValueError, match="merged"):
        save_petl(merged, "/nonexistent/never-written")
    # frozen backbone weights are shared, not copied (one backbone in memory)
    assert merged.clip.visual.conv1.weight.data_ptr() == model.clip.visual.conv1.weight.data_ptr()
    # a training step on the model does not reach the merged copy, and vice versa
    images, tokens, pids = tiny_batch(4)
    with torch.no_grad():
        snapshot = merged.encode_image(images)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    sdm_loss(*model(images, tokens), pids).backward()
    opt.step()
    with torch.no_grad():
        assert torch.equal(merged.encode_image(images), snapshot)
        assert not torch.allclose(model.eval().encode_image(images), snapshot, atol=1e-4)


def test_grad_checkpointing_gives_the_same_gradients(monkeypatch):
    model = _trained_like(tiny_model_config())
    images, tokens, pids = tiny_batch(4)
    calls = {"n": 0}
    real = open_clip.transformer.checkpoint

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(open_clip.transformer, "checkpoint", counting)

    def grads(enable: bool) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        model.set_grad_checkpointing(enable)
        model.train()
        sdm_loss(*model(images, tokens), pids).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain = grads(False)
    assert calls["n"] == 0
    checkpointed = grads(True)
    assert model.grad_checkpointing
    assert calls["n"] == len(model.blocks())  # every block of both towers went through checkpoint
    assert plain.keys() == checkpointed.keys()
    kinds = {n.split(".")[-2] for n in plain}
    assert {"prefix", "lora_k", "lora_v", "down", "up"} <= kinds | {n.split(".")[-3] for n in plain}
    for name, g in plain.items():
        assert g.abs().sum() > 0, name
        assert torch.allclose(checkpointed[name], g, rtol=1e-5, atol=1e-7), name


def test_evaluation_and_the_index_encode_with_the_merged_copy(tmp_path, toypedes_root, monkeypatch):
    from PIL import Image

    from upperson.data import build_tokenizer, build_transforms, load_dataset
    from upperson.evaluation import embed_gallery, encode_texts, evaluate
    from upperson.index import ImageIndex
    from upperson.metrics import retrieval_metrics
    from upperson.data import QueryDataset
    from upperson.model.upperson import UPPerson

    model = _trained_like(tiny_model_config()).train()
    merges = {"n": 0}
    real = UPPerson.merged

    def counting(self):
        merges["n"] += 1
        return real(self)

    monkeypatch.setattr(UPPerson, "merged", counting)
    records = load_dataset("toypedes", toypedes_root).split("val")
    tok = build_tokenizer("upp-tiny")
    got = evaluate(model, records, tok, precision="fp32", progress=False)
    assert merges["n"] == 1 and model.training  # the training model keeps its mode
    # reference: the unmerged model's own features
    model.eval()
    gallery = embed_gallery(model, records, precision="fp32", progress=False)
    queries = QueryDataset(records, tok)
    text = encode_texts(model, queries.tokens, precision="fp32")
    expected = retrieval_metrics(text @ gallery.t(), torch.tensor(queries.pids), torch.tensor([r.pid for r in records]))
    assert got == pytest.approx(expected, abs=1e-6)

    paths = []
    for i, r in enumerate(records[:3]):
        paths.append(tmp_path / f"{i}.png")
        Image.open(r.path).convert("RGB").save(paths[-1])
    feats = ImageIndex(model, tmp_path / "cache", progress=False).embed(paths).features
    assert merges["n"] == 2
    pixels = torch.stack([build_transforms(model.image_size, train=False)(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
    assert torch.allclose(feats, ref, atol=1e-5)
