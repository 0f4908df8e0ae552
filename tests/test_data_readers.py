"""Dataset readers on small fixture files written here, one per format, and their errors."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from upperson.data import (
    DATASETS,
    DatasetError,
    GalleryDataset,
    QueryDataset,
    TrainCaptionDataset,
    build_tokenizer,
    build_transforms,
    load_dataset,
)

# (pid, image name, number of captions, split): 3 train ids with uneven images and captions
ENTRIES = [
    (17, "a/17_0.png", 2, "train"),
    (17, "a/17_1.png", 1, "train"),
    (5, "b/5_0.png", 2, "train"),
    (42, "b/42_0.png", 3, "train"),
    (42, "b/42_1.png", 2, "train"),
    (8, "c/8_0.png", 2, "val"),
    (9, "c/9_0.png", 2, "test"),
    (9, "c/9_1.png", 2, "test"),
    (11, "c/11_0.png", 1, "test"),
]


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 24), (value, 255 - value, 3 * value % 256)).save(path)


def _captions(pid: int, name: str, n: int) -> list[str]:
    return [f"person {pid} image {name} caption {j}" for j in range(n)]


def _write_pedes(root: Path, folder: str, ann: str, path_key: str, entries=ENTRIES) -> Path:
    ddir = root / folder
    items = []
    for i, (pid, name, n, split) in enumerate(entries):
        _png(ddir / "imgs" / name, 10 * i)
        items.append({"id": pid, path_key: name, "captions": _captions(pid, name, n), "split": split})
    (ddir / ann).write_text(json.dumps(items))
    return ddir / ann


FORMATS = {
    "cuhk-pedes": ("CUHK-PEDES", "reid_raw.json", "file_path"),
    "icfg-pedes": ("ICFG-PEDES", "ICFG-PEDES.json", "file_path"),
    "rstpreid": ("RSTPReid", "data_captions.json", "img_path"),
    "toypedes": ("ToyPEDES", "reid_raw.json", "file_path"),
}


def _expected(entries=ENTRIES) -> dict[str, tuple[int, int, int]]:
    out: dict[str, tuple[set, int, int]] = {}
    for pid, _, n, split in entries:
        ids, imgs, caps = out.get(split, (set(), 0, 0))
        out[split] = (ids | {pid}, imgs + 1, caps + n)
    return {s: (len(ids), imgs, caps) for s, (ids, imgs, caps) in out.items()}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_public_format_counts_paths_and_ids(tmp_path, name):
    folder, ann, key = FORMATS[name]
    _write_pedes(tmp_path, folder, ann, key)
    ds = load_dataset(name, tmp_path)
    assert set(ds.splits) == {"train", "val", "test"}
    for split, counts in _expected().items():
        assert ds.counts(split) == counts
    train = ds.split("train")
    assert [r.pid for r in train] == [17, 17, 5, 42, 42]
    assert [r.image_id for r in train] == list(range(5))
    assert train[2].path == (tmp_path / folder / "imgs" / "b/5_0.png").resolve()
    assert train[2].path.is_absolute()
    assert train[3].captions == _captions(42, "b/42_0.png", 3)
    assert [r.image_id for r in ds.split("test")] == [0, 1, 2]
    # the dataset's own folder is accepted as root too
    assert load_dataset(name, tmp_path / folder).counts("test") == _expected()["test"]


def test_summary_table_and_missing_split(tmp_path):
    _write_pedes(tmp_path, "ICFG-PEDES", "ICFG-PEDES.json", "file_path",
                 [e for e in ENTRIES if e[3] != "val"])
    ds = load_dataset("icfg-pedes", tmp_path)
    lines = ds.summary().splitlines()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:5]]
            for line in lines if line.startswith("|")}
    assert rows["subset"] == ["ids", "images", "captions"]
    assert rows["train"] == ["3", "5", "10"]
    assert rows["test"] == ["2", "3", "5"]
    assert "val" not in rows
    with pytest.raises(DatasetError, match="no 'val' split"):
        ds.split("val")


def test_summary_is_logged(tmp_path, caplog):
    _write_pedes(tmp_path, "CUHK-PEDES", "reid_raw.json", "file_path")
    with caplog.at_level(logging.INFO, logger="upperson.data"):
        load_dataset("cuhk-pedes", tmp_path)
    assert any("captions" in r.getMessage() and "train" in r.getMessage() for r in caplog.records)


def test_train_dataset_one_sample_per_caption_and_relabelled_pids(tmp_path):
    _write_pedes(tmp_path, "CUHK-PEDES", "reid_raw.json", "file_path")
    ds = load_dataset("cuhk-pedes", tmp_path)
    tok = build_tokenizer("ViT-B-16")
    train = TrainCaptionDataset(ds.split("train"), build_transforms((48, 16), train=True), tok)
    assert len(train) == 2 + 1 + 2 + 3 + 2
    assert train.num_classes == 3
    # sorted original pids 5, 17, 42 -> 0, 1, 2; samples in record order, one per caption
    assert train.pids == [1, 1, 1, 0, 0, 2, 2, 2, 2, 2]
    item = train[6]
    assert item["image"].shape == (3, 48, 16) and item["image"].dtype.is_floating_point
    assert item["tokens"].shape == (77,) and item["tokens"].dtype == torch.long
    assert (item["pid"], item["image_id"], item["caption_index"]) == (2, 3, 1)
    assert torch.equal(item["tokens"], tok(_captions(42, "b/42_0.png", 3)[1])[0])

    gallery = GalleryDataset(ds.split("test"), build_transforms((48, 16), train=False))
    assert len(gallery) == 3
    g = gallery[2]
    assert (g["pid"], g["index"]) == (11, 2) and g["image"].shape == (3, 48, 16)

    queries = QueryDataset(ds.split("test"), tok)
    assert len(queries) == 5
    q = queries[4]
    assert (q["pid"], q["image_id"], q["text"]) == (11, 2, _captions(11, "c/11_0.png", 1)[0])
    assert torch.equal(q["tokens"], tok(q["text"])[0])


def test_image_cache_returns_same_pixels(tmp_path):
    _write_pedes(tmp_path, "CUHK-PEDES", "reid_raw.json", "file_path")
    records = load_dataset("cuhk-pedes", tmp_path).split("test")
    tf = build_transforms((24, 8), train=False)
    plain = GalleryDataset(records, tf)
    expected = [plain[i]["image"] for i in range(3)]
    cached = GalleryDataset(records, tf, cache_images=True)  # decodes every image now
    assert cached.store.cached_bytes == 3 * 24 * 8 * 3  # the 24 x 8 fixture images, uint8 RGB
    for p in records:
        p.path.unlink()  # served from memory now
    for i in range(3):
        assert torch.equal(cached[i]["image"], expected[i])
    with pytest.raises(DatasetError, match="image not found"):
        plain[0]


# ----------------------------------------------------------------------------- generic format


def test_generic_jsonl_merges_rows_and_relative_paths(tmp_path):
    rows = []
    for i, (pid, name, n, split) in enumerate(ENTRIES):
        _png(tmp_path / "data" / "imgs" / name, 10 * i)
        caps = _captions(pid, name, n)
        if n >= 2:  # first caption on its own line, the rest as a list
            rows.append({"image": f"imgs/{name}", "pid": pid, "caption": caps[0], "split": split})
            rows.append({"image": f"imgs/{name}", "pid": pid, "captions": caps[1:], "split": split})
        else:
            rows.append({"image": f"imgs/{name}", "pid": str(pid), "captions": caps, "split": split})
    ann = tmp_path / "data" / "ann.jsonl"
    ann.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    ds = load_dataset("generic", ann)
    for split, counts in _expected().items():
        assert ds.counts(split) == counts
    assert ds.split("train")[3].captions == _captions(42, "b/42_0.png", 3)
    assert ds.split("train")[3].path == (tmp_path / "data" / "imgs" / "b/42_0.png").resolve()


def test_generic_csv_with_separator(tmp_path):
    ann = tmp_path / "ann.csv"
    with open(ann, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "pid", "captions", "split"])
        for i, (pid, name, n, split) in enumerate(ENTRIES):
            _png(tmp_path / name, 10 * i)
            writer.writerow([name, pid, " || ".join(_captions(pid, name, n)), split])
    ds = load_dataset("generic", ann)
    for split, counts in _expected().items():
        assert ds.counts(split) == counts
    assert ds.split("test")[1].captions == _captions(9, "c/9_1.png", 2)


def test_generic_conflicting_rows(tmp_path):
    _png(tmp_path / "x.png", 1)
    ann = tmp_path / "ann.jsonl"
    ann.write_text(json.dumps({"image": "x.png", "pid": 1, "caption": "a b", "split": "train"}) + "\n"
                   + json.dumps({"image": "x.png", "pid": 2, "caption": "c d", "split": "train"}) + "\n")
    with pytest.raises(DatasetError, match=r"ann\.jsonl: line 2 .*id 1 .* here id 2"):
        load_dataset("generic", ann)


def test_generic_csv_missing_column(tmp_path):
    ann = tmp_path / "ann.csv"
    ann.write_text("image,pid,split\nx.png,1,train\n")
    with pytest.raises(DatasetError, match=r"ann\.csv: CSV header lacks a column 'captions' or 'caption'"):
        load_dataset("generic", ann)


# ----------------------------------------------------------------------------- errors


def test_unknown_dataset_and_missing_root(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'market'.*cuhk-pedes"):
        load_dataset("market", tmp_path)
    with pytest.raises(DatasetError, match="data root not found"):
        load_dataset("cuhk-pedes", tmp_path / "nope")
    assert set(DATASETS) == {"cuhk-pedes", "icfg-pedes", "rstpreid", "toypedes", "toypedes-weak", "generic"}


def test_missing_annotation_file(tmp_path):
    (tmp_path / "RSTPReid").mkdir()
    with pytest.raises(DatasetError) as info:
        load_dataset("rstpreid", tmp_path)
    assert str(tmp_path / "RSTPReid" / "data_captions.json") in str(info.value)
    assert "annotation file not found" in str(info.value)


def test_malformed_json(tmp_path):
    ann = _write_pedes(tmp_path, "CUHK-PEDES", "reid_raw.json", "file_path")
    ann.write_text('[{"id": 1, "file_path": "a.png",\n "captions": ["x"] "split": "train"}]')
    with pytest.raises(DatasetError, match=r"reid_raw\.json: malformed JSON \(line 2"):
        load_dataset("cuhk-pedes", tmp_path)


def test_malformed_jsonl_line(tmp_path):
    ann = tmp_path / "ann.jsonl"
    ann.write_text('{"image": "x.png", "pid": 1, "caption": "a", "split": "train"}\n{oops\n')
    with pytest.raises(DatasetError, match=r"ann\.jsonl: line 2: malformed JSON"):
        load_dataset("generic", ann)


@pytest.mark.parametrize(
    "drop, message",
    [
        ("captions", r"entry 3 \(id 42, file_path 'b/42_0.png'\): missing captions"),
        ("id", r"entry 3 \(file_path 'b/42_0.png'\): missing identity"),
        ("file_path", r"entry 3: missing image path"),
        ("split", r"entry 3 \(id 42, file_path 'b/42_0.png'\): missing 'split'"),
    ],
)
def test_entry_missing_field(tmp_path, drop, message):
    ann = _write_pedes(tmp_path, "CUHK-PEDES", "reid_raw.json", "file_path")
    items = json.loads(ann.read_text())
    del items[3][drop]
    ann.write_text(json.dumps(items))
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset("cuhk-pedes", tmp_path)
    assert str(ann) in str(info.value)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("captions", ["", "  "], "no \\(non-empty\\) captions"),
        ("captions", [3], "caption 0 is not a string"),
        ("id", "forty", "id must be an integer"),
        ("split", "holdout", "split must be one of"),
    ],
)
def test_entry_bad_field(tmp_path, field, value, message):
    ann = _write_pedes(tmp_path, "CUHK-PEDES", "reid_raw.json", "file_path")
    items = json.loads(ann.read_text())
    items[6][field] = value
    ann.write_text(json.dumps(items))
    with pytest.raises(DatasetError, match=r"reid_raw\.json: entry 6 .*" + message):
        load_dataset("cuhk-pedes", tmp_path)


def _break_images(ddir: Path) -> tuple[Path, Path]:
    missing = ddir / "imgs" / "b/5_0.png"
    missing.unlink()
    broken = ddir / "imgs" / "c/9_1.png"
    broken.write_bytes(broken.read_bytes()[:40] + b"\x00garbage" * 8)
    return missing, broken


def test_bad_images_are_errors_naming_entries(tmp_path):
    ann = _write_pedes(tmp_path, "CUHK-PEDES", "reid_raw.json", "file_path")
    missing, broken = _break_images(ann.parent)
    with pytest.raises(DatasetError) as info:
        load_dataset("cuhk-pedes", tmp_path)
    msg = str(info.value)
    assert msg.startswith("2 bad image(s)")
    assert f"entry 2 (id 5, file_path 'b/5_0.png'): image not found: {missing.resolve()}" in msg
    assert f"entry 7 (id 9, file_path 'c/9_1.png'): unreadable image" in msg
    assert "skip_bad_images=True" in msg


def test_check_images_false_only_checks_existence(tmp_path):
    ann = _write_pedes(tmp_path, "CUHK-PEDES", "reid_raw.json", "file_path")
    broken = ann.parent / "imgs" / "c/9_1.png"
    broken.write_bytes(b"not a png")
    ds = load_dataset("cuhk-pedes", tmp_path, check_images=False)
    assert ds.counts("test") == (2, 3, 5)
    (ann.parent / "imgs" / "c/9_0.png").unlink()
    with pytest.raises(DatasetError, match="image not found"):
        load_dataset("cuhk-pedes", tmp_path, check_images=False)
    # the unreadable one is still caught when it is loaded
    gallery = GalleryDataset(ds.split("test"), None)
    with pytest.raises(DatasetError, match=r"9_1\.png: unreadable image"):
        gallery[1]


def test_skip_bad_images_skips_and_warns(tmp_path, caplog):
    ann = _write_pedes(tmp_path, "CUHK-PEDES", "reid_raw.json", "file_path")
    missing, broken = _break_images(ann.parent)
    with caplog.at_level(logging.WARNING, logger="upperson.data"):
        ds = load_dataset("cuhk-pedes", tmp_path, skip_bad_images=True)
    assert ds.counts("train") == (2, 4, 8)  # pid 5 had only that image
    assert ds.counts("test") == (2, 2, 3)
    assert [r.image_id for r in ds.split("test")] == [0, 1]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skipped 2 of 9 images" in warnings[0]
    assert str(missing.resolve()) in warnings[0] and str(broken.resolve()) in warnings[0]


def test_every_image_bad_is_an_error(tmp_path):
    ann = _write_pedes(tmp_path, "CUHK-PEDES", "reid_raw.json", "file_path", ENTRIES[:2])
    for name in ("a/17_0.png", "a/17_1.png"):
        (ann.parent / "imgs" / name).unlink()
    with pytest.raises(DatasetError, match="every image was skipped"):
        load_dataset("cuhk-pedes", tmp_path, skip_bad_images=True)
