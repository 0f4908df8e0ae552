"""ToyPEDES domains: three worlds that differ the way CUHK-PEDES, ICFG-PEDES and RSTPReid do.

A domain is a camera (:class:`~upperson.data.toypedes.render.RenderStyle`), a clothing
distribution (:class:`~upperson.data.toypedes.attributes.AttributeDist`), a caption style
(:mod:`upperson.data.toypedes.domain_captions`) and a number of images and captions per
identity. The original ToyPEDES is domain ``None`` and keeps its files byte for byte.

Identities are disjoint across domains and from every pretraining corpus by construction: the
SHA-256 of an identity's attribute key picks one of four buckets, a domain's benchmark takes
only its own bucket, every pretraining corpus only the fourth, and none takes a key that the
original ToyPEDES stream of the same seed draws among its first :data:`ORIGINAL_EXCLUDED`
identities (the original benchmark, weak corpus and ``test-large``). Pids are disjoint too
(:attr:`Domain.pid_offset`). docs/generalization.md states the domains' measured differences.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterator, Optional

from upperson.data.toypedes.attributes import (AttributeDist, Identity, identity_stream, sample_identity,
                                               sample_styled_identity)
from upperson.data.toypedes.captions import fine_caption
from upperson.data.toypedes.domain_captions import CAPTION_STYLES
from upperson.data.toypedes.render import RenderStyle

#: the original stream's identities kept out of every domain (default: 2,500 + 3,000 weak + 700 extra test)
ORIGINAL_EXCLUDED = 10_000
#: bucket of every pretraining corpus
PRETRAIN_BUCKET = 3
BUCKETS = 4
#: pids of the pretraining corpus ("world") start here
WORLD_PID_OFFSET = 400_000
#: a domain's weak corpus's pids start this far after its benchmark's
WEAK_PID_GAP = 50_000


@dataclass(frozen=True)
class Domain:
    """One ToyPEDES domain."""

    name: str
    modelled_on: str
    description: str
    style: RenderStyle
    attributes: AttributeDist
    caption_style: str  # a key of domain_captions.CAPTION_STYLES
    images: tuple[int, int]  # images per identity (overrides the size preset's)
    captions_per_image: int
    views: tuple[float, float, float]  # front, back, side weights
    bucket: int
    pid_offset: int

    def __post_init__(self) -> None:
        if not 1 <= self.images[0] <= self.images[1] or self.captions_per_image < 1:
            raise ValueError(f"domain {self.name}: images must be 1 <= lo <= hi and captions_per_image >= 1")
        if not 0 <= self.bucket < BUCKETS or self.bucket == PRETRAIN_BUCKET:
            raise ValueError(f"domain {self.name}: bucket must be in [0, {BUCKETS}) and not {PRETRAIN_BUCKET}")


_BRIGHT = {"black": 1.0, "white": 1.2, "grey": 0.6, "red": 1.2, "orange": 0.9, "yellow": 1.0, "green": 1.0,
           "teal": 0.7, "blue": 1.2, "purple": 0.6, "pink": 1.0, "brown": 0.5}
_DARK = {"black": 4.0, "white": 1.5, "grey": 2.5, "red": 0.5, "orange": 0.15, "yellow": 0.15, "green": 0.3,
         "teal": 0.2, "blue": 1.5, "purple": 0.3, "pink": 0.3, "brown": 1.5}
_MIXED = {"black": 2.5, "white": 2.0, "grey": 1.2, "red": 0.8, "orange": 0.3, "yellow": 0.4, "green": 0.5,
          "teal": 0.3, "blue": 1.2, "purple": 0.3, "pink": 0.6, "brown": 0.8}
_HAIR = {"black": 0.55, "brown": 0.25, "blonde": 0.1, "grey": 0.1}

DOMAINS: dict[str, Domain] = {
    "cuhk": Domain(
        name="cuhk", modelled_on="CUHK-PEDES",
        description="campus, daylight, summer clothes in bright colours, tight crops from mixed cameras "
                    "(a third at half resolution), short captions (~23 words)",
        style=RenderStyle(backgrounds=(0.2, 0.2, 0.2, 0.4), background_level=(115, 205), scale=(0.84, 0.95),
                          shift=0.05, brightness=(0.98, 1.2), contrast=(0.95, 1.15), cast=(1.05, 1.0, 0.92),
                          saturation=(1.0, 1.25), blur=0.3, occlusion=0.08, low_res=0.35, noise=2.0),
        attributes=AttributeDist(
            woman=0.45, hair=_HAIR, colours=_BRIGHT,
            upper={"t-shirt": 3.0, "shirt": 2.0, "jacket": 0.7, "coat": 0.3, "sweater": 0.5, "hoodie": 0.8},
            lower_man={"trousers": 0.35, "jeans": 0.35, "shorts": 0.3},
            lower_woman={"trousers": 0.2, "jeans": 0.25, "shorts": 0.2, "skirt": 0.35},
            pattern=0.25, headwear=0.2,
            bag_man={"none": 0.35, "backpack": 0.45, "handbag": 0.05, "shoulder bag": 0.15},
            bag_woman={"none": 0.25, "backpack": 0.3, "handbag": 0.3, "shoulder bag": 0.15},
            glasses=0.2, umbrella=0.06),
        caption_style="cuhk", images=(2, 4), captions_per_image=2, views=(0.5, 0.3, 0.2),
        bucket=0, pid_offset=100_000),
    "icfg": Domain(
        name="icfg", modelled_on="ICFG-PEDES",
        description="indoor mall and hall, fluorescent light, winter clothes in dark colours, crowds "
                    "(more occlusion), varied scale, long head-to-toe captions (~37 words), one per image",
        style=RenderStyle(backgrounds=(0.35, 0.35, 0.25, 0.05), background_level=(70, 150), scale=(0.74, 0.92),
                          shift=0.09, brightness=(0.8, 1.1), contrast=(0.85, 1.05), cast=(0.92, 1.0, 1.1),
                          saturation=(0.7, 0.95), blur=0.2, occlusion=0.3, low_res=0.0, noise=4.0),
        attributes=AttributeDist(
            woman=0.4, hair=_HAIR, colours=_DARK,
            upper={"t-shirt": 0.3, "shirt": 0.6, "jacket": 2.5, "coat": 2.5, "sweater": 1.2, "hoodie": 0.9},
            lower_man={"trousers": 0.6, "jeans": 0.38, "shorts": 0.02},
            lower_woman={"trousers": 0.45, "jeans": 0.35, "shorts": 0.02, "skirt": 0.18},
            pattern=0.08, headwear=0.3,
            bag_man={"none": 0.4, "backpack": 0.25, "handbag": 0.1, "shoulder bag": 0.25},
            bag_woman={"none": 0.2, "backpack": 0.15, "handbag": 0.4, "shoulder bag": 0.25},
            glasses=0.35, umbrella=0.0),
        caption_style="icfg", images=(5, 7), captions_per_image=1, views=(0.35, 0.35, 0.3),
        bucket=1, pid_offset=200_000),
    "rstp": Domain(
        name="rstp", modelled_on="RSTPReid",
        description="street at dusk and night, warm street light, small people far from the camera at "
                    "low resolution, rain (umbrellas), captions about the person in the scene (~26 words)",
        style=RenderStyle(backgrounds=(0.1, 0.2, 0.2, 0.5), background_level=(50, 130), scale=(0.66, 0.86),
                          shift=0.12, brightness=(0.65, 0.95), contrast=(0.8, 1.0), cast=(1.08, 0.98, 0.82),
                          saturation=(0.8, 1.05), blur=0.45, occlusion=0.22, low_res=0.75, noise=6.0),
        attributes=AttributeDist(
            woman=0.45, hair=_HAIR, colours=_MIXED,
            upper={"t-shirt": 1.2, "shirt": 0.8, "jacket": 1.5, "coat": 1.0, "sweater": 0.6, "hoodie": 0.9},
            lower_man={"trousers": 0.5, "jeans": 0.4, "shorts": 0.1},
            lower_woman={"trousers": 0.35, "jeans": 0.3, "shorts": 0.1, "skirt": 0.25},
            pattern=0.15, headwear=0.15,
            bag_man={"none": 0.45, "backpack": 0.3, "handbag": 0.05, "shoulder bag": 0.2},
            bag_woman={"none": 0.3, "backpack": 0.2, "handbag": 0.3, "shoulder bag": 0.2},
            glasses=0.15, umbrella=0.25),
        caption_style="rstp", images=(3, 3), captions_per_image=2, views=(0.3, 0.3, 0.4),
        bucket=2, pid_offset=300_000),
}
#: the pretraining corpus of every domain at once (weak captions only)
WORLD = "world"


def bucket(ident: Identity) -> int:
    """Which of :data:`BUCKETS` an identity's attribute key falls in (stable across runs and platforms)."""
    return int.from_bytes(hashlib.sha256(repr(ident.key()).encode()).digest()[:8], "big") % BUCKETS


