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
        ("captions", {"text": "a"}, "captions must be a list of strings"),
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
    assert "entry 7 (id 9, file_path 'c/9_1.png'): unreadable image" in msg
    assert "skip_bad_images=True" in msg
    # the hint names the flag and the config key that really exist
    assert "--skip-bad-images" in msg and "--set data.skip_bad_images=true" in msg


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


# ----------------------------------------------------------------------------- what is kept, skipped, counted


def _reference_counts(items: list[dict], split: str) -> tuple[int, int]:
    """(gallery images, queries) of ``split`` as the paper's reference code (IRRA) builds them:
    every image of the split is a gallery image, every caption string a query."""
    anns = [a for a in items if a["split"] == split]
    return len(anns), sum(len(a["captions"]) for a in anns)


def test_blank_caption_is_kept_counted_and_warned(tmp_path, caplog):
    ann = _write_pedes(tmp_path, "CUHK-PEDES", "reid_raw.json", "file_path")
    items = json.loads(ann.read_text())
    items[7]["captions"] = ["a man in red", "   ", "a man in blue"]  # test
    items[0]["captions"] = ["", "a person"]  # train
    ann.write_text(json.dumps(items))
    with caplog.at_level(logging.WARNING, logger="upperson.data"):
        ds = load_dataset("cuhk-pedes", tmp_path)
    tok = build_tokenizer("ViT-B-16")
    queries = QueryDataset(ds.split("test"), tok)
    assert (len(ds.split("test")), len(queries)) == _reference_counts(items, "test")
    assert queries.texts[3] == ""  # entry 6 gives queries 0-1, entry 7 gives 2-4
    assert ds.split("test")[1].captions == ["a man in red", "", "a man in blue"]
    assert ds.counts("train")[2] == sum(len(a["captions"]) for a in items if a["split"] == "train")
    assert ds.note("kept", "blank captions") == 2
    assert "kept 2 blank captions (train 1, test 1)" in ds.summary()
    assert any("blank caption" in r.getMessage() and "entry 7" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)


def test_image_without_captions_is_a_distractor_in_test_and_skipped_in_train(tmp_path, caplog):
    ann = _write_pedes(tmp_path, "CUHK-PEDES", "reid_raw.json", "file_path")
    items = json.loads(ann.read_text())
    items[8]["captions"] = []  # test, pid 11's only image
    items[1]["captions"] = []  # train
    ann.write_text(json.dumps(items))
    with caplog.at_level(logging.WARNING, logger="upperson.data"):
        ds = load_dataset("cuhk-pedes", tmp_path)
    test = ds.split("test")
    assert (len(test), len(QueryDataset(test, build_tokenizer("ViT-B-16")))) == _reference_counts(items, "test")
    assert test[2].captions == [] and test[2].pid == 11
    assert len(GalleryDataset(test, None)) == 3
    assert ds.counts("train") == (3, 4, 9)  # a/17_1.png is skipped: nothing to train on
    assert [r.path.name for r in ds.split("train")] == ["17_0.png", "5_0.png", "42_0.png", "42_1.png"]
    assert ds.note("kept", "images without captions") == 1
    assert ds.note("skipped", "train images without captions") == 1
    summary = ds.summary()
    assert "kept 1 image without captions (test 1)" in summary
    assert "skipped 1 train image without captions (train 1)" in summary
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "entry 8" in warned and "entry 1" in warned


