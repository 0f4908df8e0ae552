"""Where the prefix is attended to: per image patch, per text token, per layer; and lambda.

The numbers are the model's own attention probabilities, recorded by
``UPPerson.record_attention()`` (the explicit softmax path, the same function as the fused
one). For a query row of layer i, ``m`` is the softmax mass on the P prefix keys (before
S-Prefix's lambda), so the token keys get ``1 - m``. S-Prefix multiplies the prefix
columns by lambda without re-normalising, so the row's output is
``(token part, weight 1 - m) + (prefix part, weight lambda * m)``. Three views of it:

- ``mass``: ``m`` (the softmax probability on the prefix, before lambda);
- ``effective``: ``lambda * m`` (the prefix's weight in the output);
- ``share``: ``lambda * m / ((1 - m) + lambda * m)`` (the prefix's fraction of the row's weight).
"""

from __future__ import annotations

import logging
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from analysis import figure_registry, style
from analysis.indices import parse_indices  # noqa: F401  (re-exported)
from upperson.data import CLIP_MEAN, CLIP_STD, CaptionTokenizer, build_transforms
from upperson.model import UPPerson
from upperson.prefix_attention import record_prefix_mass

log = logging.getLogger(__name__)

QUANTITIES = ("mass", "effective", "share")
QUANTITY_LABELS = {
    "mass": "prefix attention mass m (before λ)",
    "effective": "effective prefix weight λ·m",
    "share": "prefix share λm / ((1−m) + λm)",
}


def prefix_scales(model: UPPerson) -> dict[str, list[float]]:
    """lambda per layer and tower: the model's own :meth:`UPPerson.prefix_scales` (kept for callers)."""
    return model.prefix_scales()


@dataclass
class PrefixAttention:
    """Prefix attention of one image and one caption, every layer and head.

    ``image_mass`` is (layers, heads, 1 + gh*gw): index 0 is CLS, then the patch grid row
    by row. ``text_mass`` is (layers, heads, T), T = the caption's tokens up to ``<end>``.
    Values are ``m`` (before lambda); nan for a layer without a prefix.
    """

    image_mass: np.ndarray
    text_mass: np.ndarray
    scales: dict[str, list[float]]
    grid: tuple[int, int]
    token_labels: list[str]
    image: np.ndarray  # (H, W, 3) in [0, 1], the model's input (resized), for display
    caption: str

    def layer_count(self, tower: str) -> int:
        return (self.image_mass if tower == "image" else self.text_mass).shape[0]

    def values(self, tower: str, quantity: str = "mass", *, layers: Optional[Sequence[int]] = None,
               heads: Optional[Sequence[int]] = None) -> np.ndarray:
        """(layers, positions): ``quantity`` averaged over ``heads`` (all by default)."""
        if quantity not in QUANTITIES:
            raise ValueError(f"unknown quantity {quantity!r}; choose from {', '.join(QUANTITIES)}")
        mass = self.image_mass if tower == "image" else self.text_mass
        layers = list(range(mass.shape[0])) if layers is None else list(layers)
        n_heads = mass.shape[1]
        heads = list(range(n_heads)) if heads is None else list(heads)
        bad = [h for h in heads if not 0 <= h < n_heads]
        if bad:
            raise ValueError(f"{tower} tower has {n_heads} heads (0..{n_heads - 1}); no head {bad}")
        lam = np.asarray(self.scales[tower], dtype=np.float64)[layers][:, None, None]
        m = mass[layers][:, heads].astype(np.float64)
        if quantity == "effective":
            v = lam * m
        elif quantity == "share":
            v = lam * m / ((1.0 - m) + lam * m)
        else:
            v = m
        return v.mean(axis=1)

    def patch_maps(self, quantity: str = "mass", *, layers=None, heads=None) -> np.ndarray:
        """(layers, gh, gw): the patches' values (CLS left out) on the image grid."""
        v = self.values("image", quantity, layers=layers, heads=heads)
        gh, gw = self.grid
        return v[:, 1:].reshape(v.shape[0], gh, gw)


