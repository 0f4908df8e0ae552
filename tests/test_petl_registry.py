"""PETL components as registered folders (issue 18): the registry, self-validating configs, LN-tuning,
and a component defined outside the package that trains, saves, loads and merges."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Optional

import pytest
import torch
from torch import nn

from tests.conftest import tiny_batch, tiny_model_config
from upperson.config import ConfigError, ModelConfig, TrainConfig, from_dict, load_config, to_dict
from upperson.losses import sdm_loss
from upperson.model import build_model, component_of

from upperson.model.checkpoint import export_backbone, load_model, save_petl
from upperson.model.params import count_parameters
from upperson.petl import AdapterConfig, LoraConfig, PrefixConfig
from upperson.petl.config import ComponentConfig, require
from upperson.petl.ln_tuning import LNTuningConfig
from upperson.petl.registry import (Component, ComponentRegistryError, components, get_component,
                                    register_component, unregister_component)
from upperson.train.optim import build_optimizer


@pytest.mark.parametrize("make, key", [
    (lambda: AdapterConfig(placement="paralel"), "placement"),
    (lambda: AdapterConfig(ratio=0.0), "ratio"),
    (lambda: PrefixConfig(length=0), "length"),
    (lambda: LoraConfig(rank=0), "rank"),
    (lambda: LoraConfig(depth=-1), "depth"),
])
def test_a_component_config_built_in_python_refuses_a_bad_value(make, key):
    with pytest.raises(ValueError, match=key):
        make()


def test_a_typo_in_the_adapter_placement_does_not_become_sequential():
    with pytest.raises(ValueError, match="placement must be 'parallel' or 'sequential', got 'paralel'"):
        ModelConfig(pretrained="random", adapter=AdapterConfig(placement="paralel"))


def test_a_placement_changed_after_the_config_was_built_is_refused_by_the_model():
    cfg = tiny_model_config()
    cfg.adapter.placement = "paralel"
    with pytest.raises(ValueError, match="placement must be 'parallel' or 'sequential', got 'paralel'"):
        build_model(cfg)


# ----------------------------------------------------------------------------- the registry


def test_the_package_registers_its_components_in_config_order():
    from upperson.petl import components, get_component

    assert [c.name for c in components()][:4] == ["prefix", "lora", "adapter", "ln_tuning"]
    assert get_component("lora").switch(False) == "model.lora.enabled=false"
    with pytest.raises(ComponentRegistryError, match="no PETL component 'nope'.*prefix, lora, adapter"):
        get_component("nope")


def test_component_of_reads_the_markers():
    from upperson.model import component_of

    block = "clip.visual.transformer.resblocks.3"
    assert component_of(f"{block}.prefix.key") == "prefix"
    assert component_of(f"{block}.lora_v.A") == "lora"
    assert component_of(f"{block}.adapter_mlp.up.weight") == "adapter"
    assert component_of(f"{block}.ln_tuning.ln_2.bias") == "ln_tuning"
    assert component_of(f"{block}.ln_2.bias") == "backbone"


@pytest.mark.parametrize("kwargs, fragment", [
    ({"name": "Bad-Name"}, "lower-case"),
    ({"name": "pretrained"}, "taken"),
    ({"name": "other", "markers": ("lora_k",)}, "already belong to 'lora'"),
    ({"name": "prefix"}, "already registered"),
])
def test_a_bad_registration_is_refused(kwargs, fragment):
    spec = dict(name="ok_name", config=ChannelScaleConfig, layers=(ChannelScale,), markers=("channel_scale",),
                attach=_attach_channel_scale)
    spec.update(kwargs)
    with pytest.raises(ComponentRegistryError, match=fragment):
        register_component(Component(**spec))


# ----------------------------------------------------------------------------- LN-tuning


def _ln_only(**ln) -> ModelConfig:
    return tiny_model_config(prefix=PrefixConfig(enabled=False), lora=LoraConfig(enabled=False),
                             adapter=AdapterConfig(enabled=False), ln_tuning=LNTuningConfig(enabled=True, **ln))


def _features(model, n: int = 4):
    """Features of one fixed batch (its own seed)."""
    state = torch.random.get_rng_state()
    torch.manual_seed(1234)
    images, tokens, _ = tiny_batch(n)
    torch.random.set_rng_state(state)
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def _train_step(model) -> None:
    images, tokens, pids = tiny_batch(4)
    opt = build_optimizer(model, TrainConfig(lr=0.05))
    loss = sdm_loss(*model(images, tokens), pids)
    loss.backward()
    opt.step()


def test_ln_tuning_is_off_by_default_and_leaves_configs_and_reports_as_they_were():
    cfg = tiny_model_config()
    assert cfg.ln_tuning == LNTuningConfig() and not cfg.ln_tuning.enabled
    assert "ln_tuning" not in to_dict(cfg)  # files of models without it keep their bytes
    assert "ln_tuning" not in count_parameters(build_model(cfg)).by_component
    on = _ln_only(depth=1)
    assert to_dict(on)["ln_tuning"] == {"enabled": True, "depth": 1}
    assert from_dict(ModelConfig, to_dict(on)) == on
    assert load_config("cuhk-pedes", ["model.ln_tuning.enabled=true"]).model.ln_tuning.enabled


def test_ln_tuning_trains_only_copies_of_the_block_layernorms_and_is_a_noop_at_init():
    torch.manual_seed(0)
    plain = build_model(tiny_model_config(prefix=PrefixConfig(enabled=False), lora=LoraConfig(enabled=False),
                                          adapter=AdapterConfig(enabled=False))).eval()
    torch.manual_seed(0)
    model = build_model(_ln_only()).eval()
    for a, b in zip(_features(plain), _features(model)):
        assert torch.equal(a, b)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    expected = sum(b.ln_1.weight.numel() + b.ln_1.bias.numel() + b.ln_2.weight.numel() + b.ln_2.bias.numel()
                   for b in model.blocks())
    assert all(".ln_tuning." in n for n in trainable) and sum(trainable.values()) == expected
    report = count_parameters(model)
    assert report.by_component["ln_tuning"] == {"trainable": expected, "total": expected}
    assert report.trainable == expected


def test_without_components_turns_every_registered_component_off():
    cfg = tiny_model_config(ln_tuning=LNTuningConfig(enabled=True))
    off = cfg.without_components()
    assert not any(off.section(c.name).enabled for c in components())
    assert off.prefix.length == cfg.prefix.length and cfg.ln_tuning.enabled  # the rest kept, the original alone
    assert count_parameters(build_model(off)).trainable == 0


def test_ln_tuning_trains_saves_loads_and_merges(tmp_path):
    _round_trip(_ln_only(depth=1), tmp_path, "ln_tuning")


def test_the_ln_tuning_ablation_variant_turns_it_on_alone():
    from analysis import ablation

    variant = ablation.get_variants(["ln-tuning"])[0]
    assert get_component("ln_tuning").switch(True) in variant.overrides
    m = load_config("toypedes", list(variant.overrides)).model
    assert m.ln_tuning.enabled and not (m.prefix.enabled or m.lora.enabled or m.adapter.enabled)


# ----------------------------------------------------------------------------- a component from outside the package


@dataclass
class ChannelScaleConfig(ComponentConfig):
    """A per-channel scale of each block's attention output (defined here, outside the package)."""

    enabled: bool = False
    depth: Optional[int] = None
    init: float = 1.0

    def check(self) -> None:
        require(self.init > 0, "init", "> 0", self.init)


