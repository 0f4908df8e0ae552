from upperson.petl.adapter.config import AdapterConfig
from upperson.petl.adapter.layer import Adapter

__all__ = ["Adapter", "AdapterConfig"]