def token_labels(tokens: torch.Tensor, tokenizer: CaptionTokenizer) -> list[str]:
    """A readable label per token of one row, up to and including ``<end>``."""
    ids = [int(t) for t in tokens.tolist()]
    end = ids.index(tokenizer.eot_id) if tokenizer.eot_id in ids else len(ids) - 1
    labels = []
    for t in ids[: end + 1]:
        if t == tokenizer.sot_id:
            labels.append("<start>")
        elif t == tokenizer.eot_id:
            labels.append("<end>")
        else:
            labels.append(tokenizer.decode(torch.tensor([t])) or f"#{t}")
    return labels


def display_image(pixels: torch.Tensor) -> np.ndarray:
    """A normalised (3, H, W) tensor back to an (H, W, 3) array in [0, 1]."""
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (pixels.detach().float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


@torch.no_grad()
def compute_prefix_attention(model: UPPerson, pixels: torch.Tensor, tokens: torch.Tensor,
                             tokenizer: CaptionTokenizer, caption: str = "") -> PrefixAttention:
    """Run the model on one image ``(3, H, W)`` and one token row ``(context,)`` and record
    how much every query attends to the prefix, in every layer of both towers
    (:func:`upperson.prefix_attention.record_prefix_mass`)."""
    if not any(b.prefix is not None for b in model.blocks()):
        raise ValueError("this model has no prefix (model.prefix.enabled is false): nothing to show")
    if pixels.ndim == 3:
        pixels = pixels.unsqueeze(0)
    if tokens.ndim == 1:
        tokens = tokens.unsqueeze(0)
    mass = record_prefix_mass(model, pixels, tokens)
    labels = token_labels(tokens[0], tokenizer)
    text_mass = mass.text.numpy()[..., : len(labels)]
    return PrefixAttention(mass.image.numpy(), text_mass, mass.scales, mass.grid, labels,
                           display_image(pixels[0]), caption)


def load_example(model: UPPerson, tokenizer: CaptionTokenizer, image_path: Path, caption: str
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The test-time pixels of an image file and the tokens of a caption."""
    try:
        with Image.open(image_path) as im:
            rgb = im.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors do not all name the file
        raise ValueError(f"{image_path}: unreadable image ({exc})") from exc
    pixels = build_transforms(model.image_size, train=False)(rgb)
    return pixels, tokenizer(caption)[0]


# parse_indices lives in analysis.indices (no torch import: the command line checks options with it
# before loading anything); it is re-exported here


# ----------------------------------------------------------------------------- figures


# small representative inputs for the figure checks (tests/test_figure_text.py): the shapes of the
# embedded upp-tiny model (the app's) and of a ViT-B/16 at 384x128 (the paper's), no model needed
SHAPES = {"upp-tiny": (4, 2, (96, 32)), "vit-b16": (12, 12, (384, 128))}
EXAMPLE_CAPTION = ("A woman with long black hair wearing a white short-sleeved shirt, blue jeans and white "
                   "sneakers, carrying a red handbag on her left shoulder.")


def example_attention(shape: str = "upp-tiny", caption: str = EXAMPLE_CAPTION, *, seed: int = 0,
                      no_prefix: Sequence[int] = ()) -> PrefixAttention:
    """A synthetic record of the shapes of :data:`SHAPES` (random masses; layers ``no_prefix`` without one)."""
    layers, heads, (h, w) = SHAPES[shape]
    rng = np.random.default_rng(seed)
    grid = (h // 16, w // 16)
    words = caption.replace(",", " ,").replace(".", " .").split()[:75]
    labels = ["<start>", *words, "<end>"]
    image_mass = rng.uniform(0, 0.6, (layers, heads, 1 + grid[0] * grid[1]))
    text_mass = rng.uniform(0, 0.6, (layers, heads, len(labels)))
    scales = {t: list(rng.uniform(0.5, 12.0, layers)) for t in ("image", "text")}
    for i in no_prefix:
        image_mass[i] = text_mass[i] = np.nan
        scales["image"][i] = scales["text"][i] = math.nan
    return PrefixAttention(image_mass, text_mass, scales, grid, labels, rng.uniform(0, 1, (h, w, 3)), caption)


def _image_examples() -> list[figure_registry.Example]:
    tiny, vit = example_attention("upp-tiny"), example_attention("vit-b16", no_prefix=(0,))
    return [figure_registry.Example("tiny-all", (tiny,)),
            figure_registry.Example("tiny-one-layer-head", (tiny,), {"layers": [3], "heads": [1],
                                                                     "quantity": "share"}),
            figure_registry.Example("vit-3-layers-4-heads", (vit,), {"layers": [0, 5, 11], "heads": [0, 1, 2, 3],
                                                                      "quantity": "effective"})]


def _text_examples() -> list[figure_registry.Example]:
    long = example_attention("vit-b16", " ".join([EXAMPLE_CAPTION] * 2))
    return [figure_registry.Example("tiny-one-layer-head", (example_attention("upp-tiny"),), {"layers": [2],
                                                                                              "heads": [1]}),
            figure_registry.Example("vit-long-caption", (long,), {"quantity": "share"})]


def _scales_examples() -> list[figure_registry.Example]:
    return [figure_registry.Example("vit-two-without", (example_attention("vit-b16", no_prefix=(0, 1)).scales,)),
            figure_registry.Example("vanilla", ({"image": [1.0] * 12, "text": [1.0] * 12},), {"scaled": False})]


def _layer_title(i: int, lam: float) -> str:
    return f"layer {i}" if math.isnan(lam) else f"layer {i}\nλ = {lam:.3g}"


def heads_text(heads: Optional[Sequence[int]], n_heads: int) -> str:
    """What the figure averages over, in words: "mean over all 12 heads", "head 3", "mean over heads 0, 1"."""
    if heads is None:
        return {1: "its one head", 2: "mean over both heads"}.get(n_heads, f"mean over all {n_heads} heads")
    heads = list(heads)
    if len(heads) == 1:
        return f"head {heads[0]}"
    return f"mean over heads {', '.join(map(str, heads))}"


def plot_image_prefix(att: PrefixAttention, out_dir: Path, *, quantity: str = "mass", layers=None, heads=None,
                      name: str = "attention_image") -> style.FigureRecord:
    """The input image, then one panel per layer with the patches' prefix attention overlaid (saved)."""
    fig, caption = image_prefix_figure(att, quantity=quantity, layers=layers, heads=heads)
    return style.save(fig, out_dir, name, caption)


@figure_registry.register(examples=_image_examples)
def image_prefix_figure(att: PrefixAttention, *, quantity: str = "mass", layers=None, heads=None,
                        layout: style.Layout = style.PAPER):
    """(figure, caption) of :func:`plot_image_prefix`, unsaved (the demo draws the same figure).
    On a narrow layout: at most 4 panels a row and the colour bar below them."""
    layer_ids = list(range(att.layer_count("image"))) if layers is None else list(layers)
    maps = att.patch_maps(quantity, layers=layer_ids, heads=heads)
    cls = att.values("image", quantity, layers=layer_ids, heads=heads)[:, 0]
    n = len(layer_ids) + 1
    ncols = min(n, 5 if layout.narrow else 7)
    nrows = math.ceil(n / ncols)
    h, w = att.image.shape[:2]
    has_bar = bool(np.isfinite(maps).all(axis=(1, 2)).any())
    bar_w = 0.9 if has_bar and not layout.narrow else 0.0  # the colour bar: beside the panels, or below them
    width = layout.width if layout.narrow else max(1.0 * ncols + bar_w, 3.4)
    panel_w = (width - bar_w) / ncols - 0.08
    panel_h = min(3.2, panel_w * h / w) + 0.6
    title_size = 9 if layout.narrow else 10
    head_txt = heads_text(heads, att.image_mass.shape[1])
    title = style.wrap(f"Image tower: attention of each patch to the prefix ({head_txt})", width - 0.15, title_size)
    below = 0.75 if has_bar and layout.narrow else 0.1
    fig = style.figure(width, panel_h * nrows + 0.2 + 0.2 * (title.count("\n") + 1) + below, layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    finite = maps[np.isfinite(maps)]
    vmax = float(finite.max()) if finite.size else 1.0
    vmin = 0.0
    extent = (0, w, h, 0)
    small = 8 if layout.narrow else 7  # >= 9 px on a phone's screen
    axes[0].imshow(att.image, extent=extent)
    axes[0].set_title("input", fontsize=small + 1)
    im = None
    cmap = style.overlay_cmap()
    for ax, li, grid, c in zip(axes[1:], layer_ids, maps, cls):
        ax.imshow(att.image, extent=extent)
        if np.isfinite(grid).all():
            im = ax.imshow(grid, extent=extent, cmap=cmap, vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1e-6,
                           interpolation="nearest", alpha=0.8)
            ax.set_xlabel(f"CLS {c:.2f}", fontsize=small)
        else:
            ax.set_xlabel("no prefix", fontsize=small)
        ax.set_title(_layer_title(li, att.scales["image"][li]), fontsize=small + 1)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[n:]:
        ax.set_visible(False)
    if im is not None:
        label = style.wrap(QUANTITY_LABELS[quantity], (width if layout.narrow else panel_h * nrows) * 0.8, 9)
        if layout.narrow:
            fig.colorbar(im, ax=axes[:n].tolist(), location="bottom", shrink=0.8, aspect=30, label=label)
        else:
            fig.colorbar(im, ax=axes[:n].tolist(), shrink=0.8, label=label)
    fig.suptitle(title, fontsize=title_size)
    caption = (f"Image tower. For each layer, the {QUANTITY_LABELS[quantity]} of every image patch "
               f"({att.grid[0]}x{att.grid[1]} grid), {head_txt}, overlaid on the input; the CLS token's value "
               f"is under each panel and the S-Prefix scale λ above it.")
    return fig, caption


def plot_text_prefix(att: PrefixAttention, out_dir: Path, *, quantity: str = "mass", layers=None, heads=None,
                     name: str = "attention_text") -> style.FigureRecord:
    """A token-by-layer heat map of each text token's prefix attention (saved)."""
    fig, caption = text_prefix_figure(att, quantity=quantity, layers=layers, heads=heads)
    return style.save(fig, out_dir, name, caption)


@figure_registry.register(examples=_text_examples)
def text_prefix_figure(att: PrefixAttention, *, quantity: str = "mass", layers=None, heads=None,
                       layout: style.Layout = style.PAPER):
    """(figure, caption) of :func:`plot_text_prefix`, unsaved. On a narrow layout the colour bar is
    below the map and every token keeps a readable row."""
    layer_ids = list(range(att.layer_count("text"))) if layers is None else list(layers)
    v = att.values("text", quantity, layers=layer_ids, heads=heads).T  # (tokens, layers)
    n_tok, n_lay = v.shape
    if layout.narrow:
        fig_w = layout.width
        tick_size = 8
        height = 2.2 + 0.15 * n_tok
    else:
        fig_w = max(2.4 + 0.42 * n_lay, 5.0)
        tick_size = 7 if n_tok < 40 else 5
        height = min(max(1.5 + 0.19 * n_tok, 3.0), 14.0)
    head_txt = heads_text(heads, att.text_mass.shape[1])
    title = style.wrap(f"Text tower: attention of each token to the prefix ({head_txt})", fig_w - 0.2, 9)
    if att.caption:
        short = textwrap.shorten(att.caption, 200, placeholder=" …")
        title += "\n" + style.wrap(f"“{short}”", fig_w - 0.2, 9)
    height += 0.19 * title.count("\n")
    fig = style.figure(fig_w, max(height, 3.0), layout="constrained")
    if layout.narrow:  # the colour bar in its own row below (a colorbar's default share of a tall map is too much)
        ax, cax = fig.subplots(2, 1, height_ratios=[max(height - 2.2, 1.0), 0.1])
    else:
        ax, cax = fig.subplots(), None
    im = ax.imshow(np.ma.masked_invalid(v), aspect="auto", cmap=style.SEQUENTIAL, vmin=0, interpolation="nearest")
    ax.set_xticks(range(n_lay), [str(i) for i in layer_ids])
    ax.set_yticks(range(n_tok), att.token_labels, fontsize=tick_size)
    ax.set_xlabel("layer")
    ax.set_ylabel("token")
    ax.spines[:].set_visible(False)
    if layout.narrow:
        fig.colorbar(im, cax=cax, orientation="horizontal", label=style.wrap(QUANTITY_LABELS[quantity], fig_w * 0.8, 9))
    else:
        fig.colorbar(im, ax=ax, label=style.wrap(QUANTITY_LABELS[quantity], height * 0.75, 9), shrink=0.9)
    fig.suptitle(title, fontsize=9)
    caption = (f"Text tower. The {QUANTITY_LABELS[quantity]} of every token of the caption (rows) in every "
               f"layer (columns), {head_txt}. Causal attention: each token sees the prefix and earlier tokens.")
    return fig, caption


def plot_prefix_scales(scales: dict[str, list[float]], out_dir: Path, *, name: str = "prefix_scale",
                       scaled: bool = True) -> style.FigureRecord:
    """The learned S-Prefix lambda per layer, one line per tower (saved)."""
    fig, caption = prefix_scales_figure(scales, scaled=scaled)
    return style.save(fig, out_dir, name, caption)


@figure_registry.register(examples=_scales_examples)
def prefix_scales_figure(scales: dict[str, list[float]], *, scaled: bool = True, layout: style.Layout = style.PAPER):
    """(figure, caption) of :func:`plot_prefix_scales`, unsaved."""
    fig = style.figure(layout.fit(4.5), 3.0, layout="constrained")
    ax = fig.subplots()
    drawn = False
    for tower, values in scales.items():
        y = np.asarray(values, dtype=float)
        if np.isfinite(y).any():
            ax.plot(range(len(y)), y, marker="o" if tower == "image" else "s", color=style.TOWER_COLOURS[tower],
                    label=f"{tower} tower")
            drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no prefix in this model", ha="center", va="center", transform=ax.transAxes)
    ax.axhline(1.0, color="0.5", lw=0.8, ls="--", label="vanilla prefix (λ = 1)")
    n = max(len(v) for v in scales.values())
    ax.set_xticks(range(n))
    ax.set_xlabel("layer")
    ax.set_ylabel("λ (S-Prefix scale)")
    ax.grid(True, axis="y")
    ax.legend(frameon=False)
    ax.set_title("Learned S-Prefix scale per layer" if scaled else "Prefix scale (vanilla prefix: fixed at 1)")
    caption = ("The S-Prefix scale λ of every layer, per tower: the factor on the prefix's attention "
               "weights (not re-normalised). The dashed line is a vanilla prefix (λ = 1).")
    return fig, caption


def attention_figures(model: UPPerson, tokenizer: CaptionTokenizer, image_path: Path, caption: str, out_dir: Path, *,
                      quantity: str = "mass", image_layers: Optional[str] = None, text_layers: Optional[str] = None,
                      heads: Optional[str] = None, text_heads: Optional[str] = None) -> list[style.FigureRecord]:
    """The three attention figures for one image and one caption."""
    pixels, tokens = load_example(model, tokenizer, image_path, caption)
    att = compute_prefix_attention(model, pixels, tokens, tokenizer, caption)
    n_img, n_txt = att.layer_count("image"), att.layer_count("text")
    img_heads = parse_indices(heads, att.image_mass.shape[1], "image heads")
    txt_heads = parse_indices(text_heads if text_heads is not None else heads, att.text_mass.shape[1], "text heads")
    scaled = any(b.prefix is not None and b.prefix.scaled for b in model.blocks())
    return [
        plot_image_prefix(att, out_dir, quantity=quantity, layers=parse_indices(image_layers, n_img, "image layers"),
                          heads=img_heads),
        plot_text_prefix(att, out_dir, quantity=quantity, layers=parse_indices(text_layers, n_txt, "text layers"),
                         heads=txt_heads),
        plot_prefix_scales(att.scales, out_dir, scaled=scaled),
    ]
