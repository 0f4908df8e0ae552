"""Caption styles of the ToyPEDES domains (docs/generalization.md).

Each style is written the way one public benchmark's annotators write, with its own length,
templates, vocabulary and choice of what to mention:

- ``cuhk`` (CUHK-PEDES, ~23 words): short, clothes first, one or two extras, often one sentence.
- ``icfg`` (ICFG-PEDES, ~37 words): head to toe, every visible attribute, fine-grained nouns,
  "upper body" / "lower body", the posture at the end.
- ``rstp`` (RSTPReid, ~26 words): the person in a scene, what they do, then the clothes.

The weak style (:func:`noisy_caption`) is the pretraining corpus: short, unstructured, tag
lists and alt-text, with dropped words and a wrong colour now and then. Every caption states
only what its image shows (no glasses from behind), and the upper garment's colour comes
right before its noun (:data:`~upperson.data.toypedes.captions.UPPER_PHRASE` parses it).
"""

from __future__ import annotations

import random
from typing import Callable

from upperson.data.toypedes.attributes import COLOURS, Identity
from upperson.data.toypedes.captions import (
    BAG_NOUNS,
    DOMAIN_LOWER_NOUNS,
    DOMAIN_UPPER_NOUNS,
    HAIR_WORDS,
    PRONOUNS,
    SHOE_NOUNS,
    colour_word,
    with_article,
)

#: what a domain's annotators call the person
DOMAIN_SUBJECTS: dict[str, dict[str, tuple[str, ...]]] = {
    "cuhk": {"man": ("man", "guy", "young man", "boy"), "woman": ("woman", "girl", "lady", "young woman")},
    "icfg": {"man": ("man", "male", "gentleman"), "woman": ("woman", "female", "lady")},
    "rstp": {"man": ("man", "young man", "person"), "woman": ("woman", "young woman", "person")},
}
RSTP_ACTIONS = ("is walking along the road", "is walking on the street", "is crossing the road",
                "is walking past a building", "is standing by the road", "is walking in the rain")
RSTP_ACTIONS_DRY = RSTP_ACTIONS[:5]
ICFG_POSTURES = ("{he} is walking forward with {his} arms by {his} sides.",
                 "{he} is standing upright and looking ahead.",
                 "{he} seems to be walking slowly through the hall.",
                 "{he} is walking with {his} head slightly down.")
SCENES = {"cuhk": ("on campus", "outdoors", "on a sunny day"), "icfg": ("in a mall", "indoors", "in a hall"),
          "rstp": ("on the street", "at night", "in the rain")}


#: RSTPReid-style annotators, unsure at night and at low resolution, often qualify a colour
_SHADE = {"black": "dark", "blue": "dark", "green": "dark", "brown": "dark", "purple": "dark", "teal": "dark",
          "grey": "light", "white": "light", "pink": "light", "yellow": "light", "orange": "bright", "red": "bright"}


def _colour(rng: random.Random, colour: str, domain: str) -> str:
    word = colour_word(rng, colour)
    return f"{_SHADE[colour]} {word}" if domain == "rstp" and rng.random() < 0.35 else word


def _upper(ident: Identity, domain: str, rng: random.Random) -> str:
    noun = rng.choice(DOMAIN_UPPER_NOUNS[domain][ident.upper_type])
    c = _colour(rng, ident.upper_colour, domain)
    if ident.upper_pattern == "plain":
        return with_article(f"{c} {noun}")
    c2 = colour_word(rng, ident.pattern_colour)
    kind = "striped" if ident.upper_pattern == "striped" else rng.choice(("checked", "plaid"))
    if domain == "icfg":
        return with_article(f"{c} {noun} with {c2} {'stripes' if kind == 'striped' else 'checks'}")
    return with_article(f"{c} and {c2} {kind} {noun}")


def _lower(ident: Identity, domain: str, rng: random.Random) -> str:
    noun = rng.choice(DOMAIN_LOWER_NOUNS[domain][ident.lower_type])
    c = _colour(rng, ident.lower_colour, domain)
    if ident.lower_type == "skirt":
        return with_article(f"{c} {noun}")
    return f"a pair of {c} {noun}" if rng.random() < (0.4 if domain == "icfg" else 0.2) else f"{c} {noun}"


def _shoes(ident: Identity, domain: str, rng: random.Random) -> str:
    noun = {"icfg": ("leather shoes", "sneakers", "sports shoes"), "rstp": ("shoes", "boots")}.get(domain, SHOE_NOUNS)
    c = _colour(rng, ident.shoes_colour, domain)
    return f"{c} {rng.choice(noun)}"


