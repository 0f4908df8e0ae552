"""ToyPEDES captions: a small grammar with paraphrases, synonyms and varied order.

A caption states only what its image shows (no glasses in a back view). Fine captions are
15-50 words like CUHK-PEDES; weak captions (the pretraining corpus) are short and name one
to three attributes. The upper garment's colour always comes right before its noun, as in
"a red t-shirt" or "a red and white striped t-shirt" (:data:`UPPER_PHRASE` parses it).
"""

from __future__ import annotations

import random
import re

from upperson.data.toypedes.attributes import COLOURS, Identity

#: caption words for each canonical colour (the first is the usual one)
COLOUR_WORDS: dict[str, tuple[str, ...]] = {c: (c,) for c in COLOURS}
COLOUR_WORDS["grey"] = ("grey", "gray")
COLOUR_WORDS["purple"] = ("purple", "violet")
HAIR_WORDS: dict[str, tuple[str, ...]] = {
    "black": ("black", "dark"),
    "brown": ("brown",),
    "blonde": ("blonde", "blond", "fair"),
    "grey": ("grey", "gray", "silver"),
}
UPPER_NOUNS: dict[str, tuple[str, ...]] = {
    "t-shirt": ("t-shirt", "tee", "short-sleeved t-shirt"),
    "shirt": ("shirt", "long-sleeved shirt", "button-up shirt"),
    "jacket": ("jacket", "zip-up jacket"),
    "coat": ("coat", "long coat"),
    "sweater": ("sweater", "jumper", "pullover"),
    "hoodie": ("hoodie", "hooded sweatshirt"),
}
LOWER_NOUNS: dict[str, tuple[str, ...]] = {
    "trousers": ("trousers", "pants", "slacks"),
    "jeans": ("jeans", "denim jeans"),
    "shorts": ("shorts",),
    "skirt": ("skirt", "knee-length skirt"),
}
SHOE_NOUNS = ("shoes", "sneakers", "trainers")
BAG_NOUNS: dict[str, tuple[str, ...]] = {
    "backpack": ("backpack", "rucksack"),
    "handbag": ("handbag", "purse"),
    "shoulder bag": ("shoulder bag", "crossbody bag", "messenger bag"),
}
SUBJECTS: dict[str, tuple[str, ...]] = {
    "man": ("man", "young man", "male", "guy", "gentleman", "boy"),
    "woman": ("woman", "young woman", "female", "lady", "girl"),
}
PRONOUNS = {"man": ("he", "his", "him"), "woman": ("she", "her", "her")}

#: the domains' own nouns for the same garments (docs/generalization.md): domain -> type -> nouns
DOMAIN_UPPER_NOUNS: dict[str, dict[str, tuple[str, ...]]] = {
    "cuhk": {"t-shirt": ("t-shirt", "tee", "short-sleeved shirt"), "shirt": ("shirt", "long-sleeved shirt"),
             "jacket": ("jacket",), "coat": ("coat",), "sweater": ("sweater",), "hoodie": ("hoodie",)},
    "icfg": {"t-shirt": ("short-sleeved t-shirt", "short-sleeved top"),
             "shirt": ("long-sleeved shirt", "button-up shirt"),
             "jacket": ("down jacket", "zip-up jacket", "windbreaker"),
             "coat": ("long coat", "overcoat", "trench coat"),
             "sweater": ("knitted sweater", "pullover"), "hoodie": ("hooded sweatshirt", "hooded jacket")},
    "rstp": {"t-shirt": ("t-shirt", "short-sleeved top"), "shirt": ("shirt", "long-sleeved top"),
             "jacket": ("jacket", "thin jacket"), "coat": ("coat", "long coat"), "sweater": ("sweater", "jumper"),
             "hoodie": ("hoodie", "sweatshirt")},
}
DOMAIN_LOWER_NOUNS: dict[str, dict[str, tuple[str, ...]]] = {
    "cuhk": {"trousers": ("pants", "trousers"), "jeans": ("jeans",), "shorts": ("shorts",), "skirt": ("skirt",)},
    "icfg": {"trousers": ("trousers", "casual trousers", "slacks"), "jeans": ("denim jeans", "jeans"),
             "shorts": ("knee-length shorts", "shorts"), "skirt": ("knee-length skirt", "pleated skirt")},
    "rstp": {"trousers": ("pants", "long pants"), "jeans": ("jeans",), "shorts": ("shorts",),
             "skirt": ("skirt", "dress skirt")},
}

_ALL_COLOUR_WORDS = sorted({w for ws in COLOUR_WORDS.values() for w in ws}, key=len, reverse=True)
_ALL_UPPER_NOUNS = sorted({w for ws in UPPER_NOUNS.values() for w in ws}
                          | {w for nouns in DOMAIN_UPPER_NOUNS.values() for ws in nouns.values() for w in ws},
                          key=len, reverse=True)
