"""The three PETL components, one folder each (config + layer), in the style of peft."""

from upperson.petl.adapter import Adapter, AdapterConfig
from upperson.petl.lora import LoRA, LoraConfig
from upperson.petl.prefix import Prefix, PrefixConfig

PETL_MODULE_TYPES = {"prefix": Prefix, "lora": LoRA, "adapter": Adapter}

__all__ = ["Adapter", "AdapterConfig", "LoRA", "LoraConfig", "Prefix", "PrefixConfig", "PETL_MODULE_TYPES"]
