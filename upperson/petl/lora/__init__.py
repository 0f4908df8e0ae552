from upperson.petl.lora.config import LoraConfig
from upperson.petl.lora.layer import LoRA

__all__ = ["LoRA", "LoraConfig"]
