"""The model against references: the plain open_clip backbone and the explicit S-Prefix formula."""

from __future__ import annotations

import copy
import dataclasses
import math

import open_clip
import pytest
import torch
from torch.nn import functional as F

from upperson.config import ModelConfig
from upperson.model import UPPerson, build_model
from upperson.model.attention import petl_attention
from upperson.model.backbone import create_clip
from upperson.model.params import count_parameters
from upperson.petl import Prefix, PrefixConfig
from upperson.petl import LoRA
from tests.conftest import tiny_model_config


def _tokens(model_name: str, texts: list[str]) -> torch.Tensor:
    return open_clip.get_tokenizer(model_name)(texts)


def _plain_and_upperson(cfg: ModelConfig) -> tuple[torch.nn.Module, UPPerson]:
    clip = create_clip(cfg)
    plain = copy.deepcopy(clip)
    return plain.eval(), UPPerson(clip, cfg).eval()


# ------------------------------------------------------------------ parameter count (docs/method.md)

def test_vit_b16_parameter_count_matches_the_paper():
    cfg = ModelConfig(pretrained=None)  # ViT-B/16 at 384x128 with the paper's defaults
    report = count_parameters(build_model(cfg))
    assert report.by_component["prefix"]["trainable"] == 307_272
    assert report.by_component["lora"]["trainable"] == 1_966_128
    assert report.by_component["adapter"]["trainable"] == 5_146_368 + 48  # adapters + their scalars
    assert report.by_component["backbone"] == {"trainable": 0, "total": 149_617_664}
    assert report.trainable == 7_419_816
    assert report.total == 157_037_480
    assert round(report.percent, 2) == 4.72


def test_component_switches_change_the_count(tiny_cfg):
    full = count_parameters(build_model(tiny_cfg))
    no_lora = count_parameters(build_model(dataclasses.replace(tiny_cfg, lora=dataclasses.replace(tiny_cfg.lora, enabled=False))))
    assert no_lora.by_component["lora"]["total"] == 0
    assert full.trainable - no_lora.trainable == full.by_component["lora"]["trainable"]
    # LoRA on K and V: per block 2 * (r*d + d*r) + 2 scales; towers 128 (image) and 128 (text), 4 blocks each
    r = tiny_cfg.lora.rank
    assert full.by_component["lora"]["trainable"] == 4 * (2 * (2 * r * 128) + 2) + 4 * (2 * (2 * r * 128) + 2)
    shallow = count_parameters(build_model(dataclasses.replace(tiny_cfg, prefix=dataclasses.replace(tiny_cfg.prefix, depth=2))))
    assert shallow.by_component["prefix"]["trainable"] * 2 == full.by_component["prefix"]["trainable"]


# ------------------------------------------------------------------ no-op at init (docs/method.md)

@pytest.mark.parametrize("name, size", [("upp-tiny", (48, 16)), ("ViT-B-16", (384, 128))])
@pytest.mark.parametrize("placement", ["parallel", "sequential"])
def test_lora_and_adapters_are_noops_at_init(name, size, placement):
    base = tiny_model_config(name=name, image_size=size)
    cfg = dataclasses.replace(
        base,
        prefix=dataclasses.replace(base.prefix, enabled=False),
        adapter=dataclasses.replace(base.adapter, placement=placement),
    )
    plain, model = _plain_and_upperson(cfg)
    images = torch.randn(2, 3, *size)
    tokens = _tokens(name, ["a woman in a red coat with a black backpack", "a man in blue jeans"])
    with torch.no_grad():
        assert (model.encode_image(images) - plain.encode_image(images)).abs().max() < 1e-5
        assert (model.encode_text(tokens) - plain.encode_text(tokens)).abs().max() < 1e-5


def test_trained_components_do_change_the_features(tiny_cfg):
    plain, model = _plain_and_upperson(dataclasses.replace(tiny_cfg, prefix=dataclasses.replace(tiny_cfg.prefix, enabled=False)))
    with torch.no_grad():
        for b in model.blocks():
            b.lora_v.B.normal_()
            b.adapter_mlp.up.weight.normal_()
    images = torch.randn(2, 3, 48, 16)
    with torch.no_grad():
        assert (model.encode_image(images) - plain.encode_image(images)).abs().max() > 1e-3


