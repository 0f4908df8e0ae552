"""ToyPEDES: generation, determinism, reader round trip, captions that match the pixels."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from upperson.data import TrainCaptionDataset, build_tokenizer, build_transforms, load_dataset
from upperson.data.toypedes import (
    PALETTE,
    TOYPEDES_PRESETS,
    UPPER_PHRASE,
    canonical_colour,
    generate_toypedes,
)
from upperson.data.toypedes.captions import fine_caption
from upperson.data.toypedes.attributes import identity_stream


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return generate_toypedes(tmp_path_factory.mktemp("toy"), preset="tiny", seed=0)


def _tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def test_tiny_round_trips_through_the_cuhk_reader(tiny):
    p = TOYPEDES_PRESETS["tiny"]
    assert tiny.name == "ToyPEDES" and (tiny / "imgs").is_dir()
    raw = json.loads((tiny / "reid_raw.json").read_text())
    assert all(set(e) == {"id", "file_path", "captions", "split"} for e in raw)
    ds = load_dataset("toypedes", tiny.parent)
    n = p.images[0]
    assert ds.counts("train") == (p.train, p.train * n, 2 * p.train * n)
    assert ds.counts("val") == (p.val, p.val * n, 2 * p.val * n)
    assert ds.counts("test") == (p.test, p.test * n, 2 * p.test * n)
    # splits are by identity
    ids = {s: {r.pid for r in ds.split(s)} for s in ("train", "val", "test")}
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    # the same folder also reads as CUHK-PEDES format through the cuhk reader, given the file
    cuhk_root = tiny.parent / "as-cuhk"
    (cuhk_root / "CUHK-PEDES").mkdir(parents=True)
    (cuhk_root / "CUHK-PEDES" / "imgs").symlink_to(tiny / "imgs")
    (cuhk_root / "CUHK-PEDES" / "reid_raw.json").write_text((tiny / "reid_raw.json").read_text())
    assert load_dataset("cuhk-pedes", cuhk_root).counts("test") == ds.counts("test")
    with Image.open(ds.split("test")[0].path) as im:
        assert im.size == (64, 192) and im.mode == "RGB"
    train = TrainCaptionDataset(ds.split("train"), build_transforms((96, 32), train=True), build_tokenizer("ViT-B-16"))
    assert len(train) == 2 * p.train * n and train.num_classes == p.train
    assert train[0]["image"].shape == (3, 96, 32)


def test_captions_length_and_visibility(tiny):
    raw = json.loads((tiny / "reid_raw.json").read_text())
    attrs = json.loads((tiny / "attributes.json").read_text())
    for entry in raw:
        view = attrs["images"][entry["file_path"]]["view"]
        assert len(entry["captions"]) == 2 and entry["captions"][0] != entry["captions"][1]
        for cap in entry["captions"]:
            assert 15 <= len(cap.split()) <= 50, cap
            if view == "back":
                assert "glasses" not in cap and "spectacles" not in cap, cap
    views = Counter(info["view"] for info in attrs["images"].values())
    assert views["front"] == views["back"] == views["side"] == 40  # 3 cameras per identity


def test_glasses_are_mentioned_only_when_visible():
    stream = identity_stream(3)
    with_glasses = [i for i in (next(stream) for _ in range(300)) if i.glasses][:10]
    assert with_glasses
    for j, ident in enumerate(with_glasses):
        back = [fine_caption(ident, "back", random.Random(k)) for k in range(10)]
        front = [fine_caption(ident, "front", random.Random(k)) for k in range(10)]
        assert not any("glasses" in c for c in back)
        assert any("glasses" in c for c in front)  # minor, so sometimes omitted, but not always


def _nearest_palette(pixels: np.ndarray) -> np.ndarray:
    names = list(PALETTE)
    ref = np.array([PALETTE[n] for n in names], float)
    d = ((pixels[:, None, :].astype(float) - ref[None]) ** 2).sum(-1)
    return np.array(names)[d.argmin(1)]


def test_caption_upper_colour_is_the_torso_colour_in_front_views(tiny):
    raw = json.loads((tiny / "reid_raw.json").read_text())
    images = json.loads((tiny / "attributes.json").read_text())["images"]
    checked = 0
    for entry in raw:
        info = images[entry["file_path"]]
        if info["view"] != "front":
            continue
        x0, y0, x1, y1 = info["torso_core"]
        assert x1 - x0 >= 6 and y1 - y0 >= 20
        with Image.open(tiny / "imgs" / entry["file_path"]) as im:
            region = np.asarray(im.convert("RGB"))[y0:y1, x0:x1].reshape(-1, 3)
        dominant = Counter(_nearest_palette(region)).most_common(1)[0][0]
        for cap in entry["captions"]:
            found = UPPER_PHRASE.findall(cap)
            assert len(found) == 1, cap
            assert canonical_colour(found[0][0]) == dominant, (entry["file_path"], cap, dominant)
        checked += 1
    assert checked == 40


def test_same_seed_same_bytes_other_seed_differs(tiny, tmp_path):
    again = generate_toypedes(tmp_path / "a", preset="tiny", seed=0, workers=2)  # workers do not matter
    assert _tree_hash(again) == _tree_hash(tiny)
    other = generate_toypedes(tmp_path / "b", preset="tiny", seed=1)
    assert _tree_hash(other) != _tree_hash(tiny)
    a = json.loads((tiny / "reid_raw.json").read_text())
    b = json.loads((other / "reid_raw.json").read_text())
    assert [e["captions"] for e in a] != [e["captions"] for e in b]


def test_weak_corpus_is_disjoint_from_the_benchmark(tiny):
    weak = generate_toypedes(tiny.parent, preset="tiny", seed=0, captions="weak")
    assert weak.name == "ToyPEDES-weak"
    raw = json.loads((weak / "reid_raw.json").read_text())
    assert {e["split"] for e in raw} == {"train"}
    assert len({e["id"] for e in raw}) == TOYPEDES_PRESETS["tiny"].weak_ids
    assert all(3 <= len(c.split()) <= 20 for e in raw for c in e["captions"])
    bench = json.loads((tiny / "attributes.json").read_text())["identities"]
    weak_ids = json.loads((weak / "attributes.json").read_text())["identities"]
    assert not set(bench) & set(weak_ids)

    def key(d: dict) -> tuple:
        return tuple(sorted((k, v) for k, v in d.items() if k not in ("split", "skin", "build")))

    assert not {key(d) for d in bench.values()} & {key(d) for d in weak_ids.values()}
    assert len({key(d) for d in bench.values()}) == len(bench)  # benchmark identities differ too
    assert load_dataset("toypedes-weak", tiny.parent).counts("train")[0] == TOYPEDES_PRESETS["tiny"].weak_ids


def test_existing_folder_reused_or_refused(tiny, tmp_path):
    folder = generate_toypedes(tmp_path, preset="tiny", seed=0)
    stamp = (folder / "reid_raw.json").stat().st_mtime_ns
    assert generate_toypedes(tmp_path, preset="tiny", seed=0) == folder
    assert (folder / "reid_raw.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    with pytest.raises(ValueError, match="overwrite"):
        generate_toypedes(tmp_path, preset="tiny", seed=5)
    generate_toypedes(tmp_path, preset="tiny", seed=5, overwrite=True)
    assert json.loads((folder / "meta.json").read_text())["seed"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ToyPEDES"]  # no temporary folders left


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    from upperson.data.toypedes import generate as gen

    calls = {"n": 0}
    real = gen._render_identity

    def flaky(task):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(gen, "_render_identity", flaky)
    with pytest.raises(KeyboardInterrupt):
        gen.generate_toypedes(tmp_path, preset="tiny", seed=0, workers=1)
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_dataset(tmp_path, monkeypatch):
    """--overwrite moves the old copy aside and deletes it only once the new one is in place."""
    from upperson.data.toypedes import generate as gen

    folder = gen.generate_toypedes(tmp_path, preset="tiny", seed=0)
    before = _tree_hash(folder)
    real = gen.os.replace

    def full_disk(src, dst):
        if Path(src).name.startswith(".ToyPEDES.partial-"):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(gen.os, "replace", full_disk)
    with pytest.raises(OSError):
        gen.generate_toypedes(tmp_path, preset="tiny", seed=5, overwrite=True)
    assert _tree_hash(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ToyPEDES"]


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown ToyPEDES preset"):
        generate_toypedes(tmp_path, preset="huge")
    with pytest.raises(ValueError, match="captions"):
        generate_toypedes(tmp_path, captions="medium")
    with pytest.raises(ValueError, match="seed"):
        generate_toypedes(tmp_path, seed=-1)


def test_cli(tmp_path, capsys):
    from upperson.cli import main

    assert main(["toypedes", "--out", str(tmp_path), "--preset", "tiny", "--seed", "2", "--captions", "weak"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"ToyPEDES (tiny, weak captions, seed 2) is in {tmp_path.resolve() / 'ToyPEDES-weak'}"]
    assert (tmp_path / "ToyPEDES-weak" / "reid_raw.json").is_file()
    assert main(["toypedes", "--out", str(tmp_path), "--preset", "tiny", "--seed", "3", "--captions", "weak"]) == 2
    assert "error:" in capsys.readouterr().err


def test_cli_help(capsys):
    from upperson.cli import main

    with pytest.raises(SystemExit) as info:
        main(["toypedes", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--captions" in out and "ToyPEDES-weak" in out and "tiny" in out


def test_a_test_only_preset_extends_the_test_split_with_unseen_identities(tiny, tmp_path, monkeypatch):
    """``test-large`` in miniature: the base preset's test identities (same files), then more drawn
    after the weak corpus, so none was trained or pretrained on; only the test split is written."""
    import dataclasses

    from upperson.data.toypedes import generate as gen

    base = TOYPEDES_PRESETS["tiny"]
    monkeypatch.setitem(gen.TOYPEDES_PRESETS, "tiny-large", dataclasses.replace(base, extra_test=4, test_only=True))
    folder = generate_toypedes(tmp_path / "a", preset="tiny-large", seed=0)
    ds = load_dataset("toypedes", folder.parent)
    assert not ds.splits.get("train") and not ds.splits.get("val")
    n = base.images[0]
    assert ds.counts("test") == (base.test + 4, (base.test + 4) * n, 2 * (base.test + 4) * n)
    small = {r.pid for r in load_dataset("toypedes", tiny.parent).split("test")}
    pids = sorted({r.pid for r in ds.split("test")})
    first_extra = base.benchmark_ids + base.weak_ids + 1
    assert pids == sorted(small) + list(range(first_extra, first_extra + 4))
    for rec in ds.split("test"):  # the base test split's images are the very same files
        if rec.pid in small:
            assert rec.path.read_bytes() == (tiny / "imgs" / rec.path.relative_to(folder / "imgs")).read_bytes()
    # the extra identities come after the benchmark and the weak corpus in the identity stream
    stream = identity_stream(0)
    drawn = [next(stream) for _ in range(base.benchmark_ids + base.weak_ids + 4)]
    ident = json.loads((folder / "attributes.json").read_text())["identities"]
    assert [ident[str(p)]["split"] for p in pids] == ["test"] * len(pids)
    extra = [{k: v for k, v in ident[str(p)].items() if k != "split"} for p in pids[-4:]]
    assert extra == [json.loads(json.dumps(i.to_dict())) for i in drawn[-4:]]
    assert json.loads((folder / "meta.json").read_text())["splits"] == ["test"]
    # deterministic
    assert _tree_hash(generate_toypedes(tmp_path / "b", preset="tiny-large", seed=0)) == _tree_hash(folder)
    with pytest.raises(ValueError, match="test split only"):
        generate_toypedes(tmp_path / "c", preset="tiny-large", captions="weak")
    with pytest.raises(ValueError, match="test split only"):
        generate_toypedes(tmp_path / "c", preset="tiny-large", splits=["train"])
    # the shipped preset: default's 300 test identities and 700 unseen ones
    large, default = TOYPEDES_PRESETS["test-large"], TOYPEDES_PRESETS["default"]
    assert large.test_only and large.test + large.extra_test == 1000
    assert dataclasses.replace(large, extra_test=0, test_only=False) == default
