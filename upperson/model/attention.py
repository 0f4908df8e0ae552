"""Multi-head attention with the PETL components' entry points: extra (prefix) keys/values and a K/V update.

A component enters the attention in one of two ways (upperson/petl/registry.py): it adds keys
and values before the tokens' (the prefix, an object with ``length``, ``keys()``, ``values()``
and ``lam``), or it updates the projected keys and values (``kv(x, k, v) -> (k, v)``, LoRA).

Reuses a frozen attention's ``in_proj_weight``, ``in_proj_bias`` and ``out_proj`` (the
names of ``nn.MultiheadAttention`` and of open_clip's own attention), so it works with any
block that has them. Two paths compute the same function:

- ``fused``: ``torch.nn.functional.scaled_dot_product_attention`` over
  ``[prefix keys; token keys]`` with prefix values scaled by lambda. By the identity
  ``lambda * A_pre Pv = A_pre (lambda Pv)`` (docs/method.md) this is S-Prefix exactly.
- ``explicit``: softmax attention written out, ``A_tok V_tok + lambda * A_pre Pv``. It can
  return the attention probabilities (for the analysis) and is the naive baseline of the
  benchmark.

Key layout: the prefix sits *before* the token keys. Key order does not change attention as
long as the mask follows it, so a causal text mask is extended with zero columns on the
left: every query sees every prefix key (docs/method.md).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn import functional as F

from upperson.petl.lora import LoRA
from upperson.petl.lora.layer import fold_lora, lora_kv  # noqa: F401 (fold_lora: its old import path)
from upperson.petl.prefix import Prefix
from upperson.petl.prefix.layer import fold_prefix  # noqa: F401 (its old import path)

#: a K/V update: (attention input x, keys, values) -> (keys, values), before the heads are split
KVUpdate = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class AttentionProbs:
    """Attention probabilities of one layer: ``probs`` is (B, heads, L, P + L), prefix first."""

    probs: torch.Tensor
    prefix_len: int
    prefix_scale: float  # lambda (1 for vanilla prefix or no prefix)

    def prefix_mass(self) -> torch.Tensor:
        """Softmax mass on the prefix columns, (B, heads, L), before lambda."""
        return self.probs[..., : self.prefix_len].sum(-1)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, hd = x.shape
    return x.transpose(1, 2).reshape(b, n, h * hd)


def extend_mask_for_prefix(attn_mask: Optional[torch.Tensor], prefix_len: int, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """Turn an additive (L, L) mask into (L, P + L) whose prefix columns are 0."""
    if attn_mask is None:
        return None
    if attn_mask.dtype == torch.bool:  # True = masked out for nn.MultiheadAttention
        attn_mask = torch.zeros(attn_mask.shape, dtype=dtype, device=attn_mask.device).masked_fill(attn_mask, float("-inf"))
    attn_mask = attn_mask.to(dtype)
    if prefix_len == 0:
        return attn_mask
    zeros = attn_mask.new_zeros(attn_mask.shape[0], prefix_len)
    return torch.cat([zeros, attn_mask], dim=1)


def petl_attention(
    x: torch.Tensor,
    attn: nn.Module,
    *,
    prefix: Optional[Prefix] = None,
    lora_k: Optional[LoRA] = None,
    lora_v: Optional[LoRA] = None,
    attn_mask: Optional[torch.Tensor] = None,
    explicit: bool = False,
    return_probs: bool = False,
) -> tuple[torch.Tensor, Optional[AttentionProbs]]:
    """:func:`component_attention` with a prefix and LoRA given directly (the first form of this API)."""
    kv = functools.partial(lora_kv, lora_k, lora_v) if lora_k is not None or lora_v is not None else None
    return component_attention(x, attn, prefix=prefix, kv=kv, attn_mask=attn_mask, explicit=explicit,
                               return_probs=return_probs)


def component_attention(
    x: torch.Tensor,
    attn: nn.Module,
    *,
    prefix: Optional[Prefix] = None,
    kv: Optional[KVUpdate] = None,
    attn_mask: Optional[torch.Tensor] = None,
    explicit: bool = False,
    return_probs: bool = False,
) -> tuple[torch.Tensor, Optional[AttentionProbs]]:
    """Self-attention of ``x`` (B, L, D) through the frozen projections of ``attn``, with the
    components' prefix keys/values and K/V update.

    Returns the attention output (B, L, D) and, when ``return_probs`` (which implies the
    explicit path), the attention probabilities.
    """
    heads = attn.num_heads
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    if kv is not None:
        k, v = kv(x, k, v)
    q, k, v = (_split_heads(t, heads) for t in (q, k, v))
    b = x.shape[0]

    prefix_len = prefix.length if prefix is not None else 0
    mask = extend_mask_for_prefix(attn_mask, prefix_len, q.dtype)
    if prefix is not None:
        pk = _split_heads(prefix.keys().to(q.dtype).unsqueeze(0), heads).expand(b, -1, -1, -1)
        pv = _split_heads(prefix.values().to(q.dtype).unsqueeze(0), heads).expand(b, -1, -1, -1)
        lam = prefix.lam.to(q.dtype)
    probs = None
    if explicit or return_probs:
        keys = torch.cat([pk, k], dim=2) if prefix is not None else k
        scores = (q @ keys.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
        if mask is not None:
            scores = scores + mask
        a = scores.softmax(dim=-1)
        out = a[..., prefix_len:] @ v
        if prefix is not None:
            out = out + lam * (a[..., :prefix_len] @ pv)
        if return_probs:
            probs = AttentionProbs(a.detach(), prefix_len, float(lam.detach()) if prefix is not None else 1.0)
    else:
        if prefix is not None:
            k = torch.cat([pk, k], dim=2)
            v = torch.cat([pv * lam, v], dim=2)
        if mask is not None:
            mask = mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = _merge_heads(out)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias), probs


def merged_attention(
    x: torch.Tensor,
    attn: nn.Module,
    prefix_k: Optional[torch.Tensor],
    prefix_v: Optional[torch.Tensor],
    attn_mask: Optional[torch.Tensor] = None,
    kv: Optional[KVUpdate] = None,
) -> torch.Tensor:
    """Inference-only attention of a merged block: LoRA already in ``attn.in_proj_weight``,
    prefix keys/values precomputed by :func:`upperson.petl.prefix.layer.fold_prefix` (``None`` without a prefix);
    ``kv``: the K/V update of a component that does not fold."""
    heads = attn.num_heads
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    if kv is not None:
        k, v = kv(x, k, v)
    q, k, v = (_split_heads(t, heads) for t in (q, k, v))
    prefix_len = 0
    if prefix_k is not None:
        b = x.shape[0]
        prefix_len = prefix_k.shape[2]
        k = torch.cat([prefix_k.to(q.dtype).expand(b, -1, -1, -1), k], dim=2)
        v = torch.cat([prefix_v.to(q.dtype).expand(b, -1, -1, -1), v], dim=2)
    mask = extend_mask_for_prefix(attn_mask, prefix_len, q.dtype)
    out = _merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)

