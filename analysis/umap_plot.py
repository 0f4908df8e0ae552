"""A UMAP of test image and caption embeddings, coloured by identity, zero-shot beside UP-Person.

Images and captions of one model are mapped together (one UMAP per model, on the
L2-normalised features, cosine metric), so a caption near its images means the two towers
agree. Each panel's title gives two numbers computed on the features themselves (not on the
2-D map): text-to-image R@1 among the shown identities, and the silhouette of the identity
clusters (cosine).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch

from analysis import figure_registry, style
from analysis.embeddings import SplitEmbeddings, embed_records
from upperson.data import CaptionTokenizer, ImageRecord
from upperson.io import atomic_path
from upperson.model import UPPerson

log = logging.getLogger(__name__)


def select_identities(records: Sequence[ImageRecord], n: int, seed: int = 0) -> list[ImageRecord]:
    """The records of ``n`` identities drawn at random (seeded), in their original order."""
    pids = sorted({r.pid for r in records})
    if n <= 0 or n >= len(pids):
        chosen = set(pids)
    else:
        rng = np.random.default_rng(seed)
        chosen = set(rng.choice(pids, size=n, replace=False).tolist())
    return [r for r in records if r.pid in chosen]


def umap_2d(features: np.ndarray, *, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1) -> np.ndarray:
    """A 2-D UMAP of ``features`` (cosine metric)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # umap's n_jobs/random_state and numba chatter
        import umap

        n = len(features)
        if n < 4:
            raise ValueError(f"need at least 4 points for a UMAP, got {n}")
        kw = dict(n_components=2, n_neighbors=max(2, min(n_neighbors, n - 1)), min_dist=min_dist,
                  metric="cosine", random_state=seed)
        try:
            return umap.UMAP(init="spectral", **kw).fit_transform(features)
        except Exception as exc:  # spectral init can fail on tiny or degenerate inputs
            log.info("spectral UMAP init failed (%s); using random init", exc)
            return umap.UMAP(init="random", **kw).fit_transform(features)


def subset_scores(emb: SplitEmbeddings) -> dict[str, float]:
    """Text-to-image R@1 (%) among these records, and the identity silhouette (cosine)."""
    from sklearn.metrics import silhouette_score

    sim = emb.text_features @ emb.image_features.t()
    top = sim.argmax(dim=1).numpy()
    r1 = float((emb.image_pids[top] == emb.text_pids).mean() * 100) if len(top) else float("nan")
    x = torch.cat([emb.image_features, emb.text_features]).numpy()
    labels = np.concatenate([emb.image_pids, emb.text_pids])
    sil = float("nan")
    if 2 <= len(set(labels.tolist())) < len(labels):
        sil = float(silhouette_score(x, labels, metric="cosine"))
    return {"R1": r1, "silhouette": sil}


@dataclass
class MapPanel:
    label: str
    emb: SplitEmbeddings
    xy: np.ndarray  # (N images + M captions, 2)
    scores: dict[str, float]


def compute_panel(model: UPPerson, label: str, tokenizer: CaptionTokenizer, records: Sequence[ImageRecord],
                  cache_dir: Optional[Path], seed: int) -> MapPanel:
    return map_panel(label, embed_records(model, tokenizer, records, cache_dir), seed)


def map_panel(label: str, emb: SplitEmbeddings, seed: int) -> MapPanel:
    """The UMAP and the scores of embeddings already computed (no model needed)."""
    x = torch.cat([emb.image_features, emb.text_features]).numpy()
    return MapPanel(label, emb, umap_2d(x, seed=seed), subset_scores(emb))


def example_panels(n_ids: int = 20, *, seed: int = 0, labels: Sequence[str] = ("Zero-shot backbone", "UP-Person")
                   ) -> list[MapPanel]:
    """Synthetic panels (random points, 2 images and 2 captions per identity; no model, no UMAP) for the
    figure checks (tests/test_figure_text.py)."""
    rng = np.random.default_rng(seed)
    pids = np.repeat(np.arange(1, n_ids + 1) * 37, 2)
    panels = []
    for label in labels:
        emb = SplitEmbeddings(torch.randn(len(pids), 8), pids, torch.randn(2 * len(pids), 8), np.repeat(pids, 2),
                              np.repeat(np.arange(len(pids)), 2), 0)
        panels.append(MapPanel(label, emb, rng.normal(size=(3 * len(pids), 2)) * 4,
                               {"R1": float(rng.uniform(0, 100)), "silhouette": float(rng.uniform(-1, 1))}))
    return panels


def _umap_examples() -> list[figure_registry.Example]:
    return [figure_registry.Example("highlight", (example_panels(8, labels=("Zero-shot backbone",
                                                                             "UP-Person (runs/cuhk/best)")),),
                                    {"highlight": 37 * 3}),
            figure_registry.Example("3-ids-no-links", (example_panels(3),), {"links": False})]


def plot_umap(panels: Sequence[MapPanel], out_dir: Path, *, links: bool = True, name: str = "umap",
              n_ids: Optional[int] = None) -> style.FigureRecord:
    """Side-by-side panels; colour = identity, circle = image, triangle = caption (saved)."""
    fig, caption = umap_panels_figure(panels, links=links, n_ids=n_ids)
    return style.save(fig, out_dir, name, caption)


