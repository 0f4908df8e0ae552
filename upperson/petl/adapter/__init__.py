from upperson.petl.adapter.component import COMPONENT
from upperson.petl.adapter.config import AdapterConfig
from upperson.petl.adapter.layer import Adapter
from upperson.petl.registry import register_component

register_component(COMPONENT)

__all__ = ["Adapter", "AdapterConfig"]