def _hair(ident: Identity, rng: random.Random) -> str:
    return f"{ident.hair_length} {rng.choice(HAIR_WORDS[ident.hair_colour])} hair"


def _bag(ident: Identity, rng: random.Random) -> str:
    return with_article(f"{colour_word(rng, ident.bag_colour)} {rng.choice(BAG_NOUNS[ident.bag])}")


def _headwear(ident: Identity, rng: random.Random) -> str:
    noun = "cap" if ident.headwear == "cap" else rng.choice(("hat", "sun hat"))
    return with_article(f"{colour_word(rng, ident.headwear_colour)} {noun}")


def _umbrella(ident: Identity, rng: random.Random) -> str:
    return with_article(f"{colour_word(rng, ident.umbrella_colour)} umbrella")


def _sentences(parts: list[str]) -> str:
    out = []
    for text in parts:
        text = text.strip()
        out.append(text[0].upper() + text[1:] + ("" if text.endswith(".") else "."))
    return " ".join(out)


def _carry(ident: Identity, he: str, his: str, rng: random.Random, domain: str = "") -> str:
    bag = _bag(ident, rng)
    if domain == "rstp":
        return f"{he} has {bag} with {'him' if he == 'he' else 'her'}"
    where = {"backpack": f" on {his} back", "handbag": f" in {his} hand", "shoulder bag": f" over {his} shoulder"}
    return f"{he} is carrying {bag}{where[ident.bag] if rng.random() < 0.6 else ''}"


def cuhk_caption(ident: Identity, view: str, rng: random.Random) -> str:
    """CUHK-PEDES style: ~23 words, the clothes in one sentence, one or two extras."""
    he, his, _ = PRONOUNS[ident.gender]
    subject = rng.choice(DOMAIN_SUBJECTS["cuhk"][ident.gender])
    up, low = _upper(ident, "cuhk", rng), _lower(ident, "cuhk", rng)
    shoes = _shoes(ident, "cuhk", rng)
    style = rng.randrange(3)
    if style == 0:
        first = f"a {subject} wearing {up}, {low} and {shoes}"
    elif style == 1:
        first = f"the {subject} is wearing {up} and {low} with {shoes}"
    else:
        first = f"a {subject} with {_hair(ident, rng)} is wearing {up}, {low} and {shoes}"
    extras = []
    if style != 2 and ident.headwear == "none":
        extras.append(f"{he} has {_hair(ident, rng)}")
    if ident.bag != "none":
        extras.append(_carry(ident, he, his, rng))
    if ident.headwear != "none":
        extras.append(f"{he} wears {_headwear(ident, rng)}")
    if ident.umbrella:
        extras.append(f"{he} holds {_umbrella(ident, rng)}")
    if ident.glasses and view != "back":
        extras.append(f"{he} wears glasses")
    rng.shuffle(extras)
    parts = [first] + extras[:rng.randint(1, 2)]
    if sum(len(p.split()) for p in parts) < 18:
        parts.append(rng.choice((f"{he} is walking {rng.choice(SCENES['cuhk'])}", f"{he} is walking forward")))
    return _sentences(parts)


def icfg_caption(ident: Identity, view: str, rng: random.Random) -> str:
    """ICFG-PEDES style: ~37 words, head to toe, every visible attribute, the posture last."""
    he, his, _ = PRONOUNS[ident.gender]
    subject = rng.choice(DOMAIN_SUBJECTS["icfg"][ident.gender])
    head = f"the {subject} has {_hair(ident, rng)}"
    if ident.headwear != "none":
        head += f" under {_headwear(ident, rng)}"
    if ident.glasses and view != "back":
        head += " and wears a pair of glasses"
    upper = f"{he} is wearing {_upper(ident, 'icfg', rng)}" + (f" on {his} upper body" if rng.random() < 0.5 else "")
    parts = [head, upper, f"{rng.choice(('on ' + his + ' lower body ' + he + ' wears', he + ' also wears'))} "
                          f"{_lower(ident, 'icfg', rng)} and {_shoes(ident, 'icfg', rng)}"]
    if ident.bag != "none":
        parts.append(_carry(ident, he, his, rng))
    if ident.umbrella:
        parts.append(f"{he} is holding {_umbrella(ident, rng)} in {his} hand")
    if sum(len(p.split()) for p in parts) < 32:
        parts.append(rng.choice(ICFG_POSTURES).format(he=he, his=his))
    if view == "back" and rng.random() < 0.3:
        parts.append(f"{he} is seen from behind")
    return _sentences(parts)


