"""Scoring binding pairs: how often the right image (or caption) outranks its twin, with intervals.

A pair counts 1 when ``sim(caption, image) > sim(caption, twin image)`` (image side) or
``sim(image, caption) > sim(image, twin caption)`` (text side: both captions from the fixed
template, so they differ in the probed words only, whatever the image side's queries are), 0 when it is lower and 0.5 on an
exact tie, so a model that cannot tell the two apart scores the chance level, 50 %. Accuracy is
the mean over pairs in percent, with a percentile-bootstrap interval over pairs
(:func:`upperson.stats.bootstrap_ci`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
from PIL import Image

from analysis.binding.pairs import Pair
from upperson.stats import bootstrap_ci, paired_bootstrap

#: the accuracy a model that cannot tell a pair apart has, in percent
CHANCE = 50.0
SIDES = ("image", "text")


class Encoder(Protocol):
    """What the probe needs of a model: L2-normalised features of images and of captions."""

    def images(self, images: Sequence[Image.Image]) -> np.ndarray: ...

    def texts(self, texts: Sequence[str]) -> np.ndarray: ...


def pair_scores(right: np.ndarray, wrong: np.ndarray) -> np.ndarray:
    """1 where ``right > wrong``, 0.5 where equal, 0 where lower."""
    right, wrong = np.asarray(right, dtype=np.float64), np.asarray(wrong, dtype=np.float64)
    if not (np.isfinite(right).all() and np.isfinite(wrong).all()):
        raise ValueError("the similarities of the binding pairs are not all finite")
    return (right > wrong).astype(np.float64) + 0.5 * (right == wrong)


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("nd,nd->n", np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))


def score_pairs(pairs: Sequence[Pair], encoder: Encoder) -> dict[str, np.ndarray]:
    """Per-pair scores: ``image`` for every pair; ``text`` for the pairs that have a twin caption."""
    if not pairs:
        raise ValueError("no binding pairs to score")
    caps = encoder.texts([p.caption for p in pairs])
    imgs = encoder.images([p.image for p in pairs])
    twins = encoder.images([p.twin_image for p in pairs])
    out = {"image": pair_scores(_rowdot(caps, imgs), _rowdot(caps, twins))}
    texted = [i for i, p in enumerate(pairs) if p.twin_caption is not None]
    if texted:
        mine = encoder.texts([pairs[i].text_caption for i in texted])
        twin_caps = encoder.texts([pairs[i].twin_caption for i in texted])
        out["text"] = pair_scores(_rowdot(imgs[texted], mine), _rowdot(imgs[texted], twin_caps))
    return out


@dataclass(frozen=True)
class Accuracy:
    """One accuracy in percent with its 95 % interval, the chance level and the sample size."""

    value: float
    low: float
    high: float
    chance: float
    n: int
    ties: int = 0


def accuracy(scores: np.ndarray, *, chance: float = CHANCE, resamples: int = 2000, seed: int = 0) -> Accuracy:
    """The mean of ``scores`` (0..1 per pair or query) in percent, with its bootstrap interval."""
    scores = np.asarray(scores, dtype=np.float64)
    ci = bootstrap_ci({"acc": 100.0 * scores}, keys=["acc"], resamples=resamples, seed=seed)["metrics"]["acc"]
    return Accuracy(ci["value"], ci["low"], ci["high"], chance, int(len(scores)), int(np.sum(scores == 0.5)))


@dataclass(frozen=True)
class Difference:
    """``a - b`` of two models' accuracies on the same pairs, in points, with its paired 95 % interval."""

    value: float
    low: float
    high: float
    significant: bool  # the interval excludes zero


def difference(a: np.ndarray, b: np.ndarray, *, resamples: int = 2000, seed: int = 0) -> Difference:
    """The paired bootstrap (:func:`upperson.stats.paired_bootstrap`) of two models' per-pair scores."""
    r = paired_bootstrap({"acc": 100.0 * np.asarray(a, dtype=np.float64)}, {"acc": 100.0 * np.asarray(b, dtype=np.float64)},
                         keys=["acc"], resamples=resamples, seed=seed)["metrics"]["acc"]
    return Difference(r["diff"], r["low"], r["high"], r["significant"])
