"""Explanations tied to the query: which caption words matched which image regions.

The method is **gradient x input** of the retrieval score, the cosine similarity of the image's
CLS feature and the caption's ``<end>`` feature, through both towers (prefix, LoRA and adapters
included, since they are part of the forward pass):

- per image patch: the patch embedding (the output of the image tower's patch projection,
  ``visual.conv1``, before the position embedding) times the similarity's gradient with
  respect to it, summed over channels;
- per caption token: the token embedding (``token_embedding``) times its gradient, summed over
  channels; a word's weight is the sum over its BPE tokens;
- per word (the colour words by default): the patch map of the caption minus the patch map of
  the same caption with that word's tokens replaced by the mask token (the token the training
  augmentation masks words with), so it shows the regions whose evidence the word adds.

One forward and one backward pass per map (``1 + words`` in all). docs/explain.md says why
this method and not attention rollout. :func:`explain_figure` is the (figure, caption) pair
the CLI saves; the demo's "Why it matched" draws the same numbers as a lighter image panel
(``demo/query_explain.py``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import textwrap
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from PIL import Image

from analysis import figure_registry, style
from analysis.attention import display_image, load_example
from upperson import stats
from upperson.data import CaptionTokenizer, build_transforms
from upperson.data.toypedes.attributes import Identity
from upperson.data.toypedes.domains import domain_render_style, sample_domain_identity
from upperson.data.toypedes.captions import COLOUR_WORDS, LOWER_NOUNS, UPPER_NOUNS
from upperson.data.toypedes.render import render
from upperson.io import atomic_write_text

log = logging.getLogger(__name__)

#: colour words that get their own map by default (ToyPEDES' colour words and common others)
COLOUR_WORD_SET = frozenset({w for words in COLOUR_WORDS.values() for w in words}
                            | {"navy", "beige", "khaki", "dark", "light", "gold", "silver", "cream", "maroon"})


@dataclass
class Explanation:
    """One image and one caption explained (numbers as the JSON holds them).

    ``patch_map`` is (gh, gw), signed (positive: the patch raises the similarity); ``words``
    are the caption's words with ``word_weights`` (signed, summed over each word's tokens);
    ``word_maps`` maps a word's index in ``words`` to its (gh, gw) map (signed).
    """

    caption: str
    similarity: float
    grid: tuple[int, int]
    patch_map: np.ndarray
    tokens: list[str]
    token_weights: np.ndarray
    words: list[str]
    word_weights: np.ndarray
    word_maps: dict[int, np.ndarray] = field(default_factory=dict)
    image: Optional[np.ndarray] = None  # (H, W, 3) in [0, 1], the model's input, for display

    def to_json(self) -> dict:
        return {
            "method": "gradient x input of the cosine similarity (patch embeddings, token embeddings); "
                      "per-word maps: caption minus caption with the word masked",
            "caption": self.caption, "similarity": self.similarity, "grid": list(self.grid),
            "patch_map": self.patch_map.tolist(), "tokens": self.tokens, "token_weights": self.token_weights.tolist(),
            "words": self.words, "word_weights": self.word_weights.tolist(),
            "word_maps": [{"index": i, "word": self.words[i], "map": m.tolist()} for i, m in self.word_maps.items()],
        }


# ----------------------------------------------------------------------------- the computation


def patch_module(model: nn.Module) -> nn.Module:
    """The image tower's patch projection (its output: one embedding per patch)."""
    return model.clip.visual.conv1


def token_module(model: nn.Module) -> nn.Module:
    """The text tower's token embedding."""
    return model.clip.token_embedding


@contextlib.contextmanager
def _leaf_outputs(modules: Sequence[nn.Module]) -> Iterator[list[torch.Tensor]]:
    """While active, each module's output becomes a leaf that requires a gradient (collected in order)."""
    caught: list[torch.Tensor] = []

    def hook(_module, _inputs, out):
        leaf = out.detach().float().requires_grad_(True)
        caught.append(leaf)
        return leaf.to(out.dtype)

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield caught
    finally:
        for h in handles:
            h.remove()


