"""Minimal pairs drawn with the ToyPEDES generator: an identity and its twin that differ in one binding.

For each pair an identity ``A`` is drawn from the generator's own distribution
(:func:`~upperson.data.toypedes.attributes.sample_identity`, redrawn until the probe applies) and
its twin ``A'`` is ``A`` with the probed binding changed:

- ``swap``: the upper and lower garment colours exchanged (a plain upper garment, two different
  colours, and jeans only in a jeans colour, so that the twin is a valid ToyPEDES identity);
- ``bag``: ``A`` carries a bag, ``A'`` carries none;
- ``umbrella``: ``A`` holds an umbrella, ``A'`` does not;
- ``hair``: the hair colour changed to another one (no headwear, so the hair is visible).

Both images are rendered by :func:`~upperson.data.toypedes.render.render` from the same view and
the same seeds, so they differ only where the attribute is drawn (an umbrella also makes the
generator draw the person 0.9 times as tall). A render seed that draws an occluder is skipped
(the next one is tried): an occluder could hide the attribute, and after it the generator's
random stream depends on the bag. An identity whose two images come out the same (the probed
attribute is not visible: a front view's backpack straps in the upper garment's colour) is
skipped for the next identity, and counted (:attr:`Pair.skipped`). Everything is seeded by
(``seed``, probe, pair index).

With a ``domain`` (``cuhk``, ``icfg``, ``rstp``: docs/generalization.md) the identities come from
that domain's clothing distribution, the images from its camera, the views from its weights and
the fine captions from its annotators, in the stream ``binding/<seed>/<domain>/<probe>``; the
original ToyPEDES (``None``) keeps its stream and its pairs byte for byte. A probe that a
domain's distribution never draws (an umbrella indoors, ICFG-like) has no pairs there
(:func:`probes_for`).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image

from analysis.binding.texts import probe_caption, template_caption
from upperson.data.toypedes.attributes import HAIR_PALETTE, JEANS_COLOURS, VIEWS, Identity
from upperson.data.toypedes.domains import (check_domain, domain_draws, domain_render_style, domain_views,
                                            sample_domain_identity)
from upperson.data.toypedes.render import render

#: the probes, in table order, with what each changes
PROBES: dict[str, str] = {
    "swap": "upper and lower garment colours exchanged",
    "bag": "a carried bag present vs absent",
    "umbrella": "an umbrella present vs absent",
    "hair": "hair colour changed",
}
#: the attribute fields each probe's twin changes (the tests check that nothing else does)
CHANGED: dict[str, tuple[str, ...]] = {
    "swap": ("upper_colour", "lower_colour"),
    "bag": ("bag", "bag_colour"),
    "umbrella": ("umbrella", "umbrella_colour"),
    "hair": ("hair_colour",),
}
#: probes whose twin caption is a minimal pair too (the template of the twin; a bag or umbrella
#: that is absent has no words to exchange)
TEXT_PROBES = ("swap", "hair")
#: the camera views and their weights, as the generator draws extra views
VIEW_WEIGHTS = (0.4, 0.3, 0.3)
#: identities drawn per pair at most before a probe is declared impossible (never reached: the
#: rarest, an umbrella, is drawn one time in ten)
MAX_DRAWS = 10_000
MAX_RENDERS = 100


def probes_for(domain: Optional[str]) -> tuple[str, ...]:
    """The probes ``domain`` can pose, in table order (an umbrella only where the domain draws one)."""
    return tuple(p for p in PROBES if p != "umbrella" or domain_draws(domain, "umbrella"))


def applies(ident: Identity, probe: str) -> bool:
    """Whether ``probe`` can be asked of ``ident``."""
    if probe == "swap":
        ok_jeans = ident.lower_type != "jeans" or ident.upper_colour in JEANS_COLOURS
        return ident.upper_pattern == "plain" and ident.upper_colour != ident.lower_colour and ok_jeans
    if probe == "bag":
        return ident.bag != "none"
    if probe == "umbrella":
        return ident.umbrella
    if probe == "hair":
        return ident.headwear == "none"
    raise ValueError(f"unknown probe {probe!r}; choose from {', '.join(PROBES)}")


def twin_of(ident: Identity, probe: str, rng: random.Random) -> Identity:
    """``ident`` with the binding ``probe`` tests changed (``rng`` picks the new hair colour)."""
    if not applies(ident, probe):
        raise ValueError(f"the {probe} probe does not apply to this identity")
    if probe == "swap":
        return dataclasses.replace(ident, upper_colour=ident.lower_colour, lower_colour=ident.upper_colour)
    if probe == "bag":
        return dataclasses.replace(ident, bag="none", bag_colour="")
    if probe == "umbrella":
        return dataclasses.replace(ident, umbrella=False, umbrella_colour="")
    others = [c for c in HAIR_PALETTE if c != ident.hair_colour]
    return dataclasses.replace(ident, hair_colour=rng.choice(others))


@dataclass(frozen=True)
class Pair:
    """One minimal pair: the identity, its twin, their images (same view and seeds) and captions."""

    probe: str
    index: int
    identity: Identity
    twin: Identity
    view: str
    render_seed: int  # the first render seed (0, 1, ...) that drew no occluder
    image: Image.Image
    twin_image: Image.Image
    caption: str  # names the identity's probed attribute
    text_caption: Optional[str]  # the text side (TEXT_PROBES): the identity's template caption...
    twin_caption: Optional[str]  # ... against the twin's, which differs in the probed words only; else None
    skipped: int = 0  # identities drawn for this pair and skipped: both images came out the same


def render_pair(ident: Identity, twin: Identity, view: str, namespace: str,
                seed: int, domain: Optional[str] = None) -> tuple[Image.Image, Image.Image, int]:
    """Both images from the same seeds (``domain``'s camera); the first render seed without an occluder."""
    style = domain_render_style(domain)
    for k in range(MAX_RENDERS):
        images, shown = [], []
        for who in (ident, twin):
            img, v = render(who, view, random.Random(f"{namespace}/{k}/image"), np.random.default_rng([seed, k]),
                            style)
            images.append(img)
            shown.append(v.occluder)
        if shown == ["none", "none"]:
            return images[0], images[1], k
    raise RuntimeError(f"{namespace}: every one of {MAX_RENDERS} renders drew an occluder")


def draw_identity(probe: str, rng: random.Random, domain: Optional[str] = None) -> Identity:
    """The next identity of ``rng``'s stream (``domain``'s distribution) that ``probe`` applies to."""
    for _ in range(MAX_DRAWS):
        ident = sample_domain_identity(rng, domain)
        if applies(ident, probe):
            return ident
    raise RuntimeError(f"no identity of {MAX_DRAWS} draws suits the {probe} probe")


def draw_pairs(probe: str, n: int, seed: int = 0, captions: str = "fine", domain: Optional[str] = None) -> list[Pair]:
    """``n`` pairs of ``probe``, deterministic given (probe, n, seed, captions, domain); pair ``i``
    is the same for every ``n > i``."""
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; choose from {', '.join(PROBES)}")
    if probe not in probes_for(domain):
        raise ValueError(f"the {probe} probe does not apply to domain {domain}: its clothing distribution never "
                         f"draws one")
    stream = f"binding/{seed}/{probe}" if check_domain(domain) is None else f"binding/{seed}/{domain}/{probe}"
    rng = random.Random(f"{stream}/identities")
    weights = domain_views(domain, VIEW_WEIGHTS)
    out = []
    for i in range(n):
        ns = f"{stream}/{i}"
        view = random.Random(f"{ns}/view").choices(VIEWS, weights=weights)[0]
        for skipped in range(MAX_DRAWS):
            ident = draw_identity(probe, rng, domain)
            twin = twin_of(ident, probe, rng)
            image, twin_image, k = render_pair(ident, twin, view, ns, seed * 1_000_003 + i, domain)
            if image.tobytes() != twin_image.tobytes():
                break
        else:
            raise RuntimeError(f"{ns}: the probed attribute was invisible in {MAX_DRAWS} identities")
        caption = probe_caption(ident, view, probe, captions, f"{ns}/caption", domain)
        texts = (template_caption(ident, probe), template_caption(twin, probe)) if probe in TEXT_PROBES else (None, None)
        out.append(Pair(probe, i, ident, twin, view, k, image, twin_image, caption, *texts, skipped))
    return out