_C = "|".join(re.escape(w) for w in _ALL_COLOUR_WORDS)
#: matches the upper garment phrase; group 1 is its main colour word, group 2 the noun
UPPER_PHRASE = re.compile(
    rf"\b({_C})(?: and (?:{_C}) (?:striped|checked|plaid))? ({'|'.join(re.escape(w) for w in _ALL_UPPER_NOUNS)})\b",
    re.IGNORECASE,
)


def canonical_colour(word: str) -> str:
    """The palette name of a colour word ("gray" -> "grey")."""
    word = word.lower()
    for name, words in COLOUR_WORDS.items():
        if word in words:
            return name
    raise KeyError(word)


def colour_word(rng: random.Random, colour: str) -> str:
    """A caption word for a palette colour: the usual one 70 % of the time."""
    words = COLOUR_WORDS[colour]
    return words[0] if len(words) == 1 or rng.random() < 0.7 else rng.choice(words[1:])


def with_article(phrase: str) -> str:
    """``phrase`` with "a" or "an"."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def upper_phrase(ident: Identity, rng: random.Random) -> str:
    noun = rng.choice(UPPER_NOUNS[ident.upper_type])
    c = colour_word(rng, ident.upper_colour)
    if ident.upper_pattern == "plain":
        return with_article(f"{c} {noun}")
    c2 = colour_word(rng, ident.pattern_colour)
    if ident.upper_pattern == "striped":
        if rng.random() < 0.5:
            return with_article(f"{c} {noun} with {c2} stripes")
        return with_article(f"{c} and {c2} striped {noun}")
    if rng.random() < 0.5:
        return with_article(f"{c} {noun} with a {c2} check pattern")
    return with_article(f"{c} and {c2} {rng.choice(('checked', 'plaid'))} {noun}")


def lower_phrase(ident: Identity, rng: random.Random) -> str:
    noun = rng.choice(LOWER_NOUNS[ident.lower_type])
    c = colour_word(rng, ident.lower_colour)
    if ident.lower_type == "skirt":
        return with_article(f"{c} {noun}")
    return f"a pair of {c} {noun}" if rng.random() < 0.3 else f"{c} {noun}"


def hair_phrase(ident: Identity, rng: random.Random) -> str:
    colour = rng.choice(HAIR_WORDS[ident.hair_colour])
    if rng.random() < 0.5:
        return f"{ident.hair_length} {colour} hair"
    return f"{colour} hair that is {ident.hair_length}" if rng.random() < 0.5 else f"{ident.hair_length}, {colour} hair"


def shoes_phrase(ident: Identity, rng: random.Random) -> str:
    noun = rng.choice(SHOE_NOUNS)
    c = colour_word(rng, ident.shoes_colour)
    return f"a pair of {c} {noun}" if rng.random() < 0.4 else f"{c} {noun}"


def bag_phrase(ident: Identity, rng: random.Random) -> str:
    return with_article(f"{colour_word(rng, ident.bag_colour)} {rng.choice(BAG_NOUNS[ident.bag])}")


def headwear_phrase(ident: Identity, rng: random.Random) -> str:
    c = colour_word(rng, ident.headwear_colour)
    if ident.headwear == "cap":
        return with_article(f"{c} {rng.choice(('cap', 'baseball cap'))}")
    return with_article(f"{c} {rng.choice(('hat', 'wide-brimmed hat', 'sun hat'))}")


def umbrella_phrase(ident: Identity, rng: random.Random) -> str:
    return with_article(f"{rng.choice(('', 'open '))}{colour_word(rng, ident.umbrella_colour)} umbrella".lstrip())


def _sentence(text: str) -> str:
    text = text.strip()
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def fine_caption(ident: Identity, view: str, rng: random.Random) -> str:
    """One detailed caption of ``ident`` as seen from ``view`` (15-50 words)."""
    he, his, _ = PRONOUNS[ident.gender]
    subject = rng.choice(SUBJECTS[ident.gender])
    subj = rng.choice((f"a {subject}", f"the {subject}", f"this {subject}"))
    up, low = upper_phrase(ident, rng), lower_phrase(ident, rng)
    wear = rng.choice(("is wearing", "wears", "is dressed in", "has on"))
    # (text, minor): minor attributes may be left out
    extra: list[tuple[str, bool]] = []
    hair_done = False
    style = rng.randrange(4)
    if style == 0:
        opening = f"{subj} {wear} {up} and {low}"
    elif style == 1:
        opening = f"a {subject} in {up} and {low}"
    elif style == 2 and ident.headwear == "none":
        opening = f"{subj} with {hair_phrase(ident, rng)} {wear} {up}"
        hair_done = True
        extra.append((f"{he} also wears {low}", False))
    else:
        opening = f"{subj} {wear} {up}"
        extra.append((rng.choice((f"{he} is wearing {low}", f"{his} lower body is covered by {low}",
                                  f"on {his} lower body {he} wears {low}")), False))
    if view == "back" and rng.random() < 0.4:
        opening += rng.choice((", walking away from the camera", ", seen from behind"))
    elif view == "side" and rng.random() < 0.3:
        opening += ", seen from the side"

    if not hair_done:
        hair = hair_phrase(ident, rng)
        extra.append((f"{he} has {hair}", ident.headwear != "none"))
    extra.append((rng.choice((f"{he} is wearing {shoes_phrase(ident, rng)}", f"{he} wears {shoes_phrase(ident, rng)}",
                              f"on {his} feet are {shoes_phrase(ident, rng)}")), True))
    if ident.headwear != "none":
        extra.append((rng.choice((f"{he} wears {headwear_phrase(ident, rng)}",
                                  f"{he} has {headwear_phrase(ident, rng)} on {his} head")), False))
    if ident.glasses and view != "back":
        extra.append((rng.choice((f"{he} wears glasses", f"{he} is wearing a pair of glasses",
                                  f"{he} has glasses on")), True))
    if ident.bag != "none":
        bag = bag_phrase(ident, rng)
        if ident.bag == "backpack":
            options = (f"{he} is carrying {bag}", f"{he} carries {bag} on {his} back", f"{he} has {bag}")
        elif ident.bag == "handbag":
            options = (f"{he} is carrying {bag}", f"{he} holds {bag} in {his} hand", f"{he} has {bag}")
        else:
            options = (f"{he} is carrying {bag}", f"{he} has {bag} over {his} shoulder", f"{he} carries {bag}")
        extra.append((rng.choice(options), False))
    if ident.umbrella:
        extra.append((rng.choice((f"{he} is holding {umbrella_phrase(ident, rng)}",
                                  f"{he} walks under {umbrella_phrase(ident, rng)}")), False))

    rng.shuffle(extra)
    kept = [(t, minor) for t, minor in extra if not (minor and rng.random() < 0.2)]
    sentences = [_sentence(opening)] + [_sentence(t) for t, _ in kept]

    def words(sents: list[str]) -> int:
        return sum(len(s.split()) for s in sents)

    while words(sentences) > 50 and len(sentences) > 2:  # drop from the end
        sentences.pop()
    fillers = [
        "The person is walking down the street.",
        f"{he.capitalize()} seems to be walking somewhere.",
        f"{he.capitalize()} is standing upright with {his} arms at {his} sides.",
    ]
    rng.shuffle(fillers)
    while words(sentences) < 15 and fillers:
        sentences.append(fillers.pop())
    return " ".join(sentences)


def weak_caption(ident: Identity, view: str, rng: random.Random) -> str:
    """A short, generic caption naming 1-3 visible attributes, for weak pretraining."""
    def noun(options: tuple[str, ...]) -> str:
        return options[0] if rng.random() < 0.7 else rng.choice(options)

    options = [
        f"wearing {with_article(colour_word(rng, ident.upper_colour) + ' ' + noun(UPPER_NOUNS[ident.upper_type]))}",
        f"in {colour_word(rng, ident.lower_colour)} {noun(LOWER_NOUNS[ident.lower_type])}",
        f"with {rng.choice((ident.hair_length, rng.choice(HAIR_WORDS[ident.hair_colour])))} hair",
        f"wearing {colour_word(rng, ident.shoes_colour)} shoes",
    ]
    if ident.bag != "none":
        bag = colour_word(rng, ident.bag_colour) + " " + rng.choice(("bag", noun(BAG_NOUNS[ident.bag])))
        options.append(f"with {with_article(bag)}")
    if ident.headwear != "none":
        options.append(f"wearing {with_article(colour_word(rng, ident.headwear_colour) + ' ' + ident.headwear)}")
    if ident.glasses and view != "back":
        options.append("wearing glasses")
    if ident.umbrella:
        options.append(f"holding {with_article(colour_word(rng, ident.umbrella_colour) + ' umbrella')}")
    chosen = rng.sample(options, rng.randint(1, min(3, len(options))))
    subject = rng.choice(("a person", "someone", "a pedestrian", f"a {ident.gender}"))
    prefix = rng.choice(("a photo of ", "an image of ", "", ""))
    attrs = chosen[0] if len(chosen) == 1 else ", ".join(chosen[:-1]) + " and " + chosen[-1]
    return f"{prefix}{subject} {attrs}"