class ChannelScale(nn.Module):
    def __init__(self, width: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((width,), float(init)))


def _attach_channel_scale(block, cfg: ChannelScaleConfig) -> None:
    block.channel_scale = ChannelScale(block.width, cfg.init)


def _after_channel_scale(block, site: str, s: torch.Tensor) -> torch.Tensor:
    scale = block.channel_scale
    return s * scale.gamma.to(s.dtype) if site == "attn" and scale is not None else s


def _fold_channel_scale(block) -> None:
    """gamma * (W o + b) = (gamma W) o + gamma b: into a new frozen out-projection."""
    gamma = block.channel_scale.gamma.detach()
    proj = block.attn.out_proj
    proj.weight = nn.Parameter(proj.weight.detach() * gamma[:, None], requires_grad=False)
    proj.bias = nn.Parameter(proj.bias.detach() * gamma, requires_grad=False)
    block.channel_scale = None


@pytest.fixture
def channel_scale():
    component = register_component(Component(
        name="channel_scale", config=ChannelScaleConfig, layers=(ChannelScale,), markers=("channel_scale",),
        attach=_attach_channel_scale, after=_after_channel_scale, fold=_fold_channel_scale))
    yield component
    unregister_component("channel_scale")


def test_an_outside_component_trains_saves_loads_and_merges(channel_scale, tmp_path):
    cfg = tiny_model_config(channel_scale=ChannelScaleConfig(enabled=True, init=0.5))
    assert load_config("toypedes", ["model.channel_scale.enabled=true"]).model.channel_scale.enabled
    with pytest.raises(ConfigError, match="model.channel_scale.init must be > 0"):
        load_config("toypedes", ["model.channel_scale.init=0"])
    _round_trip(cfg, tmp_path, "channel_scale")


