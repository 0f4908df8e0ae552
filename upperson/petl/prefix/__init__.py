from upperson.petl.prefix.component import COMPONENT
from upperson.petl.prefix.config import PrefixConfig
from upperson.petl.prefix.layer import Prefix
from upperson.petl.registry import register_component

register_component(COMPONENT)

__all__ = ["Prefix", "PrefixConfig"]