def relevance(model: nn.Module, pixels: torch.Tensor, tokens: torch.Tensor) -> tuple[float, np.ndarray, np.ndarray]:
    """(similarity, patch relevance (gh, gw), token relevance (context,)) of one image
    ``(3, H, W)`` and one token row: gradient x input of the cosine similarity."""
    device = next(model.parameters()).device
    pixels = pixels.unsqueeze(0) if pixels.ndim == 3 else pixels
    tokens = tokens.unsqueeze(0) if tokens.ndim == 1 else tokens
    was_training = model.training
    model.eval()
    try:  # gradients also when the caller (an app's request) runs under inference_mode or no_grad
        with torch.inference_mode(False), torch.enable_grad(), _leaf_outputs([patch_module(model)]) as img_in:
            f_img = model.encode_image(pixels.to(device).clone())
            with _leaf_outputs([token_module(model)]) as txt_in:
                f_txt = model.encode_text(tokens.to(device).clone())
            sim = F.cosine_similarity(f_img.float(), f_txt.float(), dim=-1).sum()
            g_img, g_txt = torch.autograd.grad(sim, [img_in[0], txt_in[0]])
    finally:
        model.train(was_training)
    patches = (g_img * img_in[0].detach()).sum(dim=1)[0]  # (gh, gw): conv1's output is (B, C, gh, gw)
    toks = (g_txt * txt_in[0].detach()).sum(dim=-1)[0]  # (length,), the trimmed caption
    full = np.zeros(tokens.shape[1], dtype=np.float64)
    full[: toks.shape[0]] = toks.detach().cpu().double().numpy()
    return float(sim.detach()), patches.detach().cpu().double().numpy(), full


def caption_words(caption: str, tokenizer: CaptionTokenizer) -> tuple[list[str], list[list[int]]]:
    """The caption's words and, for each, its token positions in the token row (after ``<start>``).

    Words are as the tokenizer splits them (lower case, punctuation apart); a word cut off by
    the context length keeps only the positions that are there.
    """
    words: list[str] = []
    spans: list[list[int]] = []
    pos = 1
    limit = tokenizer.context_length - 1  # the last position is <end>
    for word in caption.split():
        n = int((tokenizer(word)[0] != 0).sum()) - 2  # its tokens, without <start> and <end>
        if n <= 0:
            continue
        span = [p for p in range(pos, pos + n) if p < limit]
        if not span:
            break
        words.append(word)
        spans.append(span)
        pos += n
    return words, spans


def mask_word(tokens: torch.Tensor, span: Sequence[int], tokenizer: CaptionTokenizer) -> torch.Tensor:
    """``tokens`` with the positions of one word replaced by the tokenizer's mask token."""
    out = tokens.clone()
    out[..., list(span)] = tokenizer.mask_token_id
    return out


def colour_word_indices(words: Sequence[str]) -> list[int]:
    """Indices of the colour words among ``words``."""
    return [i for i, w in enumerate(words) if w.lower().strip(".,;:!?") in COLOUR_WORD_SET]


def explain(model: nn.Module, tokenizer: CaptionTokenizer, pixels: torch.Tensor, caption: str, *,
            word_indices: Optional[Sequence[int]] = None, display: Optional[np.ndarray] = None) -> Explanation:
    """Explain one image (test-time pixels, (3, H, W)) against one caption.

    ``word_indices``: the words that get their own map (default: the colour words).
    """
    tokens = tokenizer(caption)[0]
    sim, pmap, tok_rel = relevance(model, pixels, tokens)
    words, spans = caption_words(caption, tokenizer)
    ids = [int(t) for t in tokens.tolist()]
    end = ids.index(tokenizer.eot_id) if tokenizer.eot_id in ids else len(ids) - 1
    labels = ["<start>" if t == tokenizer.sot_id else "<end>" if t == tokenizer.eot_id
              else (tokenizer.decode(torch.tensor([t])) or f"#{t}").strip() for t in ids[: end + 1]]
    word_w = np.array([tok_rel[s].sum() for s in spans], dtype=np.float64)
    chosen = colour_word_indices(words) if word_indices is None else list(word_indices)
    bad = [i for i in chosen if not 0 <= i < len(words)]
    if bad:
        raise ValueError(f"word index {bad[0]}: the caption has {len(words)} words")
    maps = {}
    for i in chosen:
        _, masked, _ = relevance(model, pixels, mask_word(tokens, spans[i], tokenizer))
        maps[i] = pmap - masked
    return Explanation(caption, sim, tuple(pmap.shape), pmap, labels, tok_rel[: end + 1], words, word_w, maps,
                       display)


