"""The PETL component registry: each component is one folder that registers one :class:`Component`.

A component declares its name (its config section ``model.<name>`` and its row in the
parameter report), its config dataclass (a :class:`~upperson.petl.config.ComponentConfig`),
its layer classes, the block attributes that hold its layers (the *markers*: a parameter
whose dotted name contains one belongs to the component), how it enters a block and how it
folds for merged inference. The model, the config schema, the parameter report, the
ablation switches and ``merged()`` read this registry; nothing else knows the components.

The package's components (prefix, lora, adapter, ln_tuning) register when ``upperson.petl``
is imported; outside code calls :func:`register_component`, before it builds or loads a model
that uses the component. docs/components.md says how to add one.

How a component enters a block (every hook is optional; ``site`` is ``"attn"`` or ``"mlp"``,
the block's two sub-layers; ``block`` is the ``UPPersonBlock``, holding the layers under
their marker names, ``None`` where the component is not attached or was folded)::

    h = norm(block, site, x) or block.ln_<1|2>(x)    # replace a sub-layer's LayerNorm (one component)
    h = before(block, site, x, h)                     # e.g. L-Adapter: h + a(x)
    s = sub-layer(h)  # attention: k, v = kv(block, x, k, v) (e.g. LoRA); extra keys from prefix(block)
    s = after(block, site, s)                         # e.g. sequential adapter: s + a(s)
    x = x + s
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, is_dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from upperson.petl.config import ComponentConfig

SITES = ("attn", "mlp")
#: names a component may not take: the model config's own fields and its section map
RESERVED = frozenset({"name", "quick_gelu", "pretrained", "image_size", "freeze_backbone", "components", "backbone"})

Block = nn.Module  # an upperson.model.block.UPPersonBlock (not imported: the model imports this package)
Attach = Callable[[Block, Any], None]
NormHook = Callable[[Block, str, torch.Tensor], Optional[torch.Tensor]]
BeforeHook = Callable[[Block, str, torch.Tensor, torch.Tensor], torch.Tensor]
AfterHook = Callable[[Block, str, torch.Tensor], torch.Tensor]
KVHook = Callable[[Block, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
PrefixHook = Callable[[Block], Optional[nn.Module]]
MergedPrefixHook = Callable[[Block], Optional[tuple[torch.Tensor, torch.Tensor]]]
Fold = Callable[[Block], None]


class ComponentRegistryError(ValueError):
    """A component that cannot be registered, or a name that is not registered."""


@dataclass(frozen=True)
class Component:
    """One PETL component: what it is, where its layers sit, how it enters a block and folds.

    ``attach(block, cfg)`` adds the layers to one block, under the ``markers`` names, when
    ``cfg.applies_to(block.index)``. A component that adds attention keys (``prefix``, an
    object with ``length``, ``keys()``, ``values()`` and ``lam``, as
    :class:`~upperson.petl.prefix.Prefix`) gives them, folded, to the merged block with
    ``merged_prefix`` (``(keys, values)``, each ``(1, heads, P, head_dim)``). ``fold(block)``
    rewrites the block in place for merged inference; without it the layers run unchanged in
    the merged copy. ``description`` and ``label`` are for the reports and the ablation.
    """

    name: str
    config: type
    layers: tuple[type, ...]
    markers: tuple[str, ...]
    attach: Attach
    norm: Optional[NormHook] = None
    before: Optional[BeforeHook] = None
    after: Optional[AfterHook] = None
    kv: Optional[KVHook] = None
    prefix: Optional[PrefixHook] = None
    merged_prefix: Optional[MergedPrefixHook] = None
    fold: Optional[Fold] = None
    label: str = ""
    description: str = ""
    _defaults: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ComponentRegistryError(f"component name {self.name!r}: lower-case letters, digits and _ "
                                         "(it is a config section, model.<name>)")
        if self.name in RESERVED:
            raise ComponentRegistryError(f"component name {self.name!r} is taken by the model config")
        if not (is_dataclass(self.config) and issubclass(self.config, ComponentConfig)):
            raise ComponentRegistryError(f"component {self.name!r}: config must be a dataclass deriving from "
                                         "upperson.petl.config.ComponentConfig")
        if not self.markers or not all(isinstance(m, str) and m.isidentifier() for m in self.markers):
            raise ComponentRegistryError(f"component {self.name!r}: markers must name the block attributes "
                                         "holding its layers")
        if not all(isinstance(t, type) and issubclass(t, nn.Module) for t in self.layers):
            raise ComponentRegistryError(f"component {self.name!r}: layers must be nn.Module classes")
        if self.prefix is not None and self.merged_prefix is None:
            raise ComponentRegistryError(f"component {self.name!r} adds attention keys (prefix) but does not say "
                                         "how a merged block gets them (merged_prefix)")
        object.__setattr__(self, "_defaults", self.config())

    def __deepcopy__(self, memo: dict) -> "Component":
        return self  # a spec, shared by every copy of a model (UPPerson.merged deep-copies blocks)

    def default(self) -> ComponentConfig:
        """A new config with the defaults."""
        return self.config()

    @property
    def on_by_default(self) -> bool:
        """Whether the default config enables the component (the paper's three are on)."""
        return bool(self._defaults.enabled)

    def is_default_off(self, cfg: Any) -> bool:
        """``cfg`` is the default config and the default is off: a written config leaves the section out
        (reading it back gives the same), so files of models without the component stay as they were."""
        return not self.on_by_default and cfg == self._defaults

    def switch(self, on: bool) -> str:
        """The ``--set`` override that turns the component on or off (the ablation switches)."""
        return f"model.{self.name}.enabled={'true' if on else 'false'}"

    def owns(self, parameter_name: str) -> bool:
        """Whether a dotted parameter (or state-dict) name belongs to this component."""
        parts = parameter_name.split(".")
        return any(m in parts for m in self.markers)


_REGISTRY: dict[str, Component] = {}


def register_component(component: Component, *, replace: bool = False) -> Component:
    """Add ``component`` to the registry (in order: that is the order of config sections, report rows
    and layers in a block). A second component of the same name, or one sharing a marker, is refused
    unless ``replace`` (same name only)."""
    old = _REGISTRY.get(component.name)
    if old is not None and not replace:
        if old is component:
            return component
        raise ComponentRegistryError(f"a component named {component.name!r} is already registered "
                                     "(pass replace=True to replace it)")
    for other in _REGISTRY.values():
        shared = set(other.markers) & set(component.markers)
        if other.name != component.name and shared:
            raise ComponentRegistryError(f"component {component.name!r}: marker(s) {sorted(shared)} already "
                                         f"belong to {other.name!r}")
    _REGISTRY[component.name] = component
    return component


def unregister_component(name: str) -> None:
    """Remove a component (for tests and plug-ins; the package's own stay)."""
    _REGISTRY.pop(name, None)


def get_component(name: str) -> Component:
    """The registered component ``name``; :class:`ComponentRegistryError` lists the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ComponentRegistryError(f"no PETL component {name!r} is registered; registered: "
                                     f"{', '.join(_REGISTRY)} (import the module that registers it)") from None


def find_component(name: str) -> Optional[Component]:
    """The registered component ``name``, or None."""
    return _REGISTRY.get(name)


def components() -> tuple[Component, ...]:
    """Every registered component, in registration order."""
    return tuple(_REGISTRY.values())


def component_of(name: str) -> str:
    """The component a parameter name belongs to (the first whose marker it contains), else ``backbone``."""
    for c in _REGISTRY.values():
        if c.owns(name):
            return c.name
    return "backbone"
