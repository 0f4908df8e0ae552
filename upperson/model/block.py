"""A residual attention block with UP-Person's components, on a frozen open_clip block.

The block takes over the frozen sub-modules of an open_clip ``ResidualAttentionBlock``
under the same names (``ln_1``, ``attn``, ``ls_1``, ``ln_2``, ``mlp``, ``ls_2``), so the
backbone's state-dict keys do not change, and adds its own:

- ``prefix``: prefix keys/values (S-Prefix or vanilla), docs/method.md;
- ``lora_k``, ``lora_v``: LoRA on the key and value projections, docs/method.md;
- ``adapter_attn``, ``adapter_mlp``: adapters, docs/method.md. L-Adapter ("parallel") reads the
  residual stream beside each LayerNorm: ``x + Attn(LN1(x) + a1 * AdapterA(x))``.
  The sequential (vanilla, Houlsby-style) placement adapts each sub-layer's output with an
  inner residual, ``s + a * Adapter(s)`` where ``s = Attn(LN1(x))``, so it too is a no-op
  at init.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from upperson.model.attention import AttentionProbs, merged_attention, petl_attention
from upperson.petl import Adapter, LoRA, Prefix
from upperson.petl.adapter.layer import FoldedAdapter
from upperson.petl.lora.layer import fold_lora
from upperson.petl.prefix.layer import fold_prefix

Recorder = Callable[[str, int, AttentionProbs], None]


class UPPersonBlock(nn.Module):
    """Drop-in replacement for ``open_clip.transformer.ResidualAttentionBlock``."""

    def __init__(
        self,
        block: nn.Module,
        *,
        tower: str,
        index: int,
        batch_first: bool = True,
        prefix: Optional[Prefix] = None,
        lora_k: Optional[LoRA] = None,
        lora_v: Optional[LoRA] = None,
        adapter_attn: Optional[Adapter] = None,
        adapter_mlp: Optional[Adapter] = None,
        adapter_placement: str = "parallel",
    ) -> None:
        super().__init__()
        missing = [n for n in ("ln_1", "attn", "ln_2", "mlp") if not hasattr(block, n)]
        if missing or hasattr(block, "ln_1_kv"):
            raise TypeError(
                f"{type(block).__name__} is not a standard open_clip ResidualAttentionBlock "
                f"(missing {missing or 'nothing'}; cross-attention blocks are not supported)"
            )
        attn = block.attn
        if not all(hasattr(attn, n) for n in ("in_proj_weight", "in_proj_bias", "out_proj", "num_heads")):
            raise TypeError(f"{type(attn).__name__} does not expose in_proj_weight/in_proj_bias/out_proj/num_heads")
        self.ln_1 = block.ln_1
        self.attn = attn
        self.ls_1 = getattr(block, "ls_1", nn.Identity())
        self.ln_2 = block.ln_2
        self.mlp = block.mlp
        self.ls_2 = getattr(block, "ls_2", nn.Identity())
        self.tower = tower
        self.index = index
        self.batch_first = batch_first
        self.prefix = prefix
        self.lora_k = lora_k
        self.lora_v = lora_v
        self.adapter_attn = adapter_attn
        self.adapter_mlp = adapter_mlp
        self.adapter_placement = adapter_placement
        self.explicit_attention = False
        self.recorder: Optional[Recorder] = None
        self.merged = False  # see merge_(): inference only, LoRA and prefix folded

    def get_weight_dtype(self) -> torch.dtype:
        """The frozen weights' dtype (open_clip's Transformer asks its first block)."""
        return self.mlp.c_fc.weight.dtype

    @property
    def width(self) -> int:
        return self.attn.in_proj_weight.shape[1]

    def merge_(self) -> None:
        """Fold LoRA into a new frozen in-projection weight, precompute the prefix and fold each
        adapter's output scale into its up-projection, in place.

        For a copy made by ``UPPerson.merged()`` only: afterwards the block has no LoRA or
        prefix modules and computes the same function with fewer operations.
        """
        if self.merged:
            return
        if self.lora_k is not None or self.lora_v is not None:
            self.attn.in_proj_weight = nn.Parameter(fold_lora(self.attn, self.lora_k, self.lora_v), requires_grad=False)
        self.lora_k = self.lora_v = None
        if self.prefix is not None:
            pk, pv = fold_prefix(self.prefix, self.attn.num_heads)
            self.register_buffer("prefix_k", pk, persistent=False)
            self.register_buffer("prefix_v", pv, persistent=False)
        else:
            self.prefix_k = self.prefix_v = None
        self.prefix = None
        if isinstance(self.adapter_attn, Adapter):
            self.adapter_attn = FoldedAdapter(self.adapter_attn)
        if isinstance(self.adapter_mlp, Adapter):
            self.adapter_mlp = FoldedAdapter(self.adapter_mlp)
        self.merged = True

    def _attention(self, h: torch.Tensor, attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
        if self.merged:
            if self.recorder is not None or self.explicit_attention:
                raise RuntimeError("a merged model cannot record attention or use the explicit path; "
                                   "use the unmerged model")
            return merged_attention(h, self.attn, self.prefix_k, self.prefix_v, attn_mask)
        record = self.recorder is not None
        out, probs = petl_attention(
            h,
            self.attn,
            prefix=self.prefix,
            lora_k=self.lora_k,
            lora_v=self.lora_v,
            attn_mask=attn_mask,
            explicit=self.explicit_attention,
            return_probs=record,
        )
        if record and probs is not None:
            self.recorder(self.tower, self.index, probs)
        return out

    def forward(
        self,
        q_x: torch.Tensor,
        k_x: Optional[torch.Tensor] = None,
        v_x: Optional[torch.Tensor] = None,
        attn_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if k_x is not None or v_x is not None:
            raise ValueError("UPPersonBlock is a self-attention block; k_x/v_x are not supported")
        x = q_x if self.batch_first else q_x.transpose(0, 1)
        parallel = self.adapter_placement == "parallel"

        h = self.ln_1(x)
        if self.adapter_attn is not None and parallel:
            h = h + self.adapter_attn(x)
        s = self._attention(h, attn_mask)
        if self.adapter_attn is not None and not parallel:
            s = s + self.adapter_attn(s)
        x = x + self.ls_1(s)

        h = self.ln_2(x)
        if self.adapter_mlp is not None and parallel:
            h = h + self.adapter_mlp(x)
        s = self.mlp(h)
        if self.adapter_mlp is not None and not parallel:
            s = s + self.adapter_mlp(s)
        x = x + self.ls_2(s)
        return x if self.batch_first else x.transpose(0, 1)