@figure_registry.register(examples=_umap_examples)
def umap_panels_figure(panels: Sequence[MapPanel], *, links: bool = True, n_ids: Optional[int] = None,
                       highlight: Optional[int] = None, layout: style.Layout = style.PAPER):
    """(figure, caption) of :func:`plot_umap`, unsaved. ``highlight``: an identity drawn on top,
    larger and outlined, every other point faded (the demo's selection; the CLI passes None)."""
    all_pids = sorted(set(np.concatenate([p.emb.image_pids for p in panels]).tolist()))
    colours = style.qualitative(len(all_pids))
    colour_of = {pid: colours[i] for i, pid in enumerate(all_pids)}
    ids = n_ids if n_ids is not None else len(all_pids)
    title = (f"Test embeddings of {ids} identities (colour = identity)"
             + ("" if highlight is None else f"; identity {highlight} highlighted"))
    if layout.narrow:  # a phone: the panels one above the other, the full width each
        width = layout.width
        title = style.wrap(title, width - 0.2, 10)
        fig = style.figure(width, 3.6 * len(panels) + 0.6 + 0.2 * title.count("\n"), layout="constrained")
        axes = np.atleast_1d(fig.subplots(len(panels), 1))
    else:
        width = 4.2 * len(panels) + 0.4
        fig = style.figure(width, 4.6, layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(panels)))
    fade = 1.0 if highlight is None else 0.18
    for ax, panel in zip(axes, panels):
        emb = panel.emb
        n_img = len(emb.image_pids)
        img_xy, txt_xy = panel.xy[:n_img], panel.xy[n_img:]
        if links:
            for t, i in enumerate(emb.text_image):
                ax.plot([txt_xy[t, 0], img_xy[i, 0]], [txt_xy[t, 1], img_xy[i, 1]],
                        color=colour_of[int(emb.text_pids[t])], lw=0.5, alpha=0.45 * fade, zorder=1)
        ax.scatter(img_xy[:, 0], img_xy[:, 1], c=[colour_of[int(p)] for p in emb.image_pids], marker="o", s=26,
                   edgecolors="black", linewidths=0.4, zorder=3, alpha=fade)
        ax.scatter(txt_xy[:, 0], txt_xy[:, 1], c=[colour_of[int(p)] for p in emb.text_pids], marker="^", s=22,
                   edgecolors="none", alpha=0.85 * fade, zorder=2)
        if highlight is not None:
            im_sel, tx_sel = emb.image_pids == highlight, emb.text_pids == highlight
            colour = colour_of.get(int(highlight), "black")
            if links:
                for t in np.flatnonzero(tx_sel):
                    i = emb.text_image[t]
                    ax.plot([txt_xy[t, 0], img_xy[i, 0]], [txt_xy[t, 1], img_xy[i, 1]], color=colour, lw=1.0,
                            zorder=4)
            ax.scatter(txt_xy[tx_sel, 0], txt_xy[tx_sel, 1], c=colour, marker="^", s=60, edgecolors="black",
                       linewidths=0.8, zorder=5)
            ax.scatter(img_xy[im_sel, 0], img_xy[im_sel, 1], c=colour, marker="o", s=80, edgecolors="black",
                       linewidths=1.2, zorder=6)
        s = panel.scores
        ax.set_title(style.wrap(f"{panel.label}\nR@1 {s['R1']:.1f} %  ·  identity silhouette {s['silhouette']:.2f}",
                                width / (1 if layout.narrow else len(panels)) - 0.3, 10))
        ax.set_xlabel("UMAP 1")
        ax.set_ylabel("UMAP 2")
        ax.set_xticks([])
        ax.set_yticks([])
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", ls="", color="0.4", markeredgecolor="black", label="image"),
               Line2D([], [], marker="^", ls="", color="0.4", label="caption")]
    if links:
        handles.append(Line2D([], [], color="0.4", lw=0.8, label="caption → its image"))
    fig.legend(handles=handles, loc="outside lower center", ncol=2 if layout.narrow else len(handles), frameon=False)
    fig.suptitle(title)
    caption = (f"UMAP of the test images (circles) and captions (triangles) of {ids} identities, one colour per "
               "identity" + (", each caption linked to its own image" if links else "") + ". Each model is mapped "
               "on its own (cosine metric). Titles: text-to-image R@1 among these identities and the identity "
               "silhouette of the features (higher = tighter identity clusters across both modalities).")
    return fig, caption


def write_points(panels: Sequence[MapPanel], path: Path) -> None:
    """The 2-D coordinates, for re-plotting elsewhere (CSV)."""
    rows = []
    for p in panels:
        n_img = len(p.emb.image_pids)
        for i, (x, y) in enumerate(p.xy):
            is_img = i < n_img
            rows.append({"model": p.label, "kind": "image" if is_img else "caption",
                         "pid": int(p.emb.image_pids[i] if is_img else p.emb.text_pids[i - n_img]),
                         "image": i if is_img else int(p.emb.text_image[i - n_img]), "x": float(x), "y": float(y)})
    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


def umap_figure(models: Sequence[tuple[str, UPPerson]], tokenizer: CaptionTokenizer, records: Sequence[ImageRecord],
                out_dir: Path, *, n_ids: int = 20, seed: int = 0, links: bool = True,
                cache_dir: Optional[Path] = None) -> list[style.FigureRecord]:
    """Embed ``n_ids`` identities' test images and captions with each model and map them."""
    chosen = select_identities(records, n_ids, seed)
    n_real = len({r.pid for r in chosen})
    if n_real < n_ids:
        log.info("the split has %d identities; showing all of them", n_real)
    panels = [compute_panel(m, label, tokenizer, chosen, cache_dir, seed) for label, m in models]
    fig = plot_umap(panels, out_dir, links=links, n_ids=n_real)
    write_points(panels, Path(out_dir) / "umap_points.csv")
    return [fig]
