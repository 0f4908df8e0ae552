from upperson.petl.ln_tuning.component import COMPONENT
from upperson.petl.ln_tuning.config import LNTuningConfig
from upperson.petl.ln_tuning.layer import LNTuning, TunedNorm
from upperson.petl.registry import register_component

register_component(COMPONENT)

__all__ = ["LNTuning", "LNTuningConfig", "TunedNorm"]
