"""Drawing one ToyPEDES image of an identity with PIL.

Images are 192 x 64 (H x W). They are drawn at twice that size and downscaled with Lanczos
for anti-aliasing. Body geometry is in units of the person's height ``ph`` from the top of
the head, so garment regions are known exactly (the tests read the torso colour there).
Every random choice comes from the ``random.Random`` / numpy generator passed in, which the
generator seeds from (seed, pid, image index): an image does not depend on process or order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from upperson.data.toypedes.attributes import HAIR_PALETTE, PALETTE, SKIN_TONES, Identity

HEIGHT, WIDTH = 192, 64
SUPERSAMPLE = 2

RGB = tuple[int, int, int]
BACKGROUNDS = ("solid", "gradient", "noise", "street")


@dataclass(frozen=True)
class RenderStyle:
    """A domain's camera: background, lighting, scale, occlusion and resolution. ``None`` (the
    original ToyPEDES) draws exactly as before; a style draws its extra random numbers after."""

    backgrounds: tuple[float, float, float, float]  # weights of BACKGROUNDS
    background_level: tuple[int, int]  # grey level range of the background
    scale: tuple[float, float]  # person height / image height
    shift: float  # horizontal offset, fraction of the width
    brightness: tuple[float, float]
    contrast: tuple[float, float]
    cast: tuple[float, float, float]  # per-channel gain of the light (RGB)
    saturation: tuple[float, float]
    blur: float  # probability of a blur
    occlusion: float  # probability of an occluder
    low_res: float  # probability the camera saw the person at half resolution
    noise: float  # sensor noise, grey levels (std)

    def __post_init__(self) -> None:
        for name in ("scale", "brightness", "contrast", "saturation", "background_level"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"RenderStyle.{name} must be an increasing non-negative range, got {(lo, hi)}")
        if len(self.backgrounds) != len(BACKGROUNDS) or min(self.backgrounds) < 0 or sum(self.backgrounds) <= 0:
            raise ValueError(f"RenderStyle.backgrounds: {len(BACKGROUNDS)} non-negative weights, "
                             f"got {self.backgrounds}")
        if self.scale[1] > 1 or not all(0 <= p <= 1 for p in (self.blur, self.occlusion, self.low_res)):
            raise ValueError("RenderStyle: scale <= 1 and probabilities in [0, 1]")


@dataclass
class View:
    """How one image shows its identity (the caption generator reads this too)."""

    view: str  # "front", "back" or "side"
    occluder: str  # "none", "box" or "pole"
    occluder_side: int  # -1 left, +1 right, 0 none
    torso_core: tuple[int, int, int, int]  # (x0, y0, x1, y1) in final pixels: inside the upper garment

    def to_dict(self) -> dict:
        return {"view": self.view, "occluder": self.occluder, "torso_core": list(self.torso_core)}


def _shade(c: RGB, f: float) -> RGB:
    return tuple(int(max(0, min(255, round(v * f)))) for v in c)  # type: ignore[return-value]


def _muted(rng: random.Random, lo: int = 95, hi: int = 190) -> RGB:
    """A background colour: a grey with a small random tint."""
    base = rng.randint(lo, hi)
    return tuple(int(max(0, min(255, base + rng.randint(-18, 18)))) for _ in range(3))  # type: ignore[return-value]


def _background(rng: random.Random, nprng: np.random.Generator, w: int, h: int,
                style: Optional[RenderStyle] = None) -> Image.Image:
    if style is None:
        kind = rng.choice(BACKGROUNDS)
        lo, hi = 95, 190
    else:
        kind = rng.choices(BACKGROUNDS, weights=style.backgrounds)[0]
        lo, hi = style.background_level
    if kind == "solid":
        return Image.new("RGB", (w, h), _muted(rng, lo, hi))
    if kind == "gradient":
        a, b = np.array(_muted(rng, lo, hi), float), np.array(_muted(rng, lo, hi), float)
        t = np.linspace(0, 1, h)[:, None, None]
        arr = np.broadcast_to(a * (1 - t) + b * t, (h, w, 3))
        return Image.fromarray(np.ascontiguousarray(arr).round().astype(np.uint8))
    if kind == "noise":
        base = np.array(_muted(rng, lo, hi), float)
        arr = base + nprng.normal(0, 12, (h, w, 1)) + nprng.normal(0, 4, (h, w, 3))
        return Image.fromarray(arr.clip(0, 255).round().astype(np.uint8))
    # street: a wall with a window or door, then pavement bands
    dl = 0 if style is None else (lo + hi) // 2 - 142  # a darker or brighter street than the original's
    img = Image.new("RGB", (w, h), _muted(rng, 110 + dl, 185 + dl))
    d = ImageDraw.Draw(img)
    horizon = int(h * rng.uniform(0.55, 0.7))
    if rng.random() < 0.6:
        x0 = rng.randint(-w // 4, w // 2)
        d.rectangle([x0, int(h * 0.12), x0 + int(w * 0.45), horizon - int(h * 0.08)], fill=_muted(rng, 60 + dl, 120 + dl))
    band = max(4, int(h * rng.uniform(0.03, 0.06)))
    shades = (_muted(rng, 100 + dl, 150 + dl), _muted(rng, 130 + dl, 175 + dl))
    for i, y in enumerate(range(horizon, h, band)):
        d.rectangle([0, y, w, y + band], fill=shades[i % 2])
    return img


class _Person:
    """Coordinates of a person in the supersampled canvas."""

    def __init__(self, cx: float, top: float, ph: float, build: float):
        self.cx, self.top, self.ph, self.b = cx, top, ph, build

    def x(self, f: float) -> float:
        return self.cx + f * self.ph

    def y(self, f: float) -> float:
        return self.top + f * self.ph

    def box(self, x0: float, y0: float, x1: float, y1: float) -> list[float]:
        return [self.x(x0), self.y(y0), self.x(x1), self.y(y1)]

    def poly(self, pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(self.x(a), self.y(b)) for a, b in pts]


def render(ident: Identity, view: str, rng: random.Random, nprng: np.random.Generator,
           style: Optional[RenderStyle] = None) -> tuple[Image.Image, View]:
    """Draw ``ident`` seen from ``view``; returns the 64 x 192 RGB image and what it shows.
    ``style`` is a domain's camera (:class:`RenderStyle`); ``None`` is the original ToyPEDES."""
    S = SUPERSAMPLE
    W, H = WIDTH * S, HEIGHT * S
    img = _background(rng, nprng, W, H, style)
    d = ImageDraw.Draw(img)

    scale = (0.80, 0.92) if style is None else style.scale
    shift = 0.06 if style is None else style.shift
    ph = H * rng.uniform(*scale) * (0.9 if ident.umbrella else 1.0)
    bottom = H * (1 - rng.uniform(0.01, 0.05))
    top = bottom - ph
    cx = W / 2 + rng.uniform(-shift, shift) * W
    b = ident.build * (0.93 if ident.gender == "woman" else 1.0)
    p = _Person(cx, top, ph, b)

    skin = SKIN_TONES[ident.skin]
    hair = HAIR_PALETTE[ident.hair_colour]
    upper = PALETTE[ident.upper_colour]
    lower = PALETTE[ident.lower_colour]
    shoes = PALETTE[ident.shoes_colour]
    bag = PALETTE[ident.bag_colour] if ident.bag != "none" else (0, 0, 0)
    side_view = view == "side"
    facing = rng.choice((-1, 1))  # side view: the way the person faces
    # the hand that holds a handbag / where a shoulder bag hangs, in image coordinates
    bag_side = rng.choice((-1, 1)) if not side_view else -facing

    # ground shadow
    d.ellipse(p.box(-0.16, 0.955, 0.16, 0.995), fill=_shade(_muted(rng, 70, 110), 0.8))

    # --- back-pack and hair behind the body
    if ident.bag == "backpack" and side_view:
        d.rounded_rectangle(sorted_box(p, -facing * 0.07, 0.18, -facing * 0.17, 0.45), radius=0.02 * ph, fill=bag)
    if ident.hair_length == "long" and view == "front":
        d.rectangle(p.box(-0.075, 0.03, 0.075, 0.22), fill=hair)

    # --- legs, lower garment, shoes
    hip = 0.11 * b if not side_view else 0.08 * b
    leg_w = 0.085 * b if not side_view else 0.075 * b
    if side_view:
        step = rng.uniform(0.04, 0.08)
        legs = [(-step, 0.0), (step, 0.0)]
    else:
        legs = [(-0.055 * b, 0.0), (0.055 * b, 0.0)]
    lower_end = {"trousers": 0.925, "jeans": 0.925, "shorts": 0.71, "skirt": 0.72}[ident.lower_type]
    for lx, _ in legs:  # skin legs under shorts and skirts
        d.polygon(p.poly([(lx - leg_w / 2, 0.55), (lx + leg_w / 2, 0.55), (lx + leg_w / 2.4, 0.93), (lx - leg_w / 2.4, 0.93)]), fill=skin)
    if ident.lower_type == "skirt":
        d.polygon(p.poly([(-hip, 0.49), (hip, 0.49), (hip + 0.05, 0.72), (-hip - 0.05, 0.72)]), fill=lower)
    else:
        d.rectangle(p.box(-hip, 0.49, hip, 0.58), fill=lower)
        for lx, _ in legs:
            d.polygon(p.poly([(lx - leg_w / 2 - 0.005, 0.55), (lx + leg_w / 2 + 0.005, 0.55),
                              (lx + leg_w / 2, lower_end), (lx - leg_w / 2, lower_end)]), fill=lower)
        if ident.lower_type == "jeans" and view == "front":
            for lx, _ in legs:
                d.line([(p.x(lx), p.y(0.6)), (p.x(lx), p.y(0.9))], fill=_shade(lower, 1.3), width=max(1, int(0.006 * ph)))
    for lx, _ in legs:
        toe = facing * 0.03 if side_view else 0.0
        d.ellipse(sorted_box(p, lx - 0.05 + min(toe, 0), 0.915, lx + 0.05 + max(toe, 0), 0.975), fill=shoes)

    # --- upper garment (torso + sleeves) as a mask, so patterns stay on the garment
    mask = Image.new("L", (W, H), 0)
    md = ImageDraw.Draw(mask)
    sh = 0.13 * b if not side_view else 0.085 * b
    waist = (0.11 if not side_view else 0.08) * b * (0.88 if ident.gender == "woman" else 1.0)
    hem = 0.62 if ident.upper_type == "coat" else 0.52
    md.polygon(p.poly([(-sh, 0.155), (sh, 0.155), (waist + (0.02 if hem > 0.6 else 0), hem), (-waist - (0.02 if hem > 0.6 else 0), hem)]), fill=255)
    long_sleeves = ident.upper_type != "t-shirt"
    sleeve_end = 0.47 if long_sleeves else 0.27
    arm_w = 0.05 * b
    arms = [facing * 0.0] if side_view else [-1, 1]
    arm_boxes = []
    for a in arms:
        if side_view:
            ax0, ax1 = -arm_w / 2 + facing * 0.02, arm_w / 2 + facing * 0.02
        else:
            ax0, ax1 = (sh - 0.004, sh - 0.004 + arm_w) if a > 0 else (-sh + 0.004 - arm_w, -sh + 0.004)
        arm_boxes.append((ax0, ax1))
        # forearm and hand (skin) first, the sleeve over it
        d.rectangle(p.box(ax0 + 0.004, 0.25, ax1 - 0.004, 0.47), fill=skin)
        d.ellipse(p.box(ax0, 0.455, ax1, 0.505), fill=skin)
        md.rectangle(p.box(ax0, 0.16, ax1, sleeve_end), fill=255)
    garment = Image.new("RGB", (W, H), upper)
    if ident.upper_pattern != "plain":
        gd = ImageDraw.Draw(garment)
        second = PALETTE[ident.pattern_colour]
        period = 0.07 * ph
        if ident.upper_pattern == "striped":
            thick = 0.018 * ph
            y = p.y(0.17)
            while y < p.y(hem):
                gd.rectangle([0, y, W, y + thick], fill=second)
                y += period
        else:
            period = 0.085 * ph
            thick = 0.009 * ph
            y = p.y(0.17)
            while y < p.y(hem):
                gd.rectangle([0, y, W, y + thick], fill=second)
                y += period
            x = p.x(-0.2) + rng.uniform(0, period)
            while x < p.x(0.2):
                gd.rectangle([x, 0, x + thick, H], fill=second)
                x += period
    img.paste(garment, (0, 0), mask)
    if ident.upper_type in ("jacket", "coat") and view == "front":
        d.line([(p.x(0), p.y(0.16)), (p.x(0), p.y(hem))], fill=_shade(upper, 0.6), width=max(1, int(0.008 * ph)))
    if ident.upper_type == "shirt" and view == "front":
        d.polygon(p.poly([(-0.035, 0.15), (0.035, 0.15), (0, 0.19)]), fill=_shade(upper, 0.75))
    if ident.upper_type == "hoodie" and view == "back":
        d.ellipse(p.box(-0.07, 0.13, 0.07, 0.22), fill=_shade(upper, 0.85))

    # --- neck, head, hair, headwear, glasses
    d.rectangle(p.box(-0.022, 0.11, 0.022, 0.165), fill=skin)
    hx = facing * 0.008 if side_view else 0.0
    d.ellipse(p.box(hx - 0.055, 0.0, hx + 0.055, 0.13), fill=skin)
    if view == "back":
        d.ellipse(p.box(-0.058, -0.005, 0.058, 0.118), fill=hair)
        if ident.hair_length == "long":
            d.rectangle(p.box(-0.065, 0.06, 0.065, 0.25), fill=hair)
            d.ellipse(p.box(-0.065, 0.2, 0.065, 0.28), fill=hair)
    elif side_view:
        d.chord(p.box(hx - 0.058, -0.006, hx + 0.058, 0.1), 180, 360, fill=hair)
        back = -facing
        d.rectangle(sorted_box(p, hx + back * 0.058, 0.02, hx + back * 0.01, 0.09 if ident.hair_length == "short" else 0.24), fill=hair)
    else:
        d.chord(p.box(-0.058, -0.006, 0.058, 0.09), 180, 360, fill=hair)
        if ident.hair_length == "long":
            d.rectangle(p.box(-0.064, 0.03, -0.045, 0.2), fill=hair)
            d.rectangle(p.box(0.045, 0.03, 0.064, 0.2), fill=hair)
    if ident.headwear != "none":
        hc = PALETTE[ident.headwear_colour]
        if ident.headwear == "cap":
            d.chord(p.box(hx - 0.06, -0.012, hx + 0.06, 0.085), 180, 360, fill=hc)
            if view == "front":
                d.ellipse(p.box(-0.065, 0.025, 0.065, 0.05), fill=_shade(hc, 0.8))
            elif side_view:
                d.rectangle(sorted_box(p, hx + facing * 0.03, 0.028, hx + facing * 0.1, 0.042), fill=_shade(hc, 0.8))
        else:
            d.rectangle(p.box(hx - 0.05, -0.035, hx + 0.05, 0.035), fill=hc)
            d.ellipse(p.box(hx - 0.105, 0.02, hx + 0.105, 0.05), fill=_shade(hc, 0.85))
    if ident.glasses and view != "back":
        gl = (20, 20, 25)
        if side_view:
            d.rectangle(sorted_box(p, hx + facing * 0.02, 0.055, hx + facing * 0.056, 0.075), fill=gl)
        else:
            d.rectangle(p.box(-0.048, 0.052, -0.008, 0.077), fill=gl)
            d.rectangle(p.box(0.008, 0.052, 0.048, 0.077), fill=gl)
            d.rectangle(p.box(-0.01, 0.057, 0.01, 0.063), fill=gl)

    # --- bags and umbrella in front of the body
    if ident.bag == "backpack":
        if view == "back":
            d.rounded_rectangle(p.box(-0.095, 0.18, 0.095, 0.46), radius=0.025 * ph, fill=bag)
            d.rectangle(p.box(-0.07, 0.36, 0.07, 0.38), fill=_shade(bag, 0.7))
        elif view == "front":
            for s in (-1, 1):
                d.rectangle(sorted_box(p, s * 0.062, 0.155, s * 0.086, 0.4), fill=bag)
    elif ident.bag == "handbag":
        if side_view:
            hand_x = facing * 0.02
        else:
            ax0, ax1 = arm_boxes[0 if bag_side < 0 else 1]
            hand_x = (ax0 + ax1) / 2
        d.arc(p.box(hand_x - 0.03, 0.46, hand_x + 0.03, 0.54), 180, 360, fill=_shade(bag, 0.7), width=max(1, int(0.008 * ph)))
        d.polygon(p.poly([(hand_x - 0.045, 0.5), (hand_x + 0.045, 0.5), (hand_x + 0.055, 0.6), (hand_x - 0.055, 0.6)]), fill=bag)
    elif ident.bag == "shoulder bag":
        s = bag_side
        d.line([(p.x(-s * sh * 0.8), p.y(0.16)), (p.x(s * 0.13), p.y(0.46))], fill=bag, width=max(1, int(0.018 * ph)))
        d.rounded_rectangle(sorted_box(p, s * 0.1, 0.44, s * 0.2, 0.55), radius=0.01 * ph, fill=bag)
    if ident.umbrella:
        uc = PALETTE[ident.umbrella_colour]
        us = -bag_side if not side_view else facing
        ux = us * 0.1
        d.line([(p.x(ux), p.y(-0.03)), (p.x(us * 0.17), p.y(0.47))], fill=(60, 60, 60), width=max(1, int(0.01 * ph)))
        d.pieslice(p.box(ux - 0.24, -0.12, ux + 0.24, 0.04), 180, 360, fill=uc)

    # --- occluder at one side, away from a bag; it never reaches the torso core
    occluder, occ_side = "none", 0
    if rng.random() < (0.15 if style is None else style.occlusion):
        occluder = rng.choice(("box", "pole"))
        occ_side = -bag_side if ident.bag in ("handbag", "shoulder bag") else rng.choice((-1, 1))
        grey = _muted(rng, 70, 170)
        if occluder == "box":
            edge = p.x(occ_side * rng.uniform(0.09, 0.13))
            x0, x1 = (edge, W) if occ_side > 0 else (0, edge)
            d.rectangle([x0, p.y(rng.uniform(0.45, 0.7)), x1, H], fill=grey)
        else:
            px = p.x(occ_side * rng.uniform(0.1, 0.2))
            pw = 0.03 * ph
            d.rectangle([px - pw / 2, 0, px + pw / 2, H], fill=_shade(grey, 0.6))

    # torso core: the middle of the upper garment, away from arms, straps and long hair
    core_w = 0.06 if not side_view else 0.03
    core_x = 0.0 if not side_view else -facing * 0.03
    cx0, cy0, cx1, cy1 = p.box(core_x - core_w, 0.23, core_x + core_w, 0.45)

    img = img.resize((WIDTH, HEIGHT), Image.LANCZOS)
    bright = (0.87, 1.13) if style is None else style.brightness
    contrast = (0.87, 1.13) if style is None else style.contrast
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(*bright))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(*contrast))
    if rng.random() < (0.25 if style is None else style.blur):
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 0.9)))
    if style is not None:
        img = _camera(img, style, rng, nprng)
    core = (int(cx0 / S + 1), int(cy0 / S + 1), int(cx1 / S - 1), int(cy1 / S - 1))
    return img, View(view=view, occluder=occluder, occluder_side=occ_side, torso_core=core)


def _camera(img: Image.Image, style: RenderStyle, rng: random.Random, nprng: np.random.Generator) -> Image.Image:
    """A domain camera's colour: saturation, the light's colour cast, half resolution, sensor noise."""
    img = ImageEnhance.Color(img).enhance(rng.uniform(*style.saturation))
    if rng.random() < style.low_res:
        img = img.resize((WIDTH // 2, HEIGHT // 2), Image.BILINEAR).resize((WIDTH, HEIGHT), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float64) * np.asarray(style.cast)
    if style.noise > 0:
        arr = arr + nprng.normal(0.0, style.noise, arr.shape)
    return Image.fromarray(arr.clip(0, 255).round().astype(np.uint8))


def sorted_box(p: _Person, x0: float, y0: float, x1: float, y1: float) -> list[float]:
    """A box from two x offsets in either order."""
    return p.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