def test_an_unregistered_component_in_a_config_is_named(channel_scale):
    cfg = to_dict(tiny_model_config(channel_scale=ChannelScaleConfig(enabled=True)))
    unregister_component("channel_scale")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['channel_scale'\].*registers it"):
        from_dict(ModelConfig, cfg)


def _round_trip(cfg: ModelConfig, tmp_path, name: str) -> None:
    """Train a step, save, load (from petl.json) and merge a model with component ``name``."""
    torch.manual_seed(0)
    model = build_model(cfg)
    backbone = export_backbone(model, tmp_path / "backbone.safetensors", dtype=torch.float32)
    cfg = dataclasses.replace(cfg, pretrained=str(backbone))
    torch.manual_seed(0)
    model = build_model(cfg)
    report = count_parameters(model)
    own = {n: p.detach().clone() for n, p in model.named_parameters() if component_of(n) == name}
    assert own and all(model.get_parameter(n).requires_grad for n in own)
    assert report.by_component[name]["trainable"] == sum(t.numel() for t in own.values())
    before = _features(model.eval())
    _train_step(model.train())
    model.eval()
    assert any(not torch.equal(t, model.get_parameter(n)) for n, t in own.items())
    trained = _features(model)
    assert not torch.equal(before[0], trained[0])  # the component changes the features

    out = save_petl(model, tmp_path / "ckpt")
    assert name in json.loads((out / "petl.json").read_text())["model"]
    again = load_model(out).eval()
    assert dataclasses.replace(again.config, pretrained=None) == dataclasses.replace(model.config, pretrained=None)
    for a, b in zip(trained, _features(again)):
        assert torch.equal(a, b)

    merged = model.merged()
    assert all(getattr(b, m) is None for b in merged.blocks() for m in get_component(name).markers)
    for a, b in zip(trained, _features(merged)):
        assert (a - b).abs().max() <= 1e-5 * max(1.0, float(a.abs().max()))
    for a, b in zip(trained, _features(model)):  # merging leaves the model alone
        assert torch.equal(a, b)


def test_the_zero_shot_counterpart_turns_every_registered_component_off():
    from upperson.embedded import zero_shot_config

    cfg = load_config("toypedes", ["model.ln_tuning.enabled=true"]).model
    zs = zero_shot_config(cfg)
    assert not any(zs.section(c.name).enabled for c in components())
