"""Every number the Embeddings and Attention views show says what it is (issue 21, beyond the list):
what the R@1 is computed over, how many images and captions are behind it, what the similarity is."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from analysis.embeddings import SplitEmbeddings
from analysis.umap_plot import MapPanel


def test_the_embeddings_summary_says_what_its_r1_is_over():
    from demo.views.embeddings_view import EmbeddingMap, summary

    pids = np.array([3, 3, 3, 8, 8])
    text_pids = np.array([3, 3, 8, 8, 8, 8, 8])
    emb = SplitEmbeddings(torch.zeros(5, 4), pids, torch.zeros(7, 4), text_pids, np.array([0, 1, 3, 3, 4, 4, 4]), 0)
    panels = [MapPanel(label, emb, np.zeros((12, 2)), {"R1": 42.857, "silhouette": 0.25})
              for label in ("Zero-shot backbone", "UP-Person")]
    line = summary(EmbeddingMap(panels, [3, 8], {3: [0, 1, 2], 8: [5, 6]}, 2.0))
    assert line.startswith("2 identities: 5 images, 7 captions")
    assert "text-to-image R@1 over the 7 captions, each ranking these 5 images" in line
    assert "UP-Person: R@1 42.9 %, silhouette 0.25" in line and "computed in 2.0 s" in line


def _record(name: str, uploaded: bool):
    from demo.views.attention_view import AttentionRecord

    return AttentionRecord(SimpleNamespace(caption="a man"), name, 0.4191, 3, 24, True, (), uploaded=uploaded)


def test_the_attention_summary_names_its_similarity_and_what_was_ranked():
    from demo.views.attention_view import Controls, summary

    c = Controls("image", None, None, "mass")
    gallery = summary(_record("uploaded 1.png", uploaded=False), c)  # a gallery file that happens to be so named
    assert "Cosine similarity **0.419**" in gallery and "ranks **3** of 24" in gallery
    assert "uploaded image" not in gallery
    upload = summary(_record("uploaded x.png", uploaded=True), c)
    assert "the gallery and the uploaded image" in upload