def rstp_caption(ident: Identity, view: str, rng: random.Random) -> str:
    """RSTPReid style: ~26 words, the person in a scene, then the clothes."""
    he, his, _ = PRONOUNS[ident.gender]
    subject = rng.choice(DOMAIN_SUBJECTS["rstp"][ident.gender])
    action = rng.choice(RSTP_ACTIONS if ident.umbrella else RSTP_ACTIONS_DRY)
    who = f"a {subject}" if ident.headwear != "none" or rng.random() < 0.3 else f"a {subject} with {_hair(ident, rng)}"
    parts = [f"{who} {action}",
             f"{he} {rng.choice(('is dressed in', 'is in', 'has on'))} {_upper(ident, 'rstp', rng)}, "
             f"{_lower(ident, 'rstp', rng)} and {_shoes(ident, 'rstp', rng)}"]
    extras = []
    if ident.bag != "none":
        extras.append(_carry(ident, he, his, rng, "rstp"))
    if ident.umbrella:
        extras.append(f"{he} is holding {_umbrella(ident, rng)}")
    if ident.headwear != "none":
        extras.append(f"{he} has {_headwear(ident, rng)} on {his} head")
    if ident.glasses and view != "back":
        extras.append(f"{he} wears glasses")
    rng.shuffle(extras)
    parts += extras[:rng.randint(0, 1)]
    if sum(len(p.split()) for p in parts) < 20:
        parts.append(f"{he} {rng.choice(('looks', 'seems'))} to be in a hurry")
    return _sentences(parts)


def noisy_caption(ident: Identity, view: str, rng: random.Random, domain: str) -> str:
    """A pretraining caption: short and unstructured (alt-text, tag lists), naming one to
    four visible attributes; 10 % name one colour wrong and 20 % lose a word."""
    attrs = [
        f"{colour_word(rng, ident.upper_colour)} {rng.choice(DOMAIN_UPPER_NOUNS[domain][ident.upper_type])}",
        f"{colour_word(rng, ident.lower_colour)} {rng.choice(DOMAIN_LOWER_NOUNS[domain][ident.lower_type])}",
        f"{rng.choice((ident.hair_length, rng.choice(HAIR_WORDS[ident.hair_colour])))} hair",
        f"{colour_word(rng, ident.shoes_colour)} shoes",
    ]
    if ident.bag != "none":
        attrs.append(f"{colour_word(rng, ident.bag_colour)} {rng.choice(('bag', rng.choice(BAG_NOUNS[ident.bag])))}")
    if ident.headwear != "none":
        attrs.append(f"{colour_word(rng, ident.headwear_colour)} {ident.headwear}")
    if ident.glasses and view != "back":
        attrs.append("glasses")
    if ident.umbrella:
        attrs.append(f"{colour_word(rng, ident.umbrella_colour)} umbrella")
    chosen = rng.sample(attrs, rng.randint(1, min(4, len(attrs))))
    if rng.random() < 0.1:  # label noise: one colour word is wrong
        k = rng.randrange(len(chosen))
        words = chosen[k].split()
        if words[0] in COLOURS:
            words[0] = rng.choice([c for c in COLOURS if c != words[0]])
            chosen[k] = " ".join(words)
    who = rng.choice(("person", "pedestrian", ident.gender, "someone", "people"))
    form = rng.randrange(4)
    if form == 0:
        text = f"{who}, " + ", ".join(chosen)
    elif form == 1:
        text = f"{rng.choice(('photo of', 'image of', 'cctv'))} {who} {rng.choice(SCENES[domain])} " + " ".join(chosen)
    elif form == 2:
        text = f"{who} in " + " and ".join(chosen)
    else:
        text = " ".join(chosen) + f" {rng.choice(('camera', 'cam'))} {rng.randint(1, 15)}"
    words = text.split()
    if len(words) > 3 and rng.random() < 0.2:
        del words[rng.randrange(1, len(words))]
    return " ".join(words)


#: caption style name -> caption function (identity, view, rng)
CAPTION_STYLES: dict[str, Callable[[Identity, str, random.Random], str]] = {
    "cuhk": cuhk_caption,
    "icfg": icfg_caption,
    "rstp": rstp_caption,
}
