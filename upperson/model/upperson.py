"""UP-Person: a frozen open_clip CLIP with the registered PETL components (Prefix, LoRA, Adapter, ...) in its blocks."""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Iterator, Optional

import torch
from torch import nn
from torch.nn import functional as F

from open_clip.transformer import text_global_pool

from upperson.config import ModelConfig
from upperson.model.attention import AttentionProbs
from upperson.model.backbone import backbone_fingerprint, create_clip
from upperson.model.block import UPPersonBlock
from upperson.petl import components
from upperson.petl.registry import component_of

log = logging.getLogger(__name__)

TOWERS = ("image", "text")


class AttentionRecording:
    """Attention probabilities collected while recording, keyed by (tower, layer)."""

    def __init__(self) -> None:
        self.layers: dict[tuple[str, int], AttentionProbs] = {}

    def __call__(self, tower: str, index: int, probs: AttentionProbs) -> None:
        self.layers[(tower, index)] = probs

    def tower(self, name: str) -> list[AttentionProbs]:
        """The records of one tower, in layer order."""
        return [self.layers[k] for k in sorted(k for k in self.layers if k[0] == name)]


class UPPerson(nn.Module):
    """Text-based person retrieval on a frozen CLIP with UP-Person's PETL components.

    ``encode_image`` and ``encode_text`` return CLIP features, not normalised;
    ``forward(images, tokens)`` returns both, L2-normalised, for the retrieval losses.
    """

    def __init__(self, clip: nn.Module, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.clip = clip
        # computed before any cast, so half-precision copies keep the same identity
        self.backbone_fingerprint = backbone_fingerprint(clip.state_dict())
        self.trim_text = True
        self.is_merged = False  # True for the inference-only copy that merged() returns
        self._wrap_blocks()
        self._set_trainable()

    # ------------------------------------------------------------------ construction
    def _towers(self) -> dict[str, nn.Module]:
        return {"image": self.clip.visual.transformer, "text": self.clip.transformer}

    def _wrap_blocks(self) -> None:
        """Each block becomes an ``UPPersonBlock`` with every registered component its config applies to."""
        cfg = self.config
        for component in components():  # a field may have been changed since the config was built
            cfg.section(component.name).validate()
        for tower, transformer in self._towers().items():
            blocks = transformer.resblocks
            for i, block in enumerate(blocks):
                wrapped = UPPersonBlock(block, tower=tower, index=i, batch_first=getattr(transformer, "batch_first", True))
                for component in components():
                    section = cfg.section(component.name)
                    if section.applies_to(i):
                        wrapped.add_component(component, section)
                blocks[i] = wrapped

    def _set_trainable(self) -> None:
        for name, p in self.named_parameters():
            if name.split(".")[-1] in ("logit_scale", "logit_bias"):
                p.requires_grad_(False)  # unused: the losses have a fixed temperature
            elif self.config.freeze_backbone:
                p.requires_grad_(component_of(name) != "backbone")
            else:
                p.requires_grad_(True)

    # ------------------------------------------------------------------ runtime modes
    def train(self, mode: bool = True) -> "UPPerson":
        """As ``nn.Module.train``; a merged copy refuses training mode (it is for inference only)."""
        if mode and self.is_merged:
            raise RuntimeError("this is a merged, inference-only copy of a model (model.merged()); "
                               "train the original model instead")
        return super().train(mode)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them.

        Uses open_clip's own switch: its transformers then call every block (ours, with its
        prefix, LoRA and adapters) through ``torch.utils.checkpoint`` (non-reentrant, so the
        PETL parameters get their gradients although the frozen input needs none).
        """
        if enable and self.is_merged:
            raise RuntimeError("a merged model is for inference only: no gradient checkpointing")
        for transformer in self._towers().values():
            transformer.grad_checkpointing = bool(enable)

    @property
    def grad_checkpointing(self) -> bool:
        """Whether both towers recompute block activations in the backward pass."""
        return all(getattr(t, "grad_checkpointing", False) for t in self._towers().values())

    def merged(self) -> "UPPerson":
        """An inference-only copy in which each component is folded as its registry entry says
        (``Component.fold``): LoRA into the K/V in-projection, the prefix precomputed, and so on.

        Per block, ``W_k + s_k B_k A_k`` and ``W_v + s_v B_v A_v`` become a new frozen
        in-projection weight, and the prefix keys ``key_scale * key`` and values
        ``lambda * value_scale * value`` are computed once (docs/method.md); each adapter keeps
        its non-linearity, with its output scale folded into the up-projection. Features equal
        this model's up to float rounding.

        The copy shares this model's frozen weight tensors (no second backbone in memory),
        copies everything else, has no trainable parameter and refuses ``train()``. This
        model is not changed: training never sees the merged weights. A merged model's
        ``merged()`` is itself.
        """
        if self.is_merged:
            return self
        memo: dict[int, object] = {}
        for p in self.parameters():
            if not p.requires_grad:  # frozen: share the storage, not the Parameter (nor its flag)
                memo[id(p)] = nn.Parameter(p.detach(), requires_grad=False)
        for b in self.blocks():
            memo[id(b.recorder)] = None
        out = copy.deepcopy(self, memo)
        for b in out.blocks():
            b.merge_()
            b.explicit_attention = False
        for p in out.parameters():
            p.requires_grad_(False)
        out.set_grad_checkpointing(False)
        out.is_merged = True
        return out.eval()

    # ------------------------------------------------------------------ introspection
    def blocks(self, tower: Optional[str] = None) -> list[UPPersonBlock]:
        """The UP-Person blocks of one tower (or both, image first)."""
        towers = [tower] if tower else list(TOWERS)
        return [b for t in towers for b in self._towers()[t].resblocks]

    @property
    def context_length(self) -> int:
        return int(self.clip.positional_embedding.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.config.image_size)  # type: ignore[return-value]

    def prefix_scales(self) -> dict[str, list[float]]:
        """S-Prefix lambda per layer and tower (1.0 for vanilla prefix, nan without prefix)."""
        return {
            t: [float(b.prefix.lam.detach()) if b.prefix is not None else float("nan") for b in self.blocks(t)]
            for t in TOWERS
        }

    def set_explicit_attention(self, explicit: bool) -> None:
        """Use the explicit softmax path instead of the fused SDPA kernel (same function)."""
        for b in self.blocks():
            b.explicit_attention = explicit

    @contextlib.contextmanager
    def record_attention(self) -> Iterator[AttentionRecording]:
        """Within this context every block records its attention probabilities."""
        rec = AttentionRecording()
        for b in self.blocks():
            b.recorder = rec
        try:
            yield rec
        finally:
            for b in self.blocks():
                b.recorder = None

    # ------------------------------------------------------------------ encoders
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """CLS output after ``ln_post`` times ``proj``: (B, D), not normalised."""
        out = self.clip.visual(images)
        return out[0] if isinstance(out, tuple) else out

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``<end>`` output after ``ln_final`` times ``text_projection``: (B, D), not normalised.

        Padding beyond the longest caption of the batch is trimmed first; with the causal
        mask no kept position can see a trimmed one, so the result is unchanged.
        """
        clip = self.clip
        pool = getattr(clip, "text_pool_type", "argmax")
        if self.trim_text and pool == "argmax" and clip.attn_mask is not None:
            length = int(tokens.argmax(dim=-1).max()) + 1
            tokens = tokens[:, :length]
        length = tokens.shape[1]
        cast_dtype = clip.transformer.get_cast_dtype()
        x = clip.token_embedding(tokens).to(cast_dtype)
        x = x + clip.positional_embedding[:length].to(cast_dtype)
        mask = clip.attn_mask[:length, :length] if clip.attn_mask is not None else None
        x = clip.transformer(x, attn_mask=mask)
        x = clip.ln_final(x)
        x = text_global_pool(x, tokens, pool, eos_token_id=getattr(clip, "text_eos_id", None))
        proj = clip.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return x

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training forward: L2-normalised image and text features."""
        return F.normalize(self.encode_image(images), dim=-1), F.normalize(self.encode_text(tokens), dim=-1)


def build_model(cfg: ModelConfig) -> UPPerson:
    """The single entry point: backbone from open_clip, then UP-Person's components."""
    clip = create_clip(cfg)
    model = UPPerson(clip, cfg)
    log.debug("built %s with %s", cfg.name, model.config)
    return model
