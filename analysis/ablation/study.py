"""The ablation's study: the variants as data (config overrides on a base preset), in table order."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional, Sequence

from upperson.config import ExperimentConfig, load_config
from upperson.petl.registry import get_component

# the switches come from the component registry ("model.prefix.enabled=false", ...)
PREFIX_OFF, LORA_OFF, ADAPTER_OFF = (get_component(name).switch(False) for name in ("prefix", "lora", "adapter"))
#: UP-Person's three components off: where the baselines start (the others are off by default)
ALL_OFF = (PREFIX_OFF, LORA_OFF, ADAPTER_OFF)


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: config overrides applied on top of the base preset."""

    name: str
    overrides: tuple[str, ...]
    label: str
    group: str  # baseline | single | pair | full | design
    description: str
    train: bool = True
    compare_to: Optional[str] = None


#: The study, in table order. Change the study here, not in code.
VARIANTS: tuple[Variant, ...] = (
    Variant("zero-shot", ALL_OFF + ("train.epochs=0",), "Zero-shot", "baseline",
            "frozen backbone, no component, no training", train=False),
    Variant("prefix-only", (LORA_OFF, ADAPTER_OFF), "Prefix", "single", "S-Prefix alone"),
    Variant("lora-only", (PREFIX_OFF, ADAPTER_OFF), "LoRA", "single", "LoRA on K and V alone"),
    Variant("adapter-only", (PREFIX_OFF, LORA_OFF), "Adapter", "single", "L-Adapter alone"),
    Variant("prefix+lora", (ADAPTER_OFF,), "Prefix+LoRA", "pair", "S-Prefix and LoRA"),
    Variant("prefix+adapter", (LORA_OFF,), "Prefix+Adapter", "pair", "S-Prefix and L-Adapter"),
    Variant("lora+adapter", (PREFIX_OFF,), "LoRA+Adapter", "pair", "LoRA and L-Adapter"),
    Variant("upperson", (), "UP-Person", "full", "S-Prefix + LoRA + L-Adapter (all three)"),
    Variant("vanilla-prefix", ("model.prefix.scaled=false",), "UP-Person, vanilla prefix", "design",
            "UP-Person with a vanilla prefix (lambda fixed at 1) instead of S-Prefix", compare_to="upperson"),
    Variant("sequential-adapter", ("model.adapter.placement=sequential",), "UP-Person, sequential adapter", "design",
            "UP-Person with sequential (Houlsby-style) adapters instead of L-Adapter", compare_to="upperson"),
    Variant("full-finetune", ALL_OFF + ("model.freeze_backbone=false", "train.backbone_lr=1.0e-4", "train.eps=1.0e-6"), "Full fine-tune",
            "baseline", "every backbone weight trains (lr 1e-4, eps 1e-6, as preset toypedes-full-finetune), no component"),
    Variant("ln-tuning", ALL_OFF + ("model.ln_tuning.enabled=true",), "LN-tuning", "baseline",
            "only the blocks' LayerNorm affine parameters train (upperson/petl/ln_tuning), no other component"),
)
VARIANT_NAMES = tuple(v.name for v in VARIANTS)


def get_variants(names: Optional[Sequence[str]] = None) -> list[Variant]:
    """The variants named (all by default), in table order; unknown names are an error."""
    if not names:
        return list(VARIANTS)
    unknown = [n for n in names if n not in VARIANT_NAMES]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {', '.join(VARIANT_NAMES)}")
    return [v for v in VARIANTS if v.name in set(names)]


def variant_config(variant: Variant, base: str = "toypedes", *, overrides: Sequence[str] = (),
                   epochs: Optional[int] = None, data_root: Optional[str] = None,
                   dataset: Optional[str] = None, seed: Optional[int] = None) -> ExperimentConfig:
    """The base preset with the user's overrides, then the variant's (the variant wins)."""
    items = list(overrides)
    if epochs is not None and variant.train:
        items.append(f"train.epochs={int(epochs)}")
    if seed is not None:
        items.append(f"train.seed={int(seed)}")
    items += list(variant.overrides)
    if data_root is not None:
        items.append(f"data.root={json.dumps(str(data_root))}")
    if dataset is not None:
        items.append(f"data.dataset={dataset}")
    return load_config(base, items)
