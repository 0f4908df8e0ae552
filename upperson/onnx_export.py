"""Export a checkpoint's merged image and text towers to ONNX, checked against torch.

An export folder holds ``image.onnx`` (images ``(B, 3, H, W)``, CLIP-normalised, to features
``(B, D)``), ``text.onnx`` (tokens ``(B, context_length)`` int64 to features ``(B, D)``) and
``onnx.json``: the input and output names, the preprocessing (size, resize, mean, std), the
tokenizer's settings, the SHA-256 of each ``.onnx`` file and of the source checkpoint's
weights, and the largest difference to torch measured at export. The batch dimension is
dynamic. Features are *not* L2-normalised, as ``UPPerson.encode_image``/``encode_text``.

What is exported is the merged model (``UPPerson.merged()``: LoRA folded into K/V, the prefix
precomputed), so the graphs are plain open_clip towers with extra key/value tokens and
adapters. Training and the unmerged model are not exported (docs/export.md).

The folder is written beside ``out`` and renamed into place only after onnxruntime has
reproduced torch's features within the tolerance, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from upperson.data.text import CaptionTokenizer
from upperson.data.transforms import CLIP_MEAN, CLIP_STD
from upperson.io import atomic_write_json, current_umask, file_digest, fsync_dir, replace_dir
from upperson.model.upperson import UPPerson

log = logging.getLogger(__name__)

FORMAT = "upperson-onnx"
FORMAT_VERSION = 1
IMAGE_FILE = "image.onnx"
TEXT_FILE = "text.onnx"
MANIFEST = "onnx.json"
#: captions the export check encodes (a range of lengths; the check also uses random tokens)
CHECK_CAPTIONS = (
    "a woman in a red coat with a black backpack",
    "the man wears a white shirt, blue jeans and grey sneakers; he carries a brown bag in his left hand",
    "person",
)


class OnnxExportError(RuntimeError):
    """An export whose ONNX graphs do not reproduce torch's features."""


class ImageTower(nn.Module):
    """``images -> encode_image(images)`` of a merged model, as one module to export."""

    def __init__(self, model: UPPerson) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)


