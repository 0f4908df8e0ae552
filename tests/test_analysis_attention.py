"""The attention maps of ``analysis`` are the model's real attention, with lambda accounted for."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from analysis.attention import PrefixAttention, compute_prefix_attention, parse_indices, prefix_scales
from demo.heatmap import prefix_attention_map
from tests.conftest import tiny_model_config
from upperson.data import build_tokenizer
from upperson.model import build_model
from upperson.petl import PrefixConfig

CAPTION = "a woman in a red coat and blue jeans carrying a black bag"


@pytest.fixture(scope="module")
def model():
    """A tiny model whose prefix matters: larger prefix keys/values, a different lambda per layer,
    non-zero LoRA and adapter weights (so the hand computation has to include them)."""
    torch.manual_seed(1)
    m = build_model(tiny_model_config()).eval()
    with torch.no_grad():
        for tower in ("image", "text"):
            for i, b in enumerate(m.blocks(tower)):
                b.prefix.key.normal_(0, 1.0)
                b.prefix.value.normal_(0, 0.5)
                b.prefix.lam.fill_(2.0 + 3.0 * i + (0.5 if tower == "text" else 0.0))
                for lora in (b.lora_k, b.lora_v):
                    for p in lora.parameters():
                        if p.ndim == 2:
                            p.normal_(0, 0.05)
                for ad in (b.adapter_attn, b.adapter_mlp):
                    for p in ad.parameters():
                        if p.ndim == 2:
                            p.normal_(0, 0.05)
    return m


@pytest.fixture(scope="module")
def tokenizer(model):
    return build_tokenizer(model.config.name)


@pytest.fixture(scope="module")
def inputs(model, tokenizer):
    torch.manual_seed(2)
    pixels = torch.randn(3, *model.image_size)
    return pixels, tokenizer(CAPTION)[0]


def _capture_block_io(block):
    """Record a block's input (and mask) and its attention sub-layer's output."""
    seen = {}

    def pre_hook(module, args, kwargs):
        seen["x"] = args[0].detach().clone()
        seen["mask"] = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)

    orig = block._attention

    def attention(h, attn_mask):
        out = orig(h, attn_mask)
        seen["attn_out"] = out.detach().clone()
        return out

    handle = block.register_forward_pre_hook(pre_hook, with_kwargs=True)
    block._attention = attention
    return seen, lambda: (handle.remove(), delattr(block, "_attention"))


def _by_hand(block, x, mask):
    """softmax(q [Pk; K]^T / sqrt(d)) from the block's frozen weights, LoRA, LN1 and adapter."""
    assert block.adapter_placement == "parallel"
    h = block.ln_1(x) + block.adapter_attn(x)
    attn = block.attn
    heads = attn.num_heads
    q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    k = k + block.lora_k(h)
    v = v + block.lora_v(h)
    b, n, d = q.shape
    hd = d // heads

    def split(t):
        return t.reshape(t.shape[0], t.shape[1], heads, hd).permute(0, 2, 1, 3)

    pk = block.prefix.key * block.prefix.key_scale
    pv = block.prefix.value * block.prefix.value_scale
    P = pk.shape[0]
    keys = torch.cat([split(pk.unsqueeze(0)).expand(b, -1, -1, -1), split(k)], dim=2)
    scores = split(q) @ keys.transpose(-1, -2) / math.sqrt(hd)
    if mask is not None:
        full = torch.zeros(n, P + n)
        full[:, P:] = mask[:n, :n]
        scores = scores + full
    probs = scores.softmax(-1)
    lam = float(block.prefix.lam)
    # S-Prefix output: tokens with weight (1 - m), prefix with weight lambda * m
    out = probs[..., P:] @ split(v) + lam * (probs[..., :P] @ split(pv.unsqueeze(0)).expand(b, -1, -1, -1))
    out = out.permute(0, 2, 1, 3).reshape(b, n, d)
    out = F.linear(out, attn.out_proj.weight, attn.out_proj.bias)
    return probs, probs[..., :P].sum(-1), out


