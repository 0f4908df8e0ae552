"""Issue 22's bad input: each is one error line (exit 2) and changes no byte of the index folder.

Another model's index, a truncated index file (segment, entry table, manifest), and two writers
of one folder, through the commands in-process; the large gallery with unreadable files is in
test_search_scale.py, a path outside the allowed roots in test_security_serve.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from upperson.cli import main
from upperson.model import build_model
from upperson.search.build import build_index
from upperson.search.entries import ENTRIES_DIR
from upperson.search.store import MANIFEST, IndexFolderError, write_lock

from tests.conftest import random_image, tiny_model_config


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_error(capsys, needle: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and needle in errors[0] and "Traceback" not in err, err
    return errors[0]


@pytest.fixture
def built(tmp_path) -> tuple[torch.nn.Module, Path, Path]:
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for i in range(6):
        random_image(gallery / f"{i}.png", i)
    model = build_model(tiny_model_config(pretrained="random")).eval()
    out = tmp_path / "index"
    # recorded as the embedded model's, as by an older embedded model: its key says otherwise
    build_index(model, gallery, out, source="embedded", progress=False, segment_rows=4)
    return model, gallery, out


@pytest.mark.parametrize("part", ["segment", "entry table", "manifest"])
def test_a_truncated_index_file_is_refused_by_search_and_by_an_update(built, capsys, part):
    model, gallery, out = built
    raw = json.loads((out / MANIFEST).read_text())
    victim = {"segment": out / "segments" / raw["segments"][0]["name"],
              "entry table": out / ENTRIES_DIR / raw["entry_tables"][0]["name"], "manifest": out / MANIFEST}[part]
    victim.write_bytes(victim.read_bytes()[:-7])
    Image.new("RGB", (12, 24), (9, 9, 9)).save(gallery / "new.png")  # an update would have work to do
    before = _snapshot(out)
    assert main(["search", str(out), "a man in a red coat"]) == 2
    _one_error(capsys, str(out))
    with pytest.raises(IndexFolderError, match="truncated|corrupted|not valid JSON"):
        build_index(model, gallery, out, source="embedded", progress=False)
    assert _snapshot(out) == before


def test_another_models_index_and_a_second_writer_are_one_error_line(built, capsys):
    from upperson.embedded import embedded_available

    if not embedded_available():
        pytest.skip("no shipped embedded model")
    _, gallery, out = built
    before = _snapshot(out)
    assert main(["search", str(out), "a man in a red coat"]) == 2  # the embedded model, not the tiny one
    _one_error(capsys, "another model")
    assert main(["index", str(gallery), "--out", str(out), "--no-progress"]) == 2
    _one_error(capsys, "another model")
    assert _snapshot(out) == before
    fresh = out.parent / "fresh"
    with write_lock(fresh):  # another process writing it
        assert main(["index", str(gallery), "--out", str(fresh), "--no-progress"]) == 2
    _one_error(capsys, "another process is writing")
    assert sorted(p.name for p in fresh.iterdir()) == [".lock"]