# ----------------------------------------------------------------------------- where a map's mass lands


def row_profile(patch_map: np.ndarray, height: int) -> np.ndarray:
    """(height,): the positive part of a (gh, gw) map summed over columns, spread evenly over
    each patch row's pixel rows."""
    pos = np.clip(np.asarray(patch_map, dtype=np.float64), 0, None).sum(axis=1)
    rows = np.repeat(pos, int(np.ceil(height / len(pos))))[:height]
    return rows / max(1, int(np.ceil(height / len(pos))))


def mass_on_rows(patch_map: np.ndarray, rows: np.ndarray) -> float:
    """The share of a map's positive mass on the pixel rows where ``rows`` (bool, (H,)) is true."""
    prof = row_profile(patch_map, len(rows))
    total = prof.sum()
    return float(prof[np.asarray(rows, bool)].sum() / total) if total > 0 else float("nan")


# ----------------------------------------------------------------------------- the controlled ToyPEDES case


@dataclass(frozen=True)
class GarmentCase:
    """A ToyPEDES person drawn for the controlled test, with its garments' pixel masks (exact)."""

    image: Image.Image  # 32 x 96
    identity: Identity
    upper_mask: np.ndarray  # (H, W) bool: the upper garment's pixels
    lower_mask: np.ndarray

    @property
    def upper_rows(self) -> np.ndarray:
        return self.upper_mask.any(axis=1)

    @property
    def lower_rows(self) -> np.ndarray:
        return self.lower_mask.any(axis=1)


def _draw(ident: Identity, view: str, seed: int, domain: Optional[str] = None):
    return render(ident, view, random.Random(seed), np.random.default_rng(seed), domain_render_style(domain))[0]


def _other_colour(colour: str, avoid: Sequence[str]) -> str:
    return next(c for c in COLOUR_WORDS if c != colour and c not in avoid)


def garment_case(seed: int, *, upper: Optional[str] = None, lower: Optional[str] = None,
                 view: str = "front", domain: Optional[str] = None) -> GarmentCase:
    """A plain-garment person (no bag, headwear or umbrella) with the given colours, drawn from
    ``domain``'s clothes and seen by its camera (``None``: the original ToyPEDES). The masks are
    exact: the pixels that change when only that garment's colour changes (same random draws)."""
    ident = sample_domain_identity(random.Random(seed), domain)
    upper = upper or ident.upper_colour
    lower = lower or ident.lower_colour
    if upper == lower:
        lower = _other_colour(upper, ())
    ident = replace(ident, upper_colour=upper, lower_colour=lower, upper_pattern="plain", pattern_colour="",
                    bag="none", bag_colour="", headwear="none", headwear_colour="", umbrella=False,
                    umbrella_colour="")
    base = np.asarray(_draw(ident, view, seed, domain), dtype=np.int16)
    masks = []
    for name, colour in (("upper_colour", upper), ("lower_colour", lower)):
        other = _other_colour(colour, (upper, lower, ident.shoes_colour))
        alt = np.asarray(_draw(replace(ident, **{name: other}), view, seed, domain), dtype=np.int16)
        masks.append(np.abs(alt - base).sum(axis=-1) > 24)
    return GarmentCase(_draw(ident, view, seed, domain), ident, masks[0], masks[1])


def garment_caption(ident: Identity) -> tuple[str, int, int]:
    """A caption naming both garments' colours, and the word indices of the two colour words."""
    upper_noun, lower_noun = UPPER_NOUNS[ident.upper_type][0], LOWER_NOUNS[ident.lower_type][0]
    text = f"a {ident.gender} wearing a {ident.upper_colour} {upper_noun} and {ident.lower_colour} {lower_noun}"
    words = text.split()
    return text, words.index(ident.upper_colour), len(words) - 1 - words[::-1].index(ident.lower_colour)


