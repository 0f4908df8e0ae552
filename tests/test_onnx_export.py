"""ONNX export: onnxruntime reproduces torch's features; a failed check writes nothing."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from upperson.data import build_tokenizer
from upperson.embedded import embedded_available, load_embedded_model
from upperson.io import file_digest
from upperson.model import build_model
from upperson.onnx_export import IMAGE_FILE, MANIFEST, TEXT_FILE, OnnxExportError, export_onnx, open_session

from tests.conftest import tiny_model_config

REPO = Path(__file__).resolve().parent.parent
CAPTIONS = ["a woman in a red coat with a black backpack", "grey hair", "he wears black shorts and a green t-shirt"]


def _onnx_features(folder: Path, images: torch.Tensor, tokens: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    image = open_session(folder / IMAGE_FILE).run(None, {"images": images.numpy()})[0]
    text = open_session(folder / TEXT_FILE).run(None, {"tokens": tokens.numpy()})[0]
    return image, text


def _torch_features(model, images: torch.Tensor, tokens: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():  # the unmerged model, with its usual text trimming: the reference
        return model.encode_image(images).numpy(), model.encode_text(tokens).numpy()


def _check_export(model, folder: Path, tolerance: float, batch: int) -> None:
    h, w = model.image_size
    images = torch.randn(batch, 3, h, w)
    tokens = build_tokenizer(model.config.name)((CAPTIONS * batch)[:batch])
    got_image, got_text = _onnx_features(folder, images, tokens)
    want_image, want_text = _torch_features(model, images, tokens)
    assert got_image.shape == want_image.shape and got_text.shape == want_text.shape
    assert np.abs(got_image - want_image).max() <= tolerance
    assert np.abs(got_text - want_text).max() <= tolerance
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["files"] == {name: file_digest(folder / name) for name in (IMAGE_FILE, TEXT_FILE)}
    assert manifest["image"]["shape"] == ["batch", 3, h, w]
    assert manifest["text"]["tokenizer"]["context_length"] == tokens.shape[1]


@pytest.mark.skipif(not embedded_available(), reason="no shipped embedded model")
def test_embedded_model_onnx_matches_torch(tmp_path):
    model = load_embedded_model("upperson").eval()
    out = tmp_path / "onnx"
    result = export_onnx(model, build_tokenizer(model.config.name), out, source={"checkpoint": "embedded"})
    assert result.image_max_abs_diff <= 1e-4 and result.text_max_abs_diff <= 1e-4
    _check_export(model, out, 1e-4, batch=5)  # a batch size the export never saw (dynamic batch)
    _check_export(model, out, 1e-4, batch=1)


def test_two_layer_vit_b16_width_onnx_matches_torch(tmp_path):
    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    spec = open_clip.get_model_config("ViT-B-16")
    spec["vision_cfg"]["layers"] = spec["text_cfg"]["layers"] = 2
    (cfg_dir / "test-vit-b16-2layers.json").write_text(json.dumps(spec))
    open_clip.add_model_config(cfg_dir)
    cfg = dataclasses.replace(tiny_model_config(), name="test-vit-b16-2layers", image_size=(384, 128),
                              pretrained="random")
    model = build_model(cfg).eval()
    with torch.no_grad():  # non-zero PETL weights, so that the merge is exercised
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)
    export_onnx(model, build_tokenizer(cfg.name), tmp_path / "onnx", source={}, tolerance=1e-3)
    _check_export(model, tmp_path / "onnx", 1e-3, batch=2)


class _Off:
    """An onnxruntime session whose outputs are shifted: the export's check must catch it."""

    def __init__(self, session) -> None:
        self.session = session

    def run(self, names, feeds):
        return [out + 1e-2 for out in self.session.run(names, feeds)]


def test_a_failed_check_writes_nothing(tmp_path, monkeypatch):
    model = build_model(tiny_model_config(pretrained="random")).eval()
    real = open_session
    monkeypatch.setattr("upperson.onnx_export.open_session", lambda path, threads=None: _Off(real(path, threads)))
    with pytest.raises(OnnxExportError, match="differ from torch"):
        export_onnx(model, build_tokenizer(model.config.name), tmp_path / "onnx", source={})
    assert list(tmp_path.iterdir()) == []  # no --out, no staging folder


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "upperson", "export-onnx", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("extra, needle", [
    (["--tolerance", "0"], "--tolerance 0"),
    (["--opset", "3"], "--opset 3"),
])
def test_cli_bad_options_are_one_error_line(tmp_path, extra, needle):
    proc = _cli("embedded", "--out", str(tmp_path / "x"), *extra)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    assert not (tmp_path / "x").exists()


def test_cli_refuses_an_existing_out_and_leaves_it(tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = _cli("embedded", "--out", str(out))
    assert proc.returncode == 2 and "--overwrite" in proc.stderr and "Traceback" not in proc.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