@lru_cache(maxsize=8)
def _original_keys(seed: int) -> frozenset:
    stream = identity_stream(seed)
    return frozenset(next(stream).key() for _ in range(ORIGINAL_EXCLUDED))


def domain_stream(seed: int, domain: str, pretraining: bool = False,
                  seen: Optional[set] = None) -> Iterator[Identity]:
    """An endless, seeded stream of ``domain``'s identities with pairwise different keys: its
    benchmark's (its bucket) or, with ``pretraining``, its pretraining corpus's (bucket
    :data:`PRETRAIN_BUCKET`). Never a key of the original ToyPEDES of ``seed``. ``seen`` is
    shared between streams that must not repeat each other (the world corpus)."""
    spec = DOMAINS[domain]
    want = PRETRAIN_BUCKET if pretraining else spec.bucket
    rng = random.Random(f"toypedes/{seed}/domain/{domain}/{'pretrain' if pretraining else 'benchmark'}/identities")
    excluded = _original_keys(seed)
    seen = set() if seen is None else seen
    while True:
        ident = sample_styled_identity(rng, spec.attributes)
        key = ident.key()
        if key in seen or key in excluded or bucket(ident) != want:
            continue
        seen.add(key)
        yield ident


def world_stream(seed: int) -> Iterator[tuple[str, Identity]]:
    """The pretraining corpus of every domain: (domain, identity), the domains in turn."""
    seen: set = set()
    streams = {name: domain_stream(seed, name, pretraining=True, seen=seen) for name in DOMAINS}
    while True:
        for name, stream in streams.items():
            yield name, next(stream)


