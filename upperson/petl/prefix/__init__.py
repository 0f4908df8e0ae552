from upperson.petl.prefix.config import PrefixConfig
from upperson.petl.prefix.layer import Prefix

__all__ = ["Prefix", "PrefixConfig"]