@torch.no_grad()
@pytest.mark.parametrize("tower,layer", [("image", 0), ("image", 2), ("text", 0), ("text", 1)])
def test_prefix_mass_equals_explicit_attention(model, tokenizer, inputs, tower, layer):
    pixels, tokens = inputs
    block = model.blocks(tower)[layer]
    seen, undo = _capture_block_io(block)
    try:
        att = compute_prefix_attention(model, pixels, tokens, tokenizer, CAPTION)
    finally:
        undo()
    probs, mass, out = _by_hand(block, seen["x"], seen["mask"] if tower == "text" else None)
    assert (seen["mask"] is not None) == (tower == "text")  # the text tower is causal
    got = att.image_mass[layer] if tower == "image" else att.text_mass[layer]  # (heads, positions)
    want = mass[0].numpy()[:, : got.shape[1]]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
    assert got.std() > 1e-3  # the maps are not flat: this comparison can fail
    # the recorded weights, with lambda on the prefix, reproduce the block's real attention output
    np.testing.assert_allclose(seen["attn_out"].numpy(), out.numpy(), atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_mass_sums_and_lambda_accounting(model, tokenizer, inputs):
    pixels, tokens = inputs
    with model.record_attention() as rec:
        model.encode_image(pixels.unsqueeze(0))
        model.encode_text(tokens.unsqueeze(0))
    att = compute_prefix_attention(model, pixels, tokens, tokenizer, CAPTION)
    lams = prefix_scales(model)
    assert lams["image"] == [2.0, 5.0, 8.0, 11.0]
    assert lams["text"] == [2.5, 5.5, 8.5, 11.5]
    assert att.scales == lams
    for tower in ("image", "text"):
        for i, r in enumerate(rec.tower(tower)):
            L = att.image_mass.shape[-1] if tower == "image" else att.text_mass.shape[-1]
            probs = r.probs[0][:, :L].numpy().astype(np.float64)  # (heads, L, P + L)
            m = probs[..., : r.prefix_len].sum(-1)
            tok = probs[..., r.prefix_len:].sum(-1)
            np.testing.assert_allclose(m + tok, 1.0, atol=1e-5)  # before lambda, a row sums to 1
            lam = lams[tower][i]
            assert r.prefix_scale == pytest.approx(lam)
            mass = (att.image_mass if tower == "image" else att.text_mass)[i]
            np.testing.assert_allclose(mass, m, atol=1e-5)
            # effective row weight (1 - m) + lambda m; the prefix's part of it is lambda m
            eff = att.values(tower, "effective", layers=[i])[0]
            share = att.values(tower, "share", layers=[i])[0]
            np.testing.assert_allclose(eff, (lam * m).mean(0), atol=1e-5)
            row_weight = (1 - m) + lam * m
            np.testing.assert_allclose(share, (lam * m / row_weight).mean(0), atol=1e-5)
            assert (row_weight > 1).all()  # lambda > 1: S-Prefix rows weigh more than 1


def test_values_select_heads_and_layers(model, tokenizer, inputs):
    att = compute_prefix_attention(model, *inputs, tokenizer, CAPTION)
    assert isinstance(att, PrefixAttention)
    assert att.grid == tuple(model.clip.visual.grid_size)
    assert att.patch_maps().shape == (4, *att.grid)
    np.testing.assert_allclose(att.values("image", heads=[1])[2], att.image_mass[2, 1])
    np.testing.assert_allclose(att.values("image", layers=[3, 0]), att.image_mass[[3, 0]].mean(1))
    assert att.token_labels[0] == "<start>" and att.token_labels[-1] == "<end>"
    assert att.text_mass.shape[-1] == len(att.token_labels) == len(CAPTION.split()) + 2
    with pytest.raises(ValueError, match="heads"):
        att.values("image", heads=[7])
    assert parse_indices("0,2-3,-1", 4, "layers") == [0, 2, 3, 3]
    assert parse_indices("all", 4, "layers") is None
    with pytest.raises(ValueError, match="out of range"):
        parse_indices("4", 4, "layers")


def test_no_prefix_is_a_clear_error(tokenizer, inputs):
    from upperson.embedded import zero_shot_config

    zs = build_model(zero_shot_config(tiny_model_config())).eval()
    with pytest.raises(ValueError, match="no prefix"):
        compute_prefix_attention(zs, *inputs, tokenizer)


@pytest.mark.parametrize("depth", [None, 2])
def test_the_demo_heatmap_is_the_analysis_effective_map(model, inputs, tokenizer, depth):
    """One computation (upperson.prefix_attention): the demo's map is the mean (or last) over the
    prefixed layers of the analysis' lambda * m, averaged over heads; layers without a prefix left out."""
    m = model
    if depth is not None:
        torch.manual_seed(3)
        m = build_model(tiny_model_config(prefix=PrefixConfig(length=3, depth=depth))).eval()
        with torch.no_grad():
            for b in m.blocks("image")[:depth]:
                b.prefix.key.normal_(0, 1.0)
                b.prefix.lam.fill_(4.0)
    pixels, tokens = inputs
    att = compute_prefix_attention(m, pixels, tokens, tokenizer, CAPTION)
    prefixed = [i for i, lam in enumerate(att.scales["image"]) if math.isfinite(lam)]
    assert len(prefixed) == (depth or len(m.blocks("image")))
    eff = att.patch_maps("effective", layers=prefixed)  # (prefixed layers, gh, gw), computed in float64
    for layers, ref in (("mean", eff.mean(0)), ("last", eff[-1])):
        heat = prefix_attention_map(m, pixels, layers)
        assert heat.dtype == np.float32 and heat.shape == att.grid
        np.testing.assert_allclose(heat, ref, rtol=1e-5, atol=1e-7)


def test_no_prefix_no_heatmap(inputs):
    m = build_model(tiny_model_config(prefix=PrefixConfig(enabled=False))).eval()
    assert prefix_attention_map(m, inputs[0]) is None