class TextTower(nn.Module):
    """``tokens -> encode_text(tokens)`` at the full context length (no data-dependent trim)."""

    def __init__(self, model: UPPerson) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote and measured."""

    folder: Path
    image_max_abs_diff: float
    text_max_abs_diff: float
    seconds: float


def export_onnx(model: UPPerson, tokenizer: CaptionTokenizer, out: Path, *, source: dict[str, Any],
                tolerance: float = 1e-4, opset: Optional[int] = None, overwrite: bool = False) -> OnnxExport:
    """Export ``model``'s merged towers into folder ``out`` and check them with onnxruntime.

    ``source`` is recorded in ``onnx.json`` (e.g. the checkpoint's path and weights checksum).
    Raises :class:`OnnxExportError` when a tower's features differ from torch's by more than
    ``tolerance`` (max absolute difference), ``FileExistsError`` when ``out`` exists and
    ``overwrite`` is false; in both cases nothing is written.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another --out or pass --overwrite")
    start = time.perf_counter()
    merged = model.merged()
    merged.trim_text = False  # trimming depends on the data; the graph keeps the full context
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        staging.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700; give the folder ordinary permissions
        image_diff, text_diff, dim = _export_towers(merged, tokenizer, staging, tolerance, opset)
        atomic_write_json(staging / MANIFEST, _manifest(merged, tokenizer, staging, source, dim,
                                                        (image_diff, text_diff), tolerance))
        fsync_dir(staging)
        replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return OnnxExport(out, image_diff, text_diff, time.perf_counter() - start)


def _export_towers(merged: UPPerson, tokenizer: CaptionTokenizer, folder: Path, tolerance: float,
                   opset: Optional[int]) -> tuple[float, float, int]:
    """Write both graphs into ``folder``; the max absolute differences to torch (image, text) and
    the feature dimension."""
    h, w = merged.image_size
    gen = torch.Generator().manual_seed(0)
    example_images = torch.randn(2, 3, h, w, generator=gen)
    example_tokens = tokenizer(list(CHECK_CAPTIONS[:2]))
    # each checked on a batch size other than the example's (the dynamic dimension), at once
    images = torch.randn(3, 3, h, w, generator=gen)
    tokens = torch.cat([tokenizer(list(CHECK_CAPTIONS)), _random_tokens(tokenizer, 2, gen)])
    _export(ImageTower(merged), example_images, folder / IMAGE_FILE, "images", opset)
    image_diff, dim = _check(ImageTower(merged), folder / IMAGE_FILE, "images", images, tolerance)
    _export(TextTower(merged), example_tokens, folder / TEXT_FILE, "tokens", opset)
    text_diff, _ = _check(TextTower(merged), folder / TEXT_FILE, "tokens", tokens, tolerance)
    return image_diff, text_diff, dim


def _random_tokens(tokenizer: CaptionTokenizer, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` rows of random caption tokens: ``<start>``, words, ``<end>``, padding."""
    rows = torch.zeros(n, tokenizer.context_length, dtype=torch.long)
    for i in range(n):
        length = int(torch.randint(1, tokenizer.context_length - 1, (1,), generator=gen))
        rows[i, 0] = tokenizer.sot_id
        rows[i, 1:length + 1] = torch.randint(1, tokenizer.sot_id, (length,), generator=gen)
        rows[i, length + 1:length + 2] = tokenizer.eot_id
    return rows


def _export(module: nn.Module, example: torch.Tensor, path: Path, input_name: str, opset: Optional[int]) -> None:
    """torch.onnx's exporter (torch.export based), batch dimension dynamic, weights in the file."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    quiet = io.StringIO()  # the exporter prints its progress; keep it for the debug log
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), str(path), dynamo=True, external_data=False,
                          dynamic_shapes=({0: batch},), input_names=[input_name], output_names=["features"],
                          opset_version=opset)
    log.debug("torch.onnx export of %s:\n%s", path.name, quiet.getvalue())


def _check(module: nn.Module, path: Path, input_name: str, batch: torch.Tensor,
           tolerance: float) -> tuple[float, int]:
    """Run ``path`` with onnxruntime on ``batch``; raise unless it matches ``module`` within ``tolerance``.
    Returns the max absolute difference and the feature dimension."""
    with torch.no_grad():
        expected = module(batch).float().numpy()
    got = open_session(path).run(None, {input_name: batch.numpy()})[0]
    if got.shape != expected.shape:
        raise OnnxExportError(f"{path.name}: onnxruntime gives features of shape {got.shape}, torch {expected.shape}")
    diff = float(np.abs(got - expected).max())
    if not np.isfinite(diff) or diff > tolerance:
        raise OnnxExportError(f"{path.name}: onnxruntime's features differ from torch's by up to {diff:.3g} "
                              f"(tolerance {tolerance:g}); nothing was written")
    return diff, int(got.shape[1])


def open_session(path: Path, threads: Optional[int] = None) -> ort.InferenceSession:
    """An onnxruntime CPU session for one exported graph."""
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _manifest(merged: UPPerson, tokenizer: CaptionTokenizer, folder: Path, source: dict[str, Any], dim: int,
              diffs: tuple[float, float], tolerance: float) -> dict[str, Any]:
    """The contents of ``onnx.json``."""
    h, w = merged.image_size
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "source": source,
        "files": {name: file_digest(folder / name) for name in (IMAGE_FILE, TEXT_FILE)},
        "image": {
            "file": IMAGE_FILE, "input": "images", "output": "features",
            "shape": ["batch", 3, h, w], "dtype": "float32",
            "preprocess": {"resize": [h, w], "interpolation": "bilinear, antialiased", "scale": "1/255",
                           "mean": list(CLIP_MEAN), "std": list(CLIP_STD)},
        },
        "text": {
            "file": TEXT_FILE, "input": "tokens", "output": "features",
            "shape": ["batch", tokenizer.context_length], "dtype": "int64",
            "tokenizer": {"open_clip_model": tokenizer.model_name, "kind": "CLIP BPE (open_clip SimpleTokenizer)",
                          "context_length": tokenizer.context_length, "start_id": tokenizer.sot_id,
                          "end_id": tokenizer.eot_id, "pad_id": 0, "lowercase": True,
                          "truncation": "to context_length, last token set to <end>"},
        },
        "features": {"dim": dim, "normalized": False,
                     "similarity": "cosine: L2-normalise both features, then the dot product"},
        "checked": {"image_max_abs_diff": diffs[0], "text_max_abs_diff": diffs[1], "tolerance": tolerance,
                    "onnxruntime": ort.__version__},
        "torch": torch.__version__,
        "not_exported": ["training (the PETL parameters and losses)", "the unmerged model"],
    }


def onnx_latency(model: UPPerson, tokenizer: CaptionTokenizer, folder: Path, *, batch_sizes: Sequence[int] = (1, 32), repeats: int = 10,
                 threads: Optional[int] = None) -> list[dict[str, Any]]:
    """Median and p95 latency (ms) of torch (merged model) and onnxruntime per tower and batch size."""
    merged = model.merged()
    merged.trim_text = False
    h, w = merged.image_size
    gen = torch.Generator().manual_seed(0)
    rows = []
    for tower, module, path, name in (("image", ImageTower(merged), folder / IMAGE_FILE, "images"),
                                      ("text", TextTower(merged), folder / TEXT_FILE, "tokens")):
        session = open_session(path, threads)
        for b in batch_sizes:
            if tower == "image":
                batch = torch.randn(b, 3, h, w, generator=gen)
            else:
                batch = _random_tokens(tokenizer, b, gen)
            torch_ms = _time_ms(lambda: module(batch), repeats)
            ort_ms = _time_ms(lambda: session.run(None, {name: batch.numpy()}), repeats)
            rows.append({"tower": tower, "batch": b, "torch_p50_ms": torch_ms[0], "torch_p95_ms": torch_ms[1],
                         "onnxruntime_p50_ms": ort_ms[0], "onnxruntime_p95_ms": ort_ms[1]})
    return rows


def _time_ms(fn, repeats: int) -> tuple[float, float]:
    """(p50, p95) wall time of ``fn()`` in milliseconds, after one untimed call."""
    with torch.no_grad():
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))