# ------------------------------------------------------------------ S-Prefix (docs/method.md)

class _Attn(torch.nn.Module):
    """The attributes petl_attention reads from a frozen nn.MultiheadAttention."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.in_proj_weight = torch.nn.Parameter(torch.randn(3 * d, d) / math.sqrt(d))
        self.in_proj_bias = torch.nn.Parameter(torch.randn(3 * d) * 0.1)
        self.out_proj = torch.nn.Linear(d, d)


def _reference_s_prefix(x, attn, prefix, lam, mask=None, lora_k=None, lora_v=None):
    """out = A_tok V_tok + lambda * A_pre Pv, written out head by head."""
    d = x.shape[-1]
    heads = attn.num_heads
    hd = d // heads
    wq, wk, wv = attn.in_proj_weight.chunk(3)
    bq, bk, bv = attn.in_proj_bias.chunk(3)
    q, k, v = x @ wq.t() + bq, x @ wk.t() + bk, x @ wv.t() + bv
    if lora_k is not None:
        k = k + lora_k.scale * (x @ lora_k.A.t() @ lora_k.B.t())
        v = v + lora_v.scale * (x @ lora_v.A.t() @ lora_v.B.t())
    pk, pv = prefix.key * prefix.key_scale, prefix.value * prefix.value_scale
    outs = []
    for h in range(heads):
        sl = slice(h * hd, (h + 1) * hd)
        s_tok = q[..., sl] @ k[..., sl].transpose(-1, -2) / math.sqrt(hd)
        if mask is not None:
            s_tok = s_tok + mask
        s_pre = q[..., sl] @ pk[:, sl].t() / math.sqrt(hd)
        a = torch.cat([s_tok, s_pre], dim=-1).softmax(-1)  # tokens first: order must not matter
        a_tok, a_pre = a[..., : x.shape[1]], a[..., x.shape[1]:]
        outs.append(a_tok @ v[..., sl] + lam * (a_pre @ pv[:, sl]))
    return attn.out_proj(torch.cat(outs, dim=-1))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("explicit", [False, True])
def test_s_prefix_fused_equals_the_explicit_formula_with_gradients(causal, explicit):
    torch.manual_seed(1)
    d, heads, n = 32, 4, 7
    attn = _Attn(d, heads)
    prefix = Prefix(d, PrefixConfig(length=5, scaled=True, scale_init=10.0))
    with torch.no_grad():
        prefix.key.normal_()  # away from the tiny init so every term matters
        prefix.value.normal_()
    lora_k, lora_v = LoRA(d, d, 3), LoRA(d, d, 3)
    with torch.no_grad():
        lora_k.B.normal_(), lora_v.B.normal_()
    x = torch.randn(2, n, d)
    mask = torch.full((n, n), float("-inf")).triu(1) if causal else None

    out, _ = petl_attention(x, attn, prefix=prefix, lora_k=lora_k, lora_v=lora_v, attn_mask=mask, explicit=explicit)
    ref = _reference_s_prefix(x, attn, prefix, prefix.lam, mask, lora_k, lora_v)
    assert (out - ref).abs().max() < 1e-4

    params = [prefix.key, prefix.value, prefix.lam, lora_k.B, lora_v.A]
    g_out = torch.autograd.grad(out.square().sum(), params)
    g_ref = torch.autograd.grad(ref.square().sum(), params)
    for a, b in zip(g_out, g_ref):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4)
    assert g_out[2].abs() > 0  # lambda really learns


def test_vanilla_prefix_is_ordinary_attention_over_concatenated_keys():
    torch.manual_seed(2)
    d, heads, n, p = 32, 4, 6, 3
    attn = _Attn(d, heads)
    prefix = Prefix(d, PrefixConfig(length=p, scaled=False))
    with torch.no_grad():
        prefix.key.normal_(), prefix.value.normal_()
    x = torch.randn(2, n, d)
    out, _ = petl_attention(x, attn, prefix=prefix)

    # reference: torch's own multi-head attention with the prefix appended to K and V
    wq, wk, wv = attn.in_proj_weight.chunk(3)
    bq, bk, bv = attn.in_proj_bias.chunk(3)
    k = torch.cat([x @ wk.t() + bk, prefix.keys().expand(2, -1, -1)], dim=1)
    v = torch.cat([x @ wv.t() + bv, prefix.values().expand(2, -1, -1)], dim=1)
    q = x @ wq.t() + bq
    split = lambda t: t.view(2, -1, heads, d // heads).transpose(1, 2)
    ref = F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(2, n, d)
    ref = attn.out_proj(ref)
    assert (out - ref).abs().max() < 1e-5
    assert not any(p is prefix.lam for p in prefix.parameters())  # lambda is fixed at 1


def test_fused_and_explicit_paths_agree_for_the_whole_model(tiny_cfg):
    model = build_model(tiny_cfg).eval()
    with torch.no_grad():
        for b in model.blocks():
            b.prefix.key.normal_(), b.prefix.value.normal_()
    images, tokens = torch.randn(2, 3, 48, 16), _tokens("upp-tiny", ["a man", "a woman with a red bag"])
    with torch.no_grad():
        fused = (model.encode_image(images), model.encode_text(tokens))
        model.set_explicit_attention(True)
        explicit = (model.encode_image(images), model.encode_text(tokens))
    assert (fused[0] - explicit[0]).abs().max() < 1e-4
    assert (fused[1] - explicit[1]).abs().max() < 1e-4


def test_text_queries_see_every_prefix_key_but_no_later_token(tiny_cfg):
    model = build_model(tiny_cfg).eval()
    tokens = _tokens("upp-tiny", ["a man in a red coat"])
    with torch.no_grad(), model.record_attention() as rec:
        model.encode_text(tokens)
    probs = rec.tower("text")[0].probs  # (1, heads, L, P + L)
    p = tiny_cfg.prefix.length
    L = probs.shape[-2]
    assert (probs[..., :p] > 0).all()  # the first token too
    tok = probs[..., p:]
    assert torch.all(tok.triu(1) == 0)  # causal among the text tokens
    assert torch.allclose(probs.sum(-1), torch.ones(1, probs.shape[1], L))


# ------------------------------------------------------------------ text padding trim

def test_padding_trim_gives_the_untrimmed_features(tiny_cfg):
    model = build_model(tiny_cfg).eval()
    tokens = _tokens("upp-tiny", ["a short one", "a much longer description of a man wearing a checked shirt"])
    with torch.no_grad():
        trimmed = model.encode_text(tokens)
        model.trim_text = False
        full = model.encode_text(tokens)
    assert (trimmed - full).abs().max() < 1e-5


def test_tokens_after_end_change_nothing(tiny_cfg):
    model = build_model(tiny_cfg).eval()
    model.trim_text = False  # so that the tokens after <end> really go through the tower
    tokens = _tokens("upp-tiny", ["a woman with a yellow umbrella"])
    eot = int(tokens.argmax(-1))
    noisy = tokens.clone()
    noisy[0, eot + 1:] = torch.randint(1, 40000, (tokens.shape[1] - eot - 1,))
    with torch.no_grad():
        assert (model.encode_text(tokens) - model.encode_text(noisy)).abs().max() < 1e-5


# ------------------------------------------------------------------ frozen backbone

@pytest.mark.parametrize("placement", ["parallel", "sequential"])
def test_only_petl_parameters_train(tiny_cfg, placement):
    cfg = dataclasses.replace(tiny_cfg, adapter=dataclasses.replace(tiny_cfg.adapter, placement=placement))
    model = build_model(cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    images, tokens = torch.randn(4, 3, 48, 16), _tokens("upp-tiny", ["a", "b c", "d e f", "g"])
    for _ in range(2):  # two steps, so that zero-initialised B/W_up let everything get gradients
        f, g = model(images, tokens)
        loss = (f @ g.t()).diag().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, n
        if p.requires_grad:
            assert p.grad.abs().sum() > 0, f"{n} got no gradient"
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, before[n]), f"frozen {n} changed"
    assert len(before) > 0


def test_full_finetune_trains_the_backbone(tiny_cfg):
    model = build_model(dataclasses.replace(tiny_cfg, freeze_backbone=False))
    report = count_parameters(model)
    assert report.by_component["backbone"]["trainable"] == report.by_component["backbone"]["total"] > 0
