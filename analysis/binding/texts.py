"""The captions of a binding pair: the generator's own fine captions, or a fixed template.

The template uses each attribute's usual word (the first of the generator's word lists) and no
random choice, so the caption of an identity and of its twin differ in the probed words only:
that makes the text-side twin (one image, its caption against the twin's caption) a minimal pair.
"""

from __future__ import annotations

import random
import re
from typing import Optional

from upperson.data.toypedes.attributes import Identity
from upperson.data.toypedes.captions import (BAG_NOUNS, COLOUR_WORDS, DOMAIN_LOWER_NOUNS, HAIR_WORDS, LOWER_NOUNS,
                                             UPPER_NOUNS, UPPER_PHRASE, canonical_colour, with_article)
from upperson.data.toypedes.domains import domain_fine_caption

#: caption sources: ``fine`` = the generator's fine caption (a domain's annotators with a domain:
#: :func:`upperson.data.toypedes.domains.domain_fine_caption`); ``template`` = :func:`template_caption`
CAPTION_MODES = ("fine", "template")
#: fine captions drawn for one pair until one names the probed attribute (the generator may drop a sentence)
MAX_CAPTION_TRIES = 50


def _upper(ident: Identity) -> str:
    c, noun = COLOUR_WORDS[ident.upper_colour][0], UPPER_NOUNS[ident.upper_type][0]
    if ident.upper_pattern == "plain":
        return with_article(f"{c} {noun}")
    return with_article(f"{c} and {COLOUR_WORDS[ident.pattern_colour][0]} {ident.upper_pattern} {noun}")


def _lower(ident: Identity) -> str:
    phrase = f"{COLOUR_WORDS[ident.lower_colour][0]} {LOWER_NOUNS[ident.lower_type][0]}"
    return with_article(phrase) if ident.lower_type == "skirt" else phrase


def template_caption(ident: Identity, probe: str) -> str:
    """One fixed sentence naming the garments' colours and the probed attribute, e.g.
    "a man wearing a green t-shirt and black shorts, holding a red umbrella"."""
    text = f"a {ident.gender}"
    if probe == "hair":
        text += f" with {ident.hair_length} {HAIR_WORDS[ident.hair_colour][0]} hair,"
    text += f" wearing {_upper(ident)} and {_lower(ident)}"
    if probe == "bag" and ident.bag != "none":
        text += f", carrying {with_article(COLOUR_WORDS[ident.bag_colour][0] + ' ' + BAG_NOUNS[ident.bag][0])}"
    if probe == "umbrella" and ident.umbrella:
        text += f", holding {with_article(COLOUR_WORDS[ident.umbrella_colour][0] + ' umbrella')}"
    return text


def _words(options) -> str:
    return "|".join(re.escape(w) for w in sorted(options, key=len, reverse=True))


def names_probe(caption: str, ident: Identity, probe: str, domain: Optional[str] = None) -> bool:
    """Whether ``caption`` states what ``probe`` tests of ``ident`` (the generator drops sentences
    from a long caption, so a fine caption may leave out the lower garment, the bag or the hair;
    ``domain``: its annotators' garment nouns count too)."""
    text = caption.lower()
    if probe == "swap":
        m = UPPER_PHRASE.search(caption)
        nouns = set(LOWER_NOUNS[ident.lower_type]) | set(DOMAIN_LOWER_NOUNS.get(domain, {}).get(ident.lower_type, ()))
        lower = rf"\b({_words(COLOUR_WORDS[ident.lower_colour])}) ({_words(nouns)})\b"
        return (m is not None and canonical_colour(m.group(1)) == ident.upper_colour
                and re.search(lower, text) is not None)
    if probe == "hair":
        return re.search(rf"\b({_words(HAIR_WORDS[ident.hair_colour])}) hair\b", text) is not None
    if probe == "bag":
        return ident.bag != "none" and re.search(rf"\b({_words(BAG_NOUNS[ident.bag])})\b", text) is not None
    if probe == "umbrella":
        return ident.umbrella and "umbrella" in text
    raise ValueError(f"unknown probe {probe!r}")


def probe_caption(ident: Identity, view: str, probe: str, mode: str, namespace: str,
                  domain: Optional[str] = None) -> str:
    """The query of a pair: the generator's fine caption (``domain``'s style; the first, of seeds
    ``namespace/0``, ``/1``, ..., that names the probed attribute) or the template."""
    if mode == "template":
        return template_caption(ident, probe)
    if mode != "fine":
        raise ValueError(f"unknown caption mode {mode!r}; choose from {', '.join(CAPTION_MODES)}")
    caption_of = domain_fine_caption(domain)
    for j in range(MAX_CAPTION_TRIES):
        caption = caption_of(ident, view, random.Random(f"{namespace}/{j}"))
        if names_probe(caption, ident, probe, domain):
            return caption
    raise RuntimeError(f"no fine caption of {MAX_CAPTION_TRIES} names the {probe} probe's attribute ({namespace}); "
                       "use --captions template")
