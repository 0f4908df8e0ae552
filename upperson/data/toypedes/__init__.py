"""ToyPEDES: a generated text-based person retrieval benchmark in CUHK-PEDES format.

Cartoon pedestrians drawn with PIL from attribute combinations (presentation, hair,
headwear, upper and lower garments with colours and patterns, shoes, bags, glasses,
umbrellas), several camera views per identity, and captions from a small grammar. Three
domains (``cuhk``, ``icfg``, ``rstp``: camera, clothing and caption style modelled on
CUHK-PEDES, ICFG-PEDES and RSTPReid) and their pretraining corpus are in :mod:`.domains`. Small
enough to train and evaluate the whole pipeline on a CPU; every test of the repository
uses its ``tiny`` preset.
"""

from upperson.data.toypedes.attributes import COLOURS, HAIR_PALETTE, PALETTE, Identity, identity_stream, sample_identity
from upperson.data.toypedes.captions import UPPER_PHRASE, canonical_colour, fine_caption, weak_caption
from upperson.data.toypedes.domains import DOMAINS, WORLD, Domain
from upperson.data.toypedes.generate import (
    CAPTION_MODES,
    FOLDERS,
    GENERATOR_VERSION,
    TOYPEDES_PRESETS,
    ToyPedesPreset,
    generate_toypedes,
)
from upperson.data.toypedes.render import HEIGHT, WIDTH, RenderStyle, View, render

__all__ = [
    "CAPTION_MODES", "COLOURS", "DOMAINS", "FOLDERS", "GENERATOR_VERSION", "HAIR_PALETTE", "HEIGHT", "PALETTE",
    "TOYPEDES_PRESETS", "UPPER_PHRASE", "WIDTH", "WORLD", "Domain", "Identity", "RenderStyle",
    "ToyPedesPreset", "View",
    "canonical_colour", "fine_caption", "generate_toypedes", "identity_stream", "render",
    "sample_identity", "weak_caption",
]
