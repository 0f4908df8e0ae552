from upperson.petl.lora.component import COMPONENT
from upperson.petl.lora.config import LoraConfig
from upperson.petl.lora.layer import LoRA
from upperson.petl.registry import register_component

register_component(COMPONENT)

__all__ = ["LoRA", "LoraConfig"]