# ----------------------------------------------------------------------------- a domain's look, for probes
# (analysis.binding and analysis.explain draw fresh persons the way a domain's benchmark does;
# ``None`` is the original ToyPEDES everywhere)


def check_domain(domain: Optional[str]) -> Optional[str]:
    """``domain`` if it is ``None`` or a benchmark domain; a ValueError naming the known ones otherwise."""
    if domain is not None and domain not in DOMAINS:
        raise ValueError(f"unknown ToyPEDES domain {domain!r}; known: {', '.join(DOMAINS)}")
    return domain


def sample_domain_identity(rng: random.Random, domain: Optional[str]) -> Identity:
    """One identity from ``domain``'s clothing distribution (no bucket or disjointness filter: the
    probes draw new people, not a benchmark's)."""
    if check_domain(domain) is None:
        return sample_identity(rng)
    return sample_styled_identity(rng, DOMAINS[domain].attributes)


def domain_render_style(domain: Optional[str]) -> Optional[RenderStyle]:
    """The camera of ``domain`` for :func:`~upperson.data.toypedes.render.render`."""
    return None if check_domain(domain) is None else DOMAINS[domain].style


def domain_fine_caption(domain: Optional[str]) -> Callable[[Identity, str, random.Random], str]:
    """The caption function ``(identity, view, rng)`` of ``domain``'s annotators."""
    return fine_caption if check_domain(domain) is None else CAPTION_STYLES[DOMAINS[domain].caption_style]


def domain_views(domain: Optional[str], default: tuple[float, float, float]) -> tuple[float, float, float]:
    """Front, back and side weights of ``domain``'s cameras (``default`` for the original ToyPEDES)."""
    return default if check_domain(domain) is None else DOMAINS[domain].views


def domain_draws(domain: Optional[str], attribute: str) -> bool:
    """Whether ``domain``'s clothing distribution ever draws ``attribute`` ("umbrella" only, today:
    ICFG-like indoor scenes have none)."""
    if attribute != "umbrella":
        raise ValueError(f"domain_draws knows 'umbrella' only, not {attribute!r}")
    return check_domain(domain) is None or DOMAINS[domain].attributes.umbrella > 0
