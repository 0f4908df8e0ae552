"""Index folders and exact search: rankings equal the reference (ties included), incremental
and resumable builds, checksums, and one error line for bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from upperson.data import build_tokenizer, build_transforms
from upperson.io import file_digest
from upperson.model import build_model
from upperson.model.upperson import UPPerson
from upperson.search import build as build_module
from upperson.search.build import BuildLimits, build_index, load_image
from upperson.search.engine import ExactSearch, faiss_available
from upperson.search.store import (Entry, IndexFolderError, IndexStore, Manifest, write_lock, write_manifest,
                                   write_segment)

from tests.conftest import tiny_model_config

REPO = Path(__file__).resolve().parent.parent
ENGINES = ["torch"] + (["faiss"] if faiss_available() else [])


# ---------------------------------------------------------------------- the engines
def _dyadic_store(tmp_path: Path, dtype: str = "float32") -> tuple[IndexStore, np.ndarray]:
    """Features with entries in {-2..2}/8: every dot product is exact in float32, so ties are exact
    ties in every engine; several entries share a row (same content) and rows repeat values."""
    rng = np.random.default_rng(0)
    segs = [rng.integers(-2, 3, (n, 16)).astype(np.float32) / 8 for n in (40, 1, 55)]
    records = [write_segment(tmp_path, i, s.astype(dtype)) for i, s in enumerate(segs)]
    entries = []
    for i in range(130):
        seg = int(rng.integers(0, 3))
        entries.append(Entry(f"/g/{i}.png", seg, int(rng.integers(0, len(segs[seg]))), f"{i:040x}", 1, 1))
    write_manifest(tmp_path, Manifest(model={"key": "k"}, dim=16, dtype=dtype, segments=records, entries=entries))
    feats = np.stack([segs[e.segment][e.row] for e in entries]).astype(np.float64)
    return IndexStore.open(tmp_path), feats


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_exact_engines_equal_the_reference_ranking_with_ties(tmp_path, engine, dtype):
    store, feats = _dyadic_store(tmp_path, dtype)
    queries = np.random.default_rng(1).integers(-2, 3, (6, 16)).astype(np.float32) / 8
    search = ExactSearch(store, engine)
    for k in (1, 7, 20, 130):
        for q, hits in zip(queries, search.search(queries, k)):
            scores = feats @ q
            reference = np.lexsort((np.arange(len(scores)), -scores))[:k]  # score, then entry order
            assert [h.entry for h in hits] == list(reference)
            assert [h.score for h in hits] == list(scores[reference])
            assert len(set(scores[reference])) < k or k == 1  # the case has ties inside the top k


def test_engines_agree_on_random_features(tmp_path):
    rng = np.random.default_rng(2)
    feats = rng.standard_normal((500, 32)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    write_manifest(tmp_path, Manifest(model={"key": "k"}, dim=32, dtype="float32",
                                      segments=[write_segment(tmp_path, 0, feats)],
                                      entries=[Entry(f"{i}", 0, i, "", 1, 1) for i in range(500)]))
    store = IndexStore.open(tmp_path)
    queries = rng.standard_normal((4, 32)).astype(np.float32)
    torch_hits = ExactSearch(store, "torch").search(queries, 25)
    reference = torch.topk(torch.from_numpy(queries) @ torch.from_numpy(feats).T, 25).indices.numpy()
    assert [[h.entry for h in hits] for hits in torch_hits] == reference.tolist()  # today's topk
    if faiss_available():
        assert [[h.entry for h in hits] for hits in ExactSearch(store, "faiss").search(queries, 25)] == reference.tolist()


def test_a_tampered_or_truncated_segment_is_refused(tmp_path):
    store, _ = _dyadic_store(tmp_path)
    seg = tmp_path / "segments" / store.manifest.segments[0]["name"]
    data = bytearray(seg.read_bytes())
    data[-1] ^= 1
    seg.write_bytes(bytes(data))
    with pytest.raises(IndexFolderError, match="corrupted"):
        IndexStore.open(tmp_path)
    seg.write_bytes(bytes(data[:-3]))
    with pytest.raises(IndexFolderError, match="truncated"):
        IndexStore.open(tmp_path)


# ---------------------------------------------------------------------- building
@pytest.fixture
def tiny_model() -> UPPerson:
    return build_model(tiny_model_config(pretrained="random")).eval()


@pytest.fixture
def gallery(tmp_path, toypedes_root) -> Path:
    folder = tmp_path / "gallery"
    shutil.copytree(toypedes_root / "ToyPEDES" / "imgs" / "test", folder / "test")
    return folder


def _reference_features(model: UPPerson, paths) -> np.ndarray:
    transform = build_transforms(model.image_size, train=False)
    with torch.no_grad():
        batch = torch.stack([transform(load_image(Path(p), BuildLimits())) for p in paths])
        return F.normalize(model.encode_image(batch).float(), dim=-1).numpy()


class _CountEncoded:
    """Counts the images that go through UPPerson.encode_image (merged copies included)."""

    def __init__(self, monkeypatch) -> None:
        self.images = 0
        real = UPPerson.encode_image

        def counting(model, images):
            self.images += len(images)
            return real(model, images)

        monkeypatch.setattr(UPPerson, "encode_image", counting)


def test_build_matches_direct_encoding_and_updates_incrementally(tmp_path, tiny_model, gallery, monkeypatch):
    out = tmp_path / "index"
    counter = _CountEncoded(monkeypatch)
    build_index(tiny_model, gallery, out, source="test", progress=False, segment_rows=7)
    files = sorted(str(p) for p in gallery.rglob("*.png"))
    assert counter.images == len(files)
    store = IndexStore.open(out)
    assert [e.path for e in store.manifest.entries] == files and store.manifest.complete
    np.testing.assert_allclose(store.features_of(list(range(len(files)))), _reference_features(tiny_model, files),
                               atol=1e-5)

    # change one file's content, copy another (known content), add a new one, delete one
    images = sorted(gallery.rglob("*.png"))
    changed, copied, deleted = images[0], images[1], images[2]
    new = gallery / "new.png"
    from PIL import Image
    Image.new("RGB", (32, 96), (200, 10, 10)).save(new)
    with Image.open(images[3]) as im:
        im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(changed)
    shutil.copyfile(images[4], gallery / "copy.png")
    deleted.unlink()
    counter.images = 0
    build_index(tiny_model, gallery, out, source="test", progress=False)
    assert counter.images == 2  # the changed file and the new one; the copy reuses its row
    store = IndexStore.open(out)
    now = sorted(str(p) for p in gallery.rglob("*.png"))
    assert [e.path for e in store.manifest.entries] == now and str(deleted) not in now
    np.testing.assert_allclose(store.features_of(list(range(len(now)))), _reference_features(tiny_model, now),
                               atol=1e-5)
    del copied


def test_an_interrupted_build_resumes_where_it_stopped(tmp_path, tiny_model, gallery, monkeypatch):
    out = tmp_path / "index"
    calls = {"n": 0}
    real = build_module.load_image

    def interrupting(path, limits):
        calls["n"] += 1
        if calls["n"] == 13:
            raise KeyboardInterrupt
        return real(path, limits)

    monkeypatch.setattr(build_module, "load_image", interrupting)
    with pytest.raises(KeyboardInterrupt):
        build_index(tiny_model, gallery, out, source="test", progress=False, batch_size=4, segment_rows=4)
    partial = IndexStore.open(out)
    assert not partial.manifest.complete and len(partial) == 12  # three batches of 4 were kept
    monkeypatch.setattr(build_module, "load_image", real)
    counter = _CountEncoded(monkeypatch)
    build_index(tiny_model, gallery, out, source="test", progress=False, batch_size=4, segment_rows=4)
    files = sorted(str(p) for p in gallery.rglob("*.png"))
    assert counter.images == len(files) - 12
    store = IndexStore.open(out)
    assert store.manifest.complete and [e.path for e in store.manifest.entries] == files
    np.testing.assert_allclose(store.features_of(list(range(len(files)))), _reference_features(tiny_model, files),
                               atol=1e-5)


def test_bad_files_are_skipped_and_named(tmp_path, tiny_model, gallery, caplog):
    (gallery / "broken.png").write_bytes(b"not an image")
    big = gallery / "huge.png"
    with open(big, "wb") as fh:  # sparse: 2 MB that take no disk
        fh.truncate(2 * 1024 * 1024)
    report = build_index(tiny_model, gallery, tmp_path / "index", source="test", progress=False,
                         limits=BuildLimits(max_bytes=1024 * 1024))
    reasons = dict(report.skipped)
    assert set(reasons) == {str(gallery / "broken.png"), str(big)}
    assert "not a readable image" in reasons[str(gallery / "broken.png")] and "--max-bytes" in reasons[str(big)]
    assert "skipped 2 of" in caplog.text and "broken.png" in caplog.text
    assert len(IndexStore.open(tmp_path / "index")) == report.listed - 2


def test_another_model_and_a_second_writer_are_refused(tmp_path, tiny_model, gallery):
    out = tmp_path / "index"
    build_index(tiny_model, gallery, out, source="test", progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    other = build_model(tiny_model_config(pretrained="random", lora=tiny_model.config.lora.__class__(rank=2))).eval()
    with pytest.raises(IndexFolderError, match="another model"):
        build_index(other, gallery, out, source="other", progress=False)
    with write_lock(out):
        with pytest.raises(IndexFolderError, match="another process"):
            build_index(tiny_model, gallery, out, source="test", progress=False)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


# ---------------------------------------------------------------------- the commands
def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "upperson", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_index_and_search_json_end_to_end(tmp_path, gallery):
    from upperson.embedded import embedded_available, load_embedded_model
    from upperson.evaluation import encode_texts

    if not embedded_available():
        pytest.skip("no shipped embedded model")
    out = tmp_path / "index"
    proc = _cli("index", str(gallery), "--out", str(out), "--no-progress", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    files = sorted(str(p) for p in gallery.rglob("*.png"))
    assert summary["indexed"] == summary["encoded"] == len(files)
    text = "a woman in a red coat with a black backpack"
    proc = _cli("search", str(out), text, "--top-k", "5", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    model = load_embedded_model("upperson").eval()
    query = encode_texts(model, build_tokenizer(model.config.name)([text]))[0].numpy()
    scores = _reference_features(model, files) @ query
    want = np.argsort(-scores, kind="stable")[:5]
    assert [r["path"] for r in result["results"]] == [files[i] for i in want]
    np.testing.assert_allclose([r["score"] for r in result["results"]], scores[want], atol=1e-5)
    # by image: the image itself is the best match
    proc = _cli("search", str(out), "--image", files[3], "--top-k", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["results"][0]["path"] == files[3]


@pytest.mark.parametrize("args, needle", [
    (["search", "{tmp}"], "DESCRIPTION or --image"),
    (["search", "{tmp}", "a man"], "no index at"),
    (["search", "{tmp}", "a man", "--top-k", "0"], "--top-k 0"),
    (["index", "{tmp}/nowhere", "--out", "{tmp}/i"], "does not exist"),
    (["index", "{tmp}", "--out", "{tmp}/i", "--batch-size", "0"], "--batch-size 0"),
])
def test_bad_input_is_one_error_line(tmp_path, args, needle):
    proc = _cli(*[a.replace("{tmp}", str(tmp_path)) for a in args], timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
    assert not (tmp_path / "i").exists()


# ---------------------------------------------------------------------- approximate search
def _centres(ids: int, dim: int) -> np.ndarray:
    return np.random.default_rng(5).standard_normal((ids, dim))


def _structured_store(tmp_path: Path, ids: int = 500, per: int = 20, dim: int = 32) -> tuple[IndexStore, np.ndarray]:
    """Identity-clustered unit features (like a re-id gallery), in two segments."""
    rng = np.random.default_rng(3)
    x = np.repeat(_centres(ids, dim), per, axis=0) + 0.5 * rng.standard_normal((ids * per, dim))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    half = len(x) // 2
    segments = [write_segment(tmp_path, 0, x[:half]), write_segment(tmp_path, 1, x[half:])]
    entries = [Entry(f"/g/{i}.png", int(i >= half), i - half * int(i >= half), "", 1, 1) for i in range(len(x))]
    write_manifest(tmp_path, Manifest(model={"key": "k"}, dim=dim, dtype="float32", segments=segments, entries=entries))
    return IndexStore.open(tmp_path), x


def test_approximate_search_reports_recall_and_meets_the_target(tmp_path):
    from upperson.search.approximate import AnnConfig, ApproximateSearch, build_ann

    store, x = _structured_store(tmp_path)
    record = build_ann(store, AnnConfig(nlist=100, nprobe=10, m=8, nbits=6, recall_queries=100))
    assert record["nprobe"] / record["nlist"] <= 0.10 and record["recall_at_10"] >= 0.95
    store.manifest.ann = record
    write_manifest(tmp_path, store.manifest)
    search = ApproximateSearch(IndexStore.open(tmp_path))
    # new images of known identities as queries, against exact search computed here
    rng = np.random.default_rng(4)
    queries = _centres(500, x.shape[1])[rng.choice(500, 50, replace=False)] + 0.5 * rng.standard_normal((50, x.shape[1]))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    truth = np.argsort(-(queries @ x.T), axis=1, kind="stable")[:, :10]
    found = [[h.entry for h in hits] for hits in search.search(queries, 10)]
    recall = np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth.tolist(), found)])
    assert recall >= 0.95
    for q, hits in zip(queries[:5], search.search(queries[:5], 10)):  # re-ranked by the stored features
        np.testing.assert_allclose([h.score for h in hits], x[[h.entry for h in hits]] @ q, atol=1e-6)


def test_approximate_index_refused_when_stale_tampered_or_too_small(tmp_path):
    from upperson.search.approximate import AnnConfig, ApproximateSearch, build_ann

    small, _ = _dyadic_store(tmp_path / "small")
    with pytest.raises(IndexFolderError, match="at least"):
        build_ann(small, AnnConfig())
    store, x = _structured_store(tmp_path / "big")
    store.manifest.ann = build_ann(store, AnnConfig(nlist=50, nprobe=5, m=8, nbits=6, recall_queries=20))
    write_manifest(store.folder, store.manifest)
    ann = store.folder / "ann" / store.manifest.ann["file"]
    data = bytearray(ann.read_bytes())
    data[len(data) // 2] ^= 1
    ann.write_bytes(bytes(data))
    with pytest.raises(IndexFolderError, match="corrupted"):
        ApproximateSearch(IndexStore.open(store.folder))
    store.manifest.ann["rows"] -= 1
    write_manifest(store.folder, store.manifest)
    with pytest.raises(IndexFolderError, match="build it again"):
        ApproximateSearch(IndexStore.open(store.folder))


def test_sharded_index_under_torchrun_equals_the_single_process_one(tmp_path, gallery):
    from upperson.embedded import embedded_available

    if not embedded_available():
        pytest.skip("no shipped embedded model")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    common = [str(gallery), "--no-progress", "--batch-size", "4", "--segment-rows", "8"]
    two = subprocess.run([*torchrun, "-m", "upperson", "index", *common, "--out", str(tmp_path / "two")], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    one = _cli("index", *common, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    sharded, single = IndexStore.open(tmp_path / "two"), IndexStore.open(tmp_path / "one")
    assert {s["name"][:3] for s in sharded.manifest.segments} == {"r0-", "r1-"}  # both ranks encoded
    assert [e.path for e in sharded.manifest.entries] == [e.path for e in single.manifest.entries]
    assert sharded.manifest.complete and not (tmp_path / "two" / ".shards").exists()
    everything = list(range(len(single)))
    np.testing.assert_allclose(sharded.features_of(everything), single.features_of(everything), atol=1e-6)


def test_an_interrupted_sharded_run_is_taken_in_by_the_next_one(tmp_path, tiny_model, gallery, monkeypatch):
    from upperson.index import file_sha1
    from upperson.search.shards import save_progress

    out = tmp_path / "index"
    files = sorted(gallery.rglob("*.png"))
    done = files[:5]  # what rank 1 had finished: one segment and its progress file
    record = write_segment(out, "r1-000000.npy", _reference_features(tiny_model, done))
    save_progress(out, 1, [record], {i: Entry(str(p), 0, i, file_sha1(p), p.stat().st_size, p.stat().st_mtime_ns)
                                     for i, p in enumerate(done)}, first_new=0)
    counter = _CountEncoded(monkeypatch)
    build_index(tiny_model, gallery, out, source="test", progress=False)
    assert counter.images == len(files) - 5
    store = IndexStore.open(out)
    assert [e.path for e in store.manifest.entries] == [str(p) for p in files] and store.manifest.complete
    assert not (out / ".shards").exists()
    np.testing.assert_allclose(store.features_of(list(range(len(files)))), _reference_features(tiny_model, files),
                               atol=1e-5)


def test_synthetic_benchmark_galleries_have_the_similarities_asked_for(tmp_path):
    from upperson.search.benchmark import Similarity, SyntheticGallery, benchmark_search, calibrate

    target = Similarity(0.87, 0.095)
    gallery = SyntheticGallery(256, target, per_identity=4)
    store = gallery.write(tmp_path / "g", 2000, "float32")
    feats = store.features_of(list(range(2000)))
    measured = calibrate(feats, np.arange(2000) // 4)
    assert abs(measured.same - target.same) < 0.02 and abs(measured.different - target.different) < 0.02
    rows = benchmark_search([2000], dim=16, repeats=3, workdir=tmp_path)
    assert {r["engine"] for r in rows} == set(ENGINES)  # exact only below 10,000 images
    assert all(r["recall@10"] == 1.0 and r["single_p50_ms"] > 0 for r in rows)


def test_the_demo_opens_an_index_without_encoding_again(tmp_path, tiny_model, gallery, monkeypatch):
    from PIL import Image

    from demo.__main__ import seed_cache_from_index
    from demo.gallery import GalleryError, index_gallery
    from demo.search import SearchEngine

    out = tmp_path / "index"
    build_index(tiny_model, gallery, out, source="test", progress=False)
    demo_gallery = index_gallery(out)
    assert [str(it.path) for it in demo_gallery.items] == [e.path for e in IndexStore.open(out).manifest.entries]
    seed_cache_from_index(out, tiny_model, tmp_path / "cache")
    counter = _CountEncoded(monkeypatch)
    engine = SearchEngine(tiny_model, demo_gallery, cache_dir=tmp_path / "cache")
    hits = engine.search("a man in a red coat", top_k=3).rankings[0].hits
    assert counter.images == 0  # every feature came from the index
    assert len(hits) == 3 and all(h.file.endswith(".png") for h in hits)

    other = build_model(tiny_model_config(pretrained="random", lora=tiny_model.config.lora.__class__(rank=2))).eval()
    with pytest.raises(ValueError, match="another model"):
        seed_cache_from_index(out, other, tmp_path / "cache")
    # a list of files whose image lies outside the list's folder: refused, naming --allow-root
    outside = tmp_path / "elsewhere" / "x.png"
    outside.parent.mkdir()
    Image.new("RGB", (32, 96), (1, 2, 3)).save(outside)
    listing = tmp_path / "lists" / "files.txt"
    listing.parent.mkdir()
    listing.write_text(f"{outside}\n")
    build_index(tiny_model, listing, tmp_path / "index2", source="test", progress=False)
    with pytest.raises(GalleryError, match="allow-root"):
        index_gallery(tmp_path / "index2")
    assert len(index_gallery(tmp_path / "index2", allow_roots=[outside.parent])) == 1


@pytest.mark.parametrize("bad, message", [("nan", "row 1 is not finite"),
                                          ("not unit length", "not a model's features.*row 1 .length 3")])
def test_an_index_whose_features_are_not_a_models_is_not_seeded(tmp_path, tiny_model, gallery, bad, message):
    """A tampered index whose checksums were rewritten to match: its features are checked before the
    demo's cache takes them (finite, L2-normalised), and nothing is added."""
    from demo.__main__ import seed_cache_from_index
    from demo.search import FEATURE_CACHE

    out = tmp_path / "index"
    build_index(tiny_model, gallery, out, source="test", progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    seg = out / "segments" / manifest["segments"][0]["name"]
    feats = np.load(seg).copy()
    feats[1] = np.nan if bad == "nan" else 3 * feats[1]
    np.save(seg, feats)
    manifest["segments"][0]["sha256"] = file_digest(seg)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=message):
        seed_cache_from_index(out, tiny_model, tmp_path / "cache")
    assert not (tmp_path / "cache" / FEATURE_CACHE).exists()
