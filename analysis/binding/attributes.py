"""Per-attribute accuracy of retrieval on a ToyPEDES data root, from its ``attributes.json``.

For each query (every caption of the split) the top-1 image among the images of *other*
identities is taken, and for each attribute field we count whether that identity has the
query identity's value. Leaving the query's own identity out keeps the measure from repeating
R@1: it asks whether the nearest wrong person at least shares the attribute. The chance level of
a field is, per query, the share of other identities' gallery images with the same value,
averaged over queries (what a random ranking scores). For a field with an "absent" value
(:data:`ABSENT`) a second row, e.g. ``umbrella (present)``, counts only the queries whose identity
has one: does the nearest other person hold an umbrella too?
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from analysis.binding.scoring import Accuracy, Encoder, accuracy
from analysis.checks import check_input_file
from upperson.data import ImageRecord

ATTRIBUTES_NAME = "attributes.json"
#: the described attributes (the generator's captions name them), in table order
FIELDS = ("gender", "hair_length", "hair_colour", "headwear", "upper_type", "upper_colour", "upper_pattern",
          "lower_type", "lower_colour", "shoes_colour", "bag", "glasses", "umbrella")
#: fields with an "absent" value: also scored over the queries whose identity has the thing
#: ("umbrella (present)"), where the majority "none" cannot hide a model that ignores it
ABSENT = {"headwear": "none", "bag": "none", "glasses": False, "umbrella": False}


def attributes_file(dataset_root: Path) -> Path:
    """``attributes.json`` of a ToyPEDES folder (the one holding ``reid_raw.json``)."""
    return Path(dataset_root) / ATTRIBUTES_NAME


def read_attributes(path: Path, pids: Sequence[int]) -> dict[int, dict]:
    """Each identity's attribute values, checked: a regular file within the input limit, JSON with
    an ``identities`` object holding every pid of ``pids`` with a string or boolean per field."""
    check_input_file(path, "attributes file")
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"attributes file {path}: not readable JSON ({exc}); regenerate the ToyPEDES folder") from None
    idents = data.get("identities") if isinstance(data, dict) else None
    if not isinstance(idents, dict):
        raise ValueError(f"attributes file {path}: no 'identities' object; it is not a ToyPEDES attributes.json")
    out = {}
    for pid in sorted(set(pids)):
        entry = idents.get(str(pid))
        if not isinstance(entry, dict):
            raise ValueError(f"attributes file {path}: identity {pid} of the split is missing; "
                             "the file does not belong to this data root")
        for f in FIELDS:
            if not isinstance(entry.get(f), (str, bool)):
                raise ValueError(f"attributes file {path}: identity {pid} has no valid {f!r} "
                                 f"(got {entry.get(f)!r})")
        out[pid] = {f: entry[f] for f in FIELDS}
    return out


def top1_other(similarity: np.ndarray, query_pids: np.ndarray, gallery_pids: np.ndarray) -> np.ndarray:
    """Per query, the gallery index of the most similar image of another identity."""
    sim = np.where(query_pids[:, None] == gallery_pids[None, :], -np.inf, np.asarray(similarity, dtype=np.float64))
    if not np.isfinite(sim.max(axis=1)).all():
        raise ValueError("a query has no image of another identity in the gallery")
    return sim.argmax(axis=1)


def attribute_scores(similarity: np.ndarray, query_pids: Sequence[int], gallery_pids: Sequence[int],
                     attrs: dict[int, dict]) -> dict[str, tuple[np.ndarray, float]]:
    """Per field (and ``"<field> (present)"`` for :data:`ABSENT`'s fields): (1/0 per query: the top-1
    other identity shares the value, the chance level in percent)."""
    q, g = np.asarray(query_pids), np.asarray(gallery_pids)
    if not np.isfinite(similarity).all():
        raise ValueError("the query-gallery similarities are not all finite")
    top = top1_other(similarity, q, g)
    per_pid = Counter(int(p) for p in g)
    own_n = np.array([per_pid.get(int(p), 0) for p in q])  # the query identity's own gallery images
    out = {}
    for f in FIELDS:
        codes: dict = {}
        qv = np.array([codes.setdefault(attrs[int(p)][f], len(codes)) for p in q])
        gv = np.array([codes.setdefault(attrs[int(p)][f], len(codes)) for p in g])
        hit = (gv[top] == qv).astype(np.float64)
        with_value = np.bincount(gv, minlength=len(codes))[qv]  # gallery images sharing the query's value
        # the own identity shares every value: take its images out of both counts
        chance = (with_value - own_n) / (len(g) - own_n)
        out[f] = (hit, float(np.mean(chance)) * 100.0)
        if f in ABSENT and ABSENT[f] in codes:
            has = qv != codes[ABSENT[f]]
            if has.any():
                out[f"{f} (present)"] = (hit[has], float(np.mean(chance[has])) * 100.0)
    return out


def attribute_accuracy(records: Sequence[ImageRecord], attrs: dict[int, dict], encoder: Encoder, *,
                       resamples: int = 2000, seed: int = 0) -> dict[str, Accuracy]:
    """:func:`attribute_scores` of ``encoder`` on ``records`` (every caption queries every image)."""
    images = []
    for r in records:
        with Image.open(r.path) as im:
            images.append(im.convert("RGB"))
    gallery = encoder.images(images)
    texts = [c for r in records for c in r.captions]
    query_pids = [r.pid for r in records for _ in r.captions]
    sims = np.asarray(encoder.texts(texts), dtype=np.float64) @ np.asarray(gallery, dtype=np.float64).T
    scores = attribute_scores(sims, query_pids, [r.pid for r in records], attrs)
    return {f: accuracy(hit, chance=chance, resamples=resamples, seed=seed) for f, (hit, chance) in scores.items()}
