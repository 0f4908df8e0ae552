"""A residual attention block with UP-Person's components, on a frozen open_clip block.

The block takes over the frozen sub-modules of an open_clip ``ResidualAttentionBlock``
under the same names (``ln_1``, ``attn``, ``ls_1``, ``ln_2``, ``mlp``, ``ls_2``), so the
backbone's state-dict keys do not change. Each registered PETL component that applies to
the block (upperson/petl/registry.py) adds its layers under its marker names (``prefix``;
``lora_k``, ``lora_v``; ``adapter_attn``, ``adapter_mlp``; ``ln_tuning``) and enters the
forward pass through its hooks::

    h = norm(x) or LN1(x);  h = before(x, h);  s = Attn(h) [prefix, kv];  s = after(s);  x = x + s
    h = norm(x) or LN2(x);  h = before(x, h);  s = MLP(h);                 s = after(s);  x = x + s

so L-Adapter reads ``x + Attn(LN1(x) + a1 * AdapterA(x))`` and a sequential adapter
``s + a * Adapter(s)`` (docs/method.md). A component's marker attributes are ``None`` in a
block it does not apply to.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from upperson.model.attention import AttentionProbs, component_attention, merged_attention
from upperson.petl.registry import Component, components

Recorder = Callable[[str, int, AttentionProbs], None]


class UPPersonBlock(nn.Module):
    """Drop-in replacement for ``open_clip.transformer.ResidualAttentionBlock``."""

    def __init__(self, block: nn.Module, *, tower: str, index: int, batch_first: bool = True) -> None:
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
        for c in components():
            for marker in c.markers:
                setattr(self, marker, None)
        self.attached: tuple[Component, ...] = ()  # the components attached, in registry order
        self._collect_hooks()
        self.explicit_attention = False
        self.recorder: Optional[Recorder] = None
        self.merged = False  # see merge_(): inference only, each component folded

    def add_component(self, component: Component, cfg: Any) -> None:
        """Attach ``component`` (its layers, under its markers, and its hooks) with its config ``cfg``."""
        if self.merged:
            raise RuntimeError("a merged block is for inference only: attach components to the model before merging")
        if any(c.name == component.name for c in self.attached):
            raise ValueError(f"{component.name!r} is already attached to block {self.tower}[{self.index}]")
        for hook in ("norm", "prefix"):  # one LayerNorm replacement, one set of extra keys per block
            other = next((c.name for c in self.attached if getattr(c, hook) is not None), None)
            if getattr(component, hook) is not None and other is not None:
                raise ValueError(f"components {other!r} and {component.name!r} both give block "
                                 f"{self.tower}[{self.index}] its {hook}; enable one of them")
        for marker in component.markers:
            if not hasattr(self, marker):  # registered after this block was built
                setattr(self, marker, None)
        component.attach(self, cfg)
        self.attached = self.attached + (component,)
        self._collect_hooks()

    def _collect_hooks(self) -> None:
        def of(hook: str) -> tuple[Callable, ...]:
            return tuple(getattr(c, hook) for c in self.attached if getattr(c, hook) is not None)

        self._norm_hooks, self._before_hooks, self._after_hooks = of("norm"), of("before"), of("after")
        self._kv_hooks, self._prefix_hooks, self._merged_prefix_hooks = of("kv"), of("prefix"), of("merged_prefix")

    def get_weight_dtype(self) -> torch.dtype:
        """The frozen weights' dtype (open_clip's Transformer asks its first block)."""
        return self.mlp.c_fc.weight.dtype

    @property
    def width(self) -> int:
        return self.attn.in_proj_weight.shape[1]

    def merge_(self) -> None:
        """Fold each attached component for inference, in place, as its registry entry says: LoRA into a
        new frozen in-projection weight, the prefix precomputed, each adapter's output scale into its
        up-projection, the tuned LayerNorms in place of the frozen ones.

        For a copy made by ``UPPerson.merged()`` only: afterwards the block computes the same
        function with fewer operations.
        """
        if self.merged:
            return
        for c in self.attached:
            if c.fold is not None:
                c.fold(self)
        self.merged = True

    def _update_kv(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for hook in self._kv_hooks:
            k, v = hook(self, x, k, v)
        return k, v

    def _attention(self, h: torch.Tensor, attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
        kv = self._update_kv if self._kv_hooks else None
        if self.merged:
            if self.recorder is not None or self.explicit_attention:
                raise RuntimeError("a merged model cannot record attention or use the explicit path; "
                                   "use the unmerged model")
            folded = next((f for f in (hook(self) for hook in self._merged_prefix_hooks) if f is not None), None)
            prefix_k, prefix_v = folded if folded is not None else (None, None)
            return merged_attention(h, self.attn, prefix_k, prefix_v, attn_mask, kv=kv)
        prefix = next((p for p in (hook(self) for hook in self._prefix_hooks) if p is not None), None)
        record = self.recorder is not None
        out, probs = component_attention(
            h,
            self.attn,
            prefix=prefix,
            kv=kv,
            attn_mask=attn_mask,
            explicit=self.explicit_attention,
            return_probs=record,
        )
        if record and probs is not None:
            self.recorder(self.tower, self.index, probs)
        return out

    def _sublayer_input(self, site: str, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The (possibly replaced) LayerNorm of ``x``, then each ``before`` hook."""
        h = None
        for hook in self._norm_hooks:
            h = hook(self, site, x)
            if h is not None:
                break
        if h is None:
            h = norm(x)
        for hook in self._before_hooks:
            h = hook(self, site, x, h)
        return h

    def _sublayer_output(self, site: str, s: torch.Tensor) -> torch.Tensor:
        for hook in self._after_hooks:
            s = hook(self, site, s)
        return s

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
        s = self._attention(self._sublayer_input("attn", self.ln_1, x), attn_mask)
        x = x + self.ls_1(self._sublayer_output("attn", s))
        s = self.mlp(self._sublayer_input("mlp", self.ln_2, x))
        x = x + self.ls_2(self._sublayer_output("mlp", s))
        return x if self.batch_first else x.transpose(0, 1)