def test_skipped_bad_images_are_counted_in_the_summary(tmp_path):
    ann = _write_pedes(tmp_path, "CUHK-PEDES", "reid_raw.json", "file_path")
    _break_images(ann.parent)
    ds = load_dataset("cuhk-pedes", tmp_path, skip_bad_images=True)
    assert ds.note("skipped", "bad images") == 2
    assert "skipped 2 bad images (train 1, test 1): missing or unreadable" in ds.summary()


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_missing_image_folder_is_named(tmp_path, name):
    folder, ann, key = FORMATS[name]
    _write_pedes(tmp_path, folder, ann, key)
    imgs = tmp_path / folder / "imgs"
    for p in sorted(imgs.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    imgs.rmdir()
    for skip in (False, True):
        with pytest.raises(DatasetError) as info:
            load_dataset(name, tmp_path, skip_bad_images=skip)
        msg = str(info.value)
        assert f"the image folder {imgs} does not exist" in msg
        assert "bad image" not in msg


def test_generic_missing_image_folder_is_named(tmp_path):
    ann = tmp_path / "ann.jsonl"
    ann.write_text("".join(json.dumps({"image": f"photos/{i}.png", "pid": i, "caption": "a b", "split": "test"}) + "\n"
                           for i in range(3)))
    with pytest.raises(DatasetError, match=f"the image folder {tmp_path / 'photos'} does not exist"):
        load_dataset("generic", ann)


BOM_FORMATS = {**FORMATS, "toypedes-weak": ("ToyPEDES-weak", "reid_raw.json", "file_path")}


@pytest.mark.parametrize("name", sorted(BOM_FORMATS))
def test_every_reader_accepts_a_utf8_bom(tmp_path, name):
    folder, ann, key = BOM_FORMATS[name]
    path = _write_pedes(tmp_path, folder, ann, key)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    ds = load_dataset(name, tmp_path)
    for split, counts in _expected().items():
        assert ds.counts(split) == counts


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv"])
def test_generic_reader_accepts_a_utf8_bom(tmp_path, suffix):
    _png(tmp_path / "x.png", 1)
    row = {"image": "x.png", "pid": 1, "caption": "a b", "split": "test"}
    ann = tmp_path / f"ann{suffix}"
    if suffix == ".json":
        text = json.dumps([row])
    elif suffix == ".jsonl":
        text = json.dumps(row) + "\n"
    else:
        text = "image,pid,caption,split\nx.png,1,a b,test\n"
    ann.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert load_dataset("generic", ann).counts("test") == (1, 1, 1)


def test_generic_csv_empty_cell_and_blank_caption(tmp_path):
    for name in ("x.png", "y.png"):
        _png(tmp_path / name, 1)
    ann = tmp_path / "ann.csv"
    ann.write_text("image,pid,captions,caption,split\n"
                   "x.png,1,a red coat ||  || a blue bag,,test\n"
                   "y.png,2,,one caption,test\n")
    ds = load_dataset("generic", ann)
    assert [r.captions for r in ds.split("test")] == [["a red coat", "", "a blue bag"], ["one caption"]]


def _truncated_jpeg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    import numpy as np

    pixels = (np.random.default_rng(0).random((96, 32, 3)) * 255).astype("uint8")
    Image.fromarray(pixels).save(path, format="JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 64])  # cut in the entropy-coded data


def test_truncated_jpeg_is_caught_when_read(tmp_path):
    ann = _write_pedes(tmp_path, "CUHK-PEDES", "reid_raw.json", "file_path")
    items = json.loads(ann.read_text())
    items[7]["file_path"] = "c/9_1.jpg"
    ann.write_text(json.dumps(items))
    cut = ann.parent / "imgs" / "c/9_1.jpg"
    _truncated_jpeg(cut)
    with Image.open(cut) as im:
        im.verify()  # PIL's verify does not notice: the reader must
    with pytest.raises(DatasetError, match=r"entry 7 .*truncated JPEG"):
        load_dataset("cuhk-pedes", tmp_path)
    ds = load_dataset("cuhk-pedes", tmp_path, skip_bad_images=True)
    assert ds.counts("test") == (2, 2, 3) and ds.note("skipped", "bad images") == 1


def test_unreadable_image_in_a_dataloader_worker_is_one_clear_error(tmp_path):
    ann = _write_pedes(tmp_path, "CUHK-PEDES", "reid_raw.json", "file_path")
    broken = ann.parent / "imgs" / "c/9_1.png"
    ds = load_dataset("cuhk-pedes", tmp_path, check_images=False)
    broken.write_bytes(b"not a png")  # broken after it was read (or check_images=False)
    gallery = GalleryDataset(ds.split("test"), build_transforms((24, 8), train=False))
    loader = torch.utils.data.DataLoader(gallery, batch_size=3, num_workers=1)
    with pytest.raises(DatasetError) as info:
        next(iter(loader))
    msg = str(info.value)
    assert msg.startswith(f"{broken.resolve()}: unreadable image")
    assert "\n" not in msg and "Traceback" not in msg and "worker" not in msg
    assert "Traceback" in info.value.worker_traceback


def test_data_root_mistakes_are_named(tmp_path):
    """What users pass by mistake: the annotation file itself (accepted), another file, or the
    root of another dataset (the error says which --dataset it holds)."""
    ann = _write_pedes(tmp_path, "ICFG-PEDES", "ICFG-PEDES.json", "file_path")
    assert load_dataset("icfg-pedes", ann).counts("test") == _expected()["test"]
    with pytest.raises(DatasetError, match=r"the data root is a file; give the folder that holds ICFG-PEDES/"):
        load_dataset("icfg-pedes", ann.parent / "imgs" / "a" / "17_0.png")
    with pytest.raises(DatasetError) as info:
        load_dataset("cuhk-pedes", tmp_path)
    msg = str(info.value)
    assert f"{tmp_path / 'CUHK-PEDES' / 'reid_raw.json'}: annotation file not found" in msg
    assert "ICFG-PEDES/ (--dataset icfg-pedes)" in msg


@pytest.mark.parametrize("suffix,text", [
    (".jsonl", '{"image": "imgs/a.png", "pid": 1, "caption": "A man.", "split": "test"}\n'),
    (".csv", "image,pid,captions,split\nimgs/a.png,1,A man.,test\n"),
    (".json", '[{"file_path": "imgs/a.png", "id": 1, "captions": ["A man."], "split": "test"}]'),
], ids=["jsonl", "csv", "json"])
def test_a_generic_annotation_file_given_to_another_dataset_points_to_the_generic_one(tmp_path, suffix, text):
    """Issue 21: leaving out data.dataset=generic said "give the folder that holds ToyPEDES/", the wrong way."""
    ann = tmp_path / f"mine{suffix}"
    ann.write_text(text)
    with pytest.raises(DatasetError) as info:
        load_dataset("toypedes", ann)
    msg = str(info.value)
    assert msg.startswith(f"{ann}: ") and "looks like an annotation file of the generic format" in msg
    assert "--set data.dataset=generic" in msg and "--dataset generic" in msg and "\n" not in msg
    # a file that is no generic annotation file keeps the old advice
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(DatasetError, match=r"the data root is a file; give the folder that holds ToyPEDES/"):
        load_dataset("toypedes", other)
