"""The PETL components, one folder each (config, layer, component spec), registered by name.

Importing this package registers the paper's three components, in this order (the order of
the config sections and the parameter report): prefix, lora, adapter. Every other component
folder in this package (a sub-package with a ``component.py``) is then imported, in name
order, and registers itself: a new component is one folder (docs/components.md). Outside
code registers its own with :func:`register_component`.
"""

import importlib
import importlib.util
import pkgutil

from upperson.petl.prefix import Prefix, PrefixConfig
from upperson.petl.lora import LoRA, LoraConfig
from upperson.petl.adapter import Adapter, AdapterConfig
from upperson.petl.registry import (Component, ComponentRegistryError, component_of, components, get_component,
                                    register_component)

PAPER_COMPONENTS = ("prefix", "lora", "adapter")


def _import_component_folders() -> None:
    """Import each further component folder (its ``__init__`` registers it)."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.ispkg and info.name not in PAPER_COMPONENTS and \
                importlib.util.find_spec(f"{__name__}.{info.name}.component") is not None:
            importlib.import_module(f"{__name__}.{info.name}")


_import_component_folders()

#: the layer classes by component name (all registered components, as this package registered them)
PETL_MODULE_TYPES = {c.name: c.layers[0] for c in components()}

__all__ = ["Adapter", "AdapterConfig", "LoRA", "LoraConfig", "Prefix", "PrefixConfig", "PETL_MODULE_TYPES",
           "Component", "ComponentRegistryError", "component_of", "components", "get_component",
           "register_component"]