@dataclass
class AuditResult:
    """How often the colour word's map lands mostly on its garment's rows."""

    cases: int
    upper_hits: np.ndarray  # (cases,) 1.0 where the upper colour word's mass on upper rows > 1/2
    lower_hits: np.ndarray
    upper_mass: np.ndarray  # the shares themselves
    lower_mass: np.ndarray
    intervals: dict  # upperson.stats.bootstrap_ci of the hits: "upper", "lower", "both"
    chance: dict  # the mean share of the garment's rows in the image: a uniform map's mass there

    def to_json(self) -> dict:
        return {"cases": self.cases, "rule": "more than half of the word map's positive mass on the garment's rows "
                "(rows of the other garment left out)", "uniform_map_mass": self.chance,
                "upper_mass": self.upper_mass.tolist(), "lower_mass": self.lower_mass.tolist(), **self.intervals}


def audit(model: nn.Module, tokenizer: CaptionTokenizer, cases: int, *, seed: int = 0, resamples: int = 2000,
          domain: Optional[str] = None) -> AuditResult:
    """The controlled case on ``cases`` fresh ToyPEDES persons (seeds ``seed``, ``seed + 1``, ...;
    ``domain``'s clothes and camera, the same caption template):
    for the upper (lower) colour word, the share of its map's mass on the upper (lower) garment
    rows; hit rates with percentile-bootstrap intervals (:func:`upperson.stats.bootstrap_ci`)."""
    if cases < 2:
        raise ValueError(f"--audit {cases}: give at least 2 cases (the interval needs them)")
    transform = build_transforms(tuple(model.config.image_size), train=False)
    up, low, chance_up, chance_low = [], [], [], []
    for i in range(cases):
        case = garment_case(seed + i, domain=domain)
        caption, iu, il = garment_caption(case.identity)
        ex = explain(model, tokenizer, transform(case.image), caption, word_indices=[iu, il])
        upper_only, lower_only = case.upper_rows & ~case.lower_rows, case.lower_rows & ~case.upper_rows
        up.append(mass_on_rows(ex.word_maps[iu], upper_only))
        low.append(mass_on_rows(ex.word_maps[il], lower_only))
        chance_up.append(float(upper_only.mean()))
        chance_low.append(float(lower_only.mean()))
    up_m, low_m = np.nan_to_num(np.array(up)), np.nan_to_num(np.array(low))
    values = {"upper": (up_m > 0.5).astype(float), "lower": (low_m > 0.5).astype(float)}
    values["both"] = values["upper"] * values["lower"]
    ci = stats.bootstrap_ci(values, keys=["upper", "lower", "both"], resamples=resamples, seed=seed)
    chance = {"upper": float(np.mean(chance_up)), "lower": float(np.mean(chance_low))}
    return AuditResult(cases, values["upper"], values["lower"], up_m, low_m, ci, chance)


# ----------------------------------------------------------------------------- figures


def _overlay(ax, image: Optional[np.ndarray], grid_map: np.ndarray, title: str, vmax: float):
    h, w = (image.shape[:2] if image is not None else grid_map.shape)
    extent = (0, w, h, 0)
    if image is not None:
        ax.imshow(image, extent=extent)
    im = ax.imshow(np.clip(grid_map, 0, None), extent=extent, cmap=style.overlay_cmap(), vmin=0,
                   vmax=vmax if vmax > 0 else 1e-6, interpolation="nearest", alpha=0.8)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def _examples() -> list[figure_registry.Example]:
    """Synthetic explanations (no model): a short caption with two colour words, and a long one."""
    rng = np.random.default_rng(0)

    def one(caption: str, n_colours: int) -> Explanation:
        words = caption.split()
        colour_words = [i for i, w in enumerate(words) if w.strip(".") in ("red", "blue", "black", "grey", "white")]
        colour_words = colour_words[:n_colours]
        grid = (12, 4)
        return Explanation(caption=caption, similarity=0.412, grid=grid, patch_map=rng.normal(size=grid),
                           tokens=words, token_weights=rng.normal(size=len(words)), words=words,
                           word_weights=rng.normal(size=len(words)),
                           word_maps={i: rng.normal(size=grid) for i in colour_words},
                           image=rng.random((96, 32, 3)))

    short = "a woman in a red coat and blue jeans with a black backpack"
    long = ("The man is wearing a grey hooded sweatshirt with a check pattern and a pair of white trousers. He has "
            "short grey hair and carries a red messenger bag over his shoulder. On his feet are black shoes.")
    return [figure_registry.Example("two colour words", (one(short, 2),)),
            figure_registry.Example("long caption, four colour words", (one(long, 4),))]


