"""ToyPEDES identities: the attribute vocabulary, the palette, and the identity stream."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields
from typing import Iterator

#: the named colours of garments, bags, hats and umbrellas, with the RGB the renderer paints.
#: They are far apart in RGB (the closest pairs, teal-green and teal-blue, are ~90 apart) so
#: that a colour survives blur, lighting jitter and a downscale to 96 x 32.
PALETTE: dict[str, tuple[int, int, int]] = {
    "black": (30, 30, 32),
    "white": (235, 235, 230),
    "grey": (128, 128, 128),
    "red": (205, 35, 35),
    "orange": (240, 135, 25),
    "yellow": (240, 215, 40),
    "green": (40, 155, 60),
    "teal": (0, 150, 150),
    "blue": (35, 85, 205),
    "purple": (125, 50, 165),
    "pink": (245, 140, 190),
    "brown": (120, 72, 35),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)

HAIR_PALETTE: dict[str, tuple[int, int, int]] = {
    "black": (22, 18, 18),
    "brown": (105, 62, 30),
    "blonde": (226, 196, 112),
    "grey": (165, 165, 165),
}
SKIN_TONES: tuple[tuple[int, int, int], ...] = (
    (242, 205, 175), (225, 180, 140), (196, 145, 105), (150, 100, 70), (105, 70, 50),
)

GENDERS = ("man", "woman")
HAIR_LENGTHS = ("short", "long")
HEADWEAR = ("none", "cap", "hat")
UPPER_TYPES = ("t-shirt", "shirt", "jacket", "coat", "sweater", "hoodie")
PATTERNS = ("plain", "striped", "checked")
LOWER_TYPES = ("trousers", "jeans", "shorts", "skirt")
BAGS = ("none", "backpack", "handbag", "shoulder bag")
JEANS_COLOURS = ("blue", "black", "grey")
VIEWS = ("front", "back", "side")


@dataclass(frozen=True)
class Identity:
    """Everything that defines one ToyPEDES person. Colours are keys of :data:`PALETTE`
    (hair: :data:`HAIR_PALETTE`); ``skin`` and ``build`` only affect the drawing."""

    gender: str
    hair_length: str
    hair_colour: str
    headwear: str
    headwear_colour: str  # "" without headwear
    upper_type: str
    upper_colour: str
    upper_pattern: str
    pattern_colour: str  # "" when plain
    lower_type: str
    lower_colour: str
    shoes_colour: str
    bag: str
    bag_colour: str  # "" without a bag
    glasses: bool
    umbrella: bool
    umbrella_colour: str  # "" without an umbrella
    skin: int  # index into SKIN_TONES
    build: float  # width factor

    def key(self) -> tuple:
        """The described attributes: two identities with the same key look the same in captions."""
        return tuple(getattr(self, f.name) for f in fields(self) if f.name not in ("skin", "build"))

    def to_dict(self) -> dict:
        return asdict(self)


def _weighted(rng: random.Random, options: dict[str, float]) -> str:
    return rng.choices(list(options), weights=list(options.values()))[0]


def sample_identity(rng: random.Random) -> Identity:
    """One identity drawn from the attribute distribution."""
    gender = rng.choice(GENDERS)
    woman = gender == "woman"
    hair_length = "long" if rng.random() < (0.75 if woman else 0.1) else "short"
    hair_colour = _weighted(rng, {"black": 0.4, "brown": 0.3, "blonde": 0.2, "grey": 0.1})
    headwear = _weighted(rng, {"none": 0.7, "cap": 0.18, "hat": 0.12})
    upper_colour = rng.choice(COLOURS)
    pattern = _weighted(rng, {"plain": 0.7, "striped": 0.15, "checked": 0.15})
    pattern_colour = ""
    if pattern != "plain":
        pattern_colour = rng.choice([c for c in COLOURS if c != upper_colour])
    lower_type = _weighted(
        rng,
        {"trousers": 0.25, "jeans": 0.3, "shorts": 0.1, "skirt": 0.35} if woman
        else {"trousers": 0.45, "jeans": 0.4, "shorts": 0.15},
    )
    lower_colour = rng.choice(JEANS_COLOURS if lower_type == "jeans" else COLOURS)
    shoes_colour = rng.choice(COLOURS) if rng.random() < 0.3 else rng.choice(("black", "white"))
    bag = _weighted(
        rng,
        {"none": 0.3, "backpack": 0.2, "handbag": 0.3, "shoulder bag": 0.2} if woman
        else {"none": 0.4, "backpack": 0.3, "handbag": 0.1, "shoulder bag": 0.2},
    )
    umbrella = rng.random() < 0.1
    return Identity(
        gender=gender,
        hair_length=hair_length,
        hair_colour=hair_colour,
        headwear=headwear,
        headwear_colour=rng.choice(COLOURS) if headwear != "none" else "",
        upper_type=rng.choice(UPPER_TYPES),
        upper_colour=upper_colour,
        upper_pattern=pattern,
        pattern_colour=pattern_colour,
        lower_type=lower_type,
        lower_colour=lower_colour,
        shoes_colour=shoes_colour,
        bag=bag,
        bag_colour=rng.choice(COLOURS) if bag != "none" else "",
        glasses=rng.random() < 0.2,
        umbrella=umbrella,
        umbrella_colour=rng.choice(COLOURS) if umbrella else "",
        skin=rng.randrange(len(SKIN_TONES)),
        build=round(rng.uniform(0.95, 1.1), 3),
    )


def identity_stream(seed: int) -> Iterator[Identity]:
    """An endless, seeded stream of identities with pairwise different attribute keys.

    The benchmark takes the first identities of the stream and the weak corpus the next
    ones, so for one seed (and preset) the two never share an identity.
    """
    rng = random.Random(f"toypedes/{seed}/identities")
    seen: set[tuple] = set()
    while True:
        ident = sample_identity(rng)
        if ident.key() not in seen:
            seen.add(ident.key())
            yield ident


@dataclass(frozen=True)
class AttributeDist:
    """A domain's clothing and attribute distribution (weights need not sum to one). The
    original ToyPEDES draws with :func:`sample_identity`; a domain with :func:`sample_styled_identity`."""

    woman: float  # probability of a woman
    hair: dict[str, float]  # HAIR_PALETTE weights
    colours: dict[str, float]  # garment colour weights (upper, lower, headwear, shoes)
    upper: dict[str, float]  # UPPER_TYPES weights
    lower_man: dict[str, float]  # LOWER_TYPES weights for men
    lower_woman: dict[str, float]
    pattern: float  # probability of a striped or checked upper garment
    headwear: float
    bag_man: dict[str, float]  # BAGS weights
    bag_woman: dict[str, float]
    glasses: float
    umbrella: float

    def __post_init__(self) -> None:
        vocab = {"hair": HAIR_PALETTE, "colours": PALETTE, "upper": UPPER_TYPES, "lower_man": LOWER_TYPES,
                 "lower_woman": LOWER_TYPES, "bag_man": BAGS, "bag_woman": BAGS}
        for name, known in vocab.items():
            weights = getattr(self, name)
            if set(weights) - set(known) or min(weights.values()) < 0 or sum(weights.values()) <= 0:
                raise ValueError(f"AttributeDist.{name}: non-negative weights over {sorted(known)}, got {weights}")
        if not all(0 <= p <= 1 for p in (self.woman, self.pattern, self.headwear, self.glasses, self.umbrella)):
            raise ValueError("AttributeDist: probabilities must lie in [0, 1]")


def sample_styled_identity(rng: random.Random, dist: AttributeDist) -> Identity:
    """One identity drawn from a domain's attribute distribution."""
    gender = "woman" if rng.random() < dist.woman else "man"
    woman = gender == "woman"
    hair_length = "long" if rng.random() < (0.75 if woman else 0.1) else "short"
    hair_colour = _weighted(rng, dist.hair)
    headwear = _weighted(rng, {"cap": 0.6, "hat": 0.4}) if rng.random() < dist.headwear else "none"
    upper_colour = _weighted(rng, dist.colours)
    pattern = rng.choice(("striped", "checked")) if rng.random() < dist.pattern else "plain"
    pattern_colour = ""
    if pattern != "plain":
        pattern_colour = _weighted(rng, {c: w for c, w in dist.colours.items() if c != upper_colour} or {"white": 1.0})
    lower_type = _weighted(rng, dist.lower_woman if woman else dist.lower_man)
    lower_colour = rng.choice(JEANS_COLOURS) if lower_type == "jeans" else _weighted(rng, dist.colours)
    bag = _weighted(rng, dist.bag_woman if woman else dist.bag_man)
    umbrella = rng.random() < dist.umbrella
    return Identity(
        gender=gender,
        hair_length=hair_length,
        hair_colour=hair_colour,
        headwear=headwear,
        headwear_colour=_weighted(rng, dist.colours) if headwear != "none" else "",
        upper_type=_weighted(rng, dist.upper),
        upper_colour=upper_colour,
        upper_pattern=pattern,
        pattern_colour=pattern_colour,
        lower_type=lower_type,
        lower_colour=lower_colour,
        shoes_colour=_weighted(rng, dist.colours) if rng.random() < 0.3 else rng.choice(("black", "white")),
        bag=bag,
        bag_colour=_weighted(rng, dist.colours) if bag != "none" else "",
        glasses=rng.random() < dist.glasses,
        umbrella=umbrella,
        umbrella_colour=rng.choice(COLOURS) if umbrella else "",
        skin=rng.randrange(len(SKIN_TONES)),
        build=round(rng.uniform(0.95, 1.1), 3),
    )
