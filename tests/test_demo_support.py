"""Shared helpers of the demo tests: the tiny ToyPEDES data, the model, a launched app, references.

The data is generated once per test session (cached at module level, so every demo test
module shares it); UPPERSON_CACHE points to a temporary folder for the whole session.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Optional

import torch
from PIL import Image
from torch.nn import functional as F

_TMP = Path(tempfile.mkdtemp(prefix="upperson-demo-tests-"))
atexit.register(shutil.rmtree, _TMP, True)


@functools.lru_cache(maxsize=None)
def toy_root() -> Path:
    """ToyPEDES ``tiny`` (seed 0), generated once into a temporary folder."""
    from upperson.data.toypedes import generate_toypedes

    root = _TMP / "data"
    generate_toypedes(root, preset="tiny", seed=0)
    return root


def session_cache() -> Path:
    path = _TMP / "cache"
    path.mkdir(exist_ok=True)
    return path


def load_model():
    """The embedded model (a random upp-tiny one until the trained assets exist)."""
    from upperson.embedded import load_embedded_model

    torch.manual_seed(0)
    return load_embedded_model("upperson").eval()


def engine(model, gallery, **kw):
    """A SearchEngine as the CLI makes it (one thread per query), on the session cache."""
    from demo.search import SearchEngine

    return SearchEngine(model, gallery, cache_dir=session_cache(), progress=False, query_threads=1, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(engine, allow_roots=(), roots=None):
    """Launch the app in-process on a free localhost port; returns (app, url)."""
    from demo.app import build_app, launch

    app = build_app(engine, allow_roots=list(allow_roots))
    roots = list(roots if roots is not None else engine.gallery.roots) + list(allow_roots)
    _, url, _ = launch(app, roots=roots, host="127.0.0.1", port=free_port(), prevent_thread_lock=True, quiet=True)
    return app, url.rstrip("/")


# ----------------------------------------------------------------------------- references
@torch.no_grad()
def image_features(model, paths) -> torch.Tensor:
    from upperson.data import build_transforms

    tf = build_transforms(model.image_size, train=False)
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
    return F.normalize(type(model).encode_image(model, x).float(), dim=-1)


@torch.no_grad()
def text_feature(model, text: str) -> torch.Tensor:
    from upperson.data import build_tokenizer

    tokens = build_tokenizer(model.config.name)(" ".join(text.split()))
    return F.normalize(type(model).encode_text(model, tokens).float(), dim=-1)[0]


def reference_ranking(model, paths, text: str, k: Optional[int] = None) -> tuple[list[int], list[float]]:
    """(indices, scores) of the top k gallery images for ``text``, computed directly with the model."""
    sim = image_features(model, paths) @ text_feature(model, text)
    order = torch.sort(sim, descending=True, stable=True).indices[: k or len(paths)]
    return order.tolist(), sim[order].tolist()


def zero_shot_of(model):
    """The frozen backbone of ``model``, built independently of the demo's code."""
    import dataclasses

    from upperson.embedded import zero_shot_config
    from upperson.model import build_model

    zs = build_model(dataclasses.replace(zero_shot_config(model.config), pretrained=None))
    src = model.state_dict()
    zs.load_state_dict({k: src[k] for k in zs.state_dict()})
    return zs.eval()


def use_session_cache() -> None:
    os.environ["UPPERSON_CACHE"] = str(session_cache())