@figure_registry.register(examples=_examples)
def explain_figure(ex: Explanation, *, layout: style.Layout = style.PAPER):
    """(figure, caption): the image, the caption's map, one map per chosen word, and the words'
    weights as coloured bars (the same figure in the CLI and the app). On a phone the word bars go
    under the maps and the text stays >= 9 px on the screen."""
    panels = [("whole caption", ex.patch_map)] + [(f"“{textwrap.shorten(ex.words[i], 12, placeholder='…')}”", m)
                                                  for i, m in ex.word_maps.items()]
    n = 1 + len(panels)
    n_words = len(ex.words)
    if layout.narrow:
        small = 7.5
        per_row = min(n, 4)
        map_rows = -(-n // per_row)
        bar_h = 0.5 + 0.15 * n_words
        fig = style.figure(layout.width, 1.9 * map_rows + bar_h + 0.4, layout="constrained")
        gs = fig.add_gridspec(map_rows + 1, per_row, height_ratios=[1.9] * map_rows + [bar_h])
        map_axes = [fig.add_subplot(gs[k // per_row, k % per_row]) for k in range(n)]
        axw = fig.add_subplot(gs[map_rows, :])
    else:
        small = 7 if n_words < 30 else 5
        fig = style.figure(layout.fit(max(4.2, 0.95 * n + 2.4)), max(3.4, 0.6 + 0.16 * n_words), layout="constrained")
        gs = fig.add_gridspec(1, n + 1, width_ratios=[1] * n + [2.4])
        map_axes = [fig.add_subplot(gs[0, k]) for k in range(n)]
        axw = fig.add_subplot(gs[0, n])
    title_size = max(small, 8) if not layout.narrow else small
    ax0 = map_axes[0]
    if ex.image is not None:
        ax0.imshow(ex.image)
    ax0.set_title("image", fontsize=title_size)
    ax0.set_xticks([])
    ax0.set_yticks([])
    for ax, (title, m) in zip(map_axes[1:], panels):  # no colour bar: each map has its own scale (bright: most)
        _overlay(ax, ex.image, m, title, float(np.clip(m, 0, None).max()))
        ax.title.set_fontsize(title_size)
    w = ex.word_weights
    lim = float(np.abs(w).max()) if w.size and np.abs(w).max() > 0 else 1.0
    cmap = plt.get_cmap("RdBu_r")
    axw.barh(range(n_words), w, color=[cmap(0.5 + 0.5 * v / lim) for v in w], edgecolor="0.3", linewidth=0.4)
    axw.set_yticks(range(n_words), [textwrap.shorten(x, 14, placeholder="…") for x in ex.words], fontsize=small)
    axw.set_ylim(n_words - 0.5, -0.5)
    axw.axvline(0, color="0.4", lw=0.6)
    axw.set_xlim(-1.05 * lim, 1.05 * lim)
    axw.set_xlabel("word weight", fontsize=max(small, 7))
    axw.tick_params(axis="x", labelsize=max(small, 6))
    fig.suptitle(f"Why it matched (similarity {ex.similarity:.3f})", fontsize=9)
    named = ", ".join(f"“{ex.words[i]}”" for i in ex.word_maps) or "none"
    caption = ("Gradient × input of the image–caption cosine similarity through both towers (prefix included). "
               "Left: the image and the patches that raise the similarity for the whole caption; then, per "
               f"colour word ({named}), the patches whose evidence the word adds (the caption's map minus the "
               "map with that word masked); each map on its own scale, brightest where it is largest. Right: each word's weight (red raises "
               "the similarity, blue lowers it).")
    return fig, caption


def explain_pair(image, caption: str, model: nn.Module, tokenizer: CaptionTokenizer):
    """The hook for the demo's "Why it matched": a PIL image (or file path) and a caption in,
    (figure, caption text) out, drawn by :func:`explain_figure`."""
    if not isinstance(image, Image.Image):
        try:
            with Image.open(image) as im:
                image = im.convert("RGB")
        except (OSError, SyntaxError, ValueError) as exc:
            raise ValueError(f"{image}: unreadable image ({exc})") from exc
    pixels = build_transforms(tuple(model.config.image_size), train=False)(image.convert("RGB"))
    ex = explain(model, tokenizer, pixels, caption, display=display_image(pixels))
    return explain_figure(ex)


def word_indices_of(caption: str, tokenizer: CaptionTokenizer, spec: Optional[str]) -> Optional[list[int]]:
    """The word indices ``--words`` names (every occurrence), or None for the default (colour words)."""
    if not spec:
        return None
    words, _ = caption_words(caption, tokenizer)
    plain = [w.lower().strip(".,;:!?") for w in words]
    out = []
    for want in (x.strip().lower() for x in spec.split(",") if x.strip()):
        hits = [i for i, w in enumerate(plain) if w == want]
        if not hits:
            raise ValueError(f"--words {want!r}: not a word of the caption (its words: {', '.join(plain)})")
        out.extend(h for h in hits if h not in out)
    return out


def explain_files(model: nn.Module, tokenizer: CaptionTokenizer, image_path: Path, caption: str, out_dir: Path, *,
                  words: Optional[str] = None) -> tuple[style.FigureRecord, Path]:
    """``python -m analysis explain``: ``explain.{png,svg}`` and ``explain.json`` in ``out_dir``."""
    pixels, _ = load_example(model, tokenizer, Path(image_path), caption)
    chosen = word_indices_of(caption, tokenizer, words)
    ex = explain(model, tokenizer, pixels, caption, word_indices=chosen, display=display_image(pixels))
    fig, cap = explain_figure(ex)
    rec = style.save(fig, out_dir, "explain", cap)
    path = Path(out_dir) / "explain.json"
    atomic_write_text(path, json.dumps({"image": str(image_path), **ex.to_json()}, indent=1) + "\n")
    return rec, path


def audit_files(model: nn.Module, tokenizer: CaptionTokenizer, cases: int, out_dir: Path, *, seed: int = 0,
                resamples: int = 2000, label: str = "", domain: Optional[str] = None) -> Path:
    """``python -m analysis explain --audit N``: ``explain_audit.json`` in ``out_dir``; logs the hit rates."""
    res = audit(model, tokenizer, cases, seed=seed, resamples=resamples, domain=domain)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "explain_audit.json"
    atomic_write_text(path, json.dumps({"model": label, "seed": seed, "domain": domain or "original",
                                        **res.to_json()}, indent=1) + "\n")
    for key in ("upper", "lower", "both"):
        m = res.intervals["metrics"][key]
        log.info("%s colour word%s on its garment's rows: %s of %d persons", key, "s" if key == "both" else "",
                 stats.format_interval(100 * m["value"], 100 * m["low"], 100 * m["high"], 0) + " %", cases)
    return path


def explain_command(args, source_of, example_of) -> list[style.FigureRecord]:
    """The body of ``python -m analysis explain``: ``source_of(args)`` is the model (loaded once the
    options are checked), ``example_of(args)`` the image and caption (defaults: a record of the split and its caption)."""
    from upperson.data import build_tokenizer  # (the tokenizer's BPE files: only when the command runs)

    if args.audit is not None and args.audit < 2:
        raise ValueError(f"--audit {args.audit}: give at least 2 persons (the interval needs them)")
    if getattr(args, "audit_domain", None) and args.audit is None:
        raise ValueError(f"--audit-domain {args.audit_domain} sets the audit's persons: give --audit N too")
    if args.audit is not None and (args.image or args.caption):
        raise ValueError("--audit draws its own persons and captions: leave out --image and --caption")
    if args.caption is not None and not args.caption.strip():
        raise ValueError("--caption is empty: give the query text to explain")
    source = source_of(args)
    model = source.model
    tokenizer = build_tokenizer(model.config.name)
    if args.audit is not None:
        audit_files(model, tokenizer, args.audit, Path(args.out), seed=args.audit_seed, resamples=args.resamples,
                    label=source.label, domain=getattr(args, "audit_domain", None))
        return []
    image, caption = example_of(args)
    log.info("explaining %s on %s / %r", source.label, image, caption)
    rec, _ = explain_files(model, tokenizer, Path(image), caption, Path(args.out), words=args.words)
    return [rec]
