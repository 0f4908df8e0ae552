"""The shipped embedded default: it reproduces its model card, and corruption is caught."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from upperson.assets import EMBEDDED_GALLERY_INDEX
from upperson.data import build_tokenizer, build_transforms, load_dataset
from upperson.data.toypedes import generate_toypedes
from upperson.cli.export_embedded import FT_PER_QUERY, PAIRS
from upperson.embedded import (EmbeddedAssetError, EMBEDDED_DIR, embedded_available, load_embedded_model,
                               read_card, sha256_file, verify_assets)
from upperson.evaluation import evaluate_per_query
from upperson.index import model_key
from upperson.model.upperson import UPPerson
from upperson.search.build import BuildLimits, load_image
from upperson.search.store import IndexStore

pytestmark = pytest.mark.skipif(not embedded_available(), reason="assets/embedded is not in this checkout")


@pytest.fixture(scope="module")
def card_root(tmp_path_factory):
    """A data root with the ToyPEDES test split the card was evaluated on (only those identities are drawn)."""
    spec = read_card()["evaluation"]["toypedes"]
    root = tmp_path_factory.mktemp("card-data")
    generate_toypedes(root, preset=spec["preset"], seed=spec["seed"], splits=["test"], domain=spec.get("domain"))
    return root


@pytest.fixture(scope="module")
def card_test_split(card_root):
    """The ToyPEDES test split the card was evaluated on."""
    return load_dataset("toypedes", card_root).split("test")


@pytest.fixture(scope="module")
def card_per_query(card_test_split):
    """Each shipped model's per-query test results, evaluated as the card was (fp32)."""
    out = {}
    for variant in ("upperson", "zero-shot"):
        model = load_embedded_model(variant)
        out[variant] = evaluate_per_query(model, card_test_split, build_tokenizer(model.config.name),
                                          precision="fp32", progress=False)
    return out


@pytest.fixture(scope="module")
def card_values(card_per_query):
    """Per-query values of the three models of the card: the shipped two re-evaluated, the full
    fine-tune (weights not shipped) from its shipped per-query file, checked to list the same queries."""
    from upperson import stats

    ft = stats.read_per_query_csv(EMBEDDED_DIR / FT_PER_QUERY)
    up = card_per_query["upperson"].per_query
    assert ft.num_queries == len(card_per_query["upperson"].pids)
    assert np.array_equal(ft.query_index, up.query_index)
    assert np.array_equal(ft.pid, np.array(card_per_query["upperson"].pids)[up.query_index])
    return {"full-finetune": ft.values(), **{v: stats.values_of(r.per_query) for v, r in card_per_query.items()}}


@pytest.mark.parametrize("variant", ["upperson", "zero-shot"])
def test_shipped_model_reproduces_the_model_card(variant, card_per_query):
    card = read_card()
    metrics = card_per_query[variant].metrics()
    expected = card["metrics"][variant]
    assert metrics["queries"] == expected["queries"] and metrics["gallery"] == expected["gallery"]
    for k in ("R1", "R5", "R10", "mAP", "mINP"):
        assert metrics[k] == pytest.approx(expected[k], abs=0.5), k


def test_full_finetune_per_query_file_reproduces_its_card_metrics(card_values):
    expected = read_card()["metrics"]["full-finetune"]
    got = {k: float(np.mean(v)) for k, v in card_values["full-finetune"].items()}
    for k in ("R1", "R5", "R10", "mAP", "mINP"):
        assert got[k] == pytest.approx(expected[k], abs=0.0051), k


def test_shipped_model_reproduces_the_model_cards_intervals(card_values):
    """The card's 95 % intervals are the bootstrap of these per-query results with the card's resample
    count and seed, equal to the printed 0.01: each model's, and the paired differences."""
    from upperson import stats

    card = read_card()
    iv = card["intervals"]
    assert iv["resamples"] == 2000 and iv["seed"] == 0 and iv["level"] == 0.95
    for variant, v in card_values.items():
        ci = stats.bootstrap_ci(v, resamples=iv["resamples"], seed=iv["seed"])["metrics"]
        for k in ("R1", "R5", "R10", "mAP", "mINP"):
            assert iv["models"][variant][k] == pytest.approx([ci[k]["low"], ci[k]["high"]], abs=0.0051), (variant, k)
            assert iv["models"][variant][k][0] <= card["metrics"][variant][k] <= iv["models"][variant][k][1]
    for key, a, b in PAIRS:
        paired = stats.paired_bootstrap(card_values[a], card_values[b], resamples=iv["resamples"],
                                        seed=iv["seed"])["metrics"]
        for k in ("R1", "mAP"):
            assert iv[key][k]["diff"] == pytest.approx(paired[k]["diff"], abs=0.0051), (key, k)
            assert iv[key][k]["ci"] == pytest.approx([paired[k]["low"], paired[k]["high"]], abs=0.0051), (key, k)


def test_the_tuning_log_is_an_equal_budget_selected_on_val():
    """Both methods tried the same number of configurations, the shipped ones are the best on val,
    and each run's shipped per-query val file reproduces its logged val metrics and interval."""
    from upperson import stats

    card = read_card()
    tuning = card["tuning"]
    runs = tuning["runs"]
    by_method = {m: [e for e in runs if e["method"] == m] for m in ("upperson", "full-finetune")}
    assert len(by_method["upperson"]) == len(by_method["full-finetune"]) == tuning["configurations_per_method"] >= 2
    for entries in by_method.values():
        assert len({e["lr"] for e in entries}) >= 2  # the learning rate was tuned for each
        selected = [e for e in entries if e["selected"]]
        assert len(selected) == 1 and selected[0]["val"]["R1"] == max(e["val"]["R1"] for e in entries)
        for e in entries:
            assert e["epochs_run"] <= e["epochs_max"] and e["early_stop_patience"] > 0
    assert any(e["prefix_length"] == 10 and e["lora_rank"] == 32 for e in by_method["upperson"])  # the paper's budget
    ship = next(e for e in by_method["upperson"] if e["selected"])
    assert card["parameters"]["upperson"]["trainable"] == ship["trainable"]
    for e in runs:
        pq = stats.read_per_query_csv(EMBEDDED_DIR / "tuning" / e["run"] / "per_query_val.csv")
        m = pq.metrics()
        for k in ("R1", "mAP"):
            assert m[k] == pytest.approx(e["val"][k], abs=0.0051), (e["run"], k)
        ci = stats.bootstrap_ci(pq.values(), resamples=card["intervals"]["resamples"],
                                seed=card["intervals"]["seed"])["metrics"]["R1"]
        assert e["val_ci"]["R1"] == pytest.approx([ci["low"], ci["high"]], abs=0.0051)
        assert e["val_curve"][e["best_epoch"] - 1] == pytest.approx(e["val"]["R1"], abs=0.01)


def test_the_card_records_what_was_promised():
    card = read_card()
    m = card["metrics"]
    assert set(m) == {"zero-shot", "upperson", "full-finetune"}
    assert card["parameters"]["upperson"]["trainable"] < card["parameters"]["full-finetune"]["trainable"]
    assert card["recipe"] and card["training"]["seeds"]
    for rel, f in card["data_files"].items():  # the shipped results files are intact
        assert sha256_file(EMBEDDED_DIR / rel) == f["sha256"], rel
    shipped = sum(p.stat().st_size for p in EMBEDDED_DIR.rglob("*") if p.is_file())
    assert shipped < 25 * 2**20


def test_checksums_are_verified_and_corruption_is_named(tmp_path):
    verify_assets()  # the shipped files are intact
    copy = tmp_path / "embedded"
    shutil.copytree(EMBEDDED_DIR, copy)
    target = copy / "upperson" / "petl.safetensors"
    data = bytearray(target.read_bytes())
    data[-10] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(EmbeddedAssetError, match="upperson/petl.safetensors is corrupted"):
        load_embedded_model("upperson", assets=copy)
    (copy / "backbone.safetensors").unlink()
    card = json.loads((copy / "model_card.json").read_text())
    assert "backbone.safetensors" in card["files"]
    shutil.copy(EMBEDDED_DIR / "model_card.json", copy / "model_card.json")
    (copy / "backbone.safetensors").write_bytes(b"")  # present but empty
    with pytest.raises(EmbeddedAssetError, match="backbone.safetensors is corrupted"):
        verify_assets(copy)


def test_a_failed_export_leaves_the_assets_folder_as_it_was(tmp_path, toypedes_root, capsys):
    """export-embedded from runs made of the shipped files, with the full fine-tune's checkpoint
    missing: it fails during evaluation, after the copies, and --out must not have changed."""
    import hashlib

    import yaml

    from upperson.cli import main

    def digest(folder):
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    cfg = read_card()["training"]["configs"]["upperson"]
    for name in ("pre", "up", "ft"):
        run = tmp_path / name
        run.mkdir()
        val = {"R1": 50.0, "R5": 60.0, "R10": 70.0, "mAP": 40.0, "mINP": 30.0, "queries": 10, "gallery": 5}
        (run / "results.json").write_text(json.dumps({"train_time_s": 1.0, "best_epoch": 1, "selected_on": "val",
                                                      "config": cfg, "metrics": {"val": val},
                                                      "parameters": {"trainable": 1, "percent": 0.1}}))
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        shutil.copy(EMBEDDED_DIR / "upperson" / "metrics.jsonl", run / "metrics.jsonl")
        if name != "ft":  # the full fine-tune has no best/: loading it fails
            shutil.copy(EMBEDDED_DIR / "backbone.safetensors", run / "backbone.safetensors")
            shutil.copytree(EMBEDDED_DIR / "upperson", run / "best")
    out = tmp_path / "out"
    shutil.copytree(EMBEDDED_DIR, out)
    before = digest(out)
    assert main(["export-embedded", "--pretrain-run", str(tmp_path / "pre"), "--upperson-run", str(tmp_path / "up"),
                 "--full-finetune-run", str(tmp_path / "ft"), "--data-root", str(toypedes_root),
                 "--out", str(out)]) == 2
    assert "no UP-Person checkpoint" in capsys.readouterr().err
    assert digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft", "out", "pre", "up"]  # no staging folder left


def _fake_run(folder, cfg: dict, val_r1: float, lr: float, model=None):
    """A finished tuning run: results.json, metrics.jsonl and best/ (the shipped UP-Person, or ``model``)."""
    from upperson.model.checkpoint import save_petl

    folder.mkdir()
    cfg = json.loads(json.dumps(cfg))
    cfg["train"].update(lr=lr, epochs=3, early_stop_patience=2)
    val = {"R1": val_r1, "R5": 80.0, "R10": 90.0, "mAP": 50.0, "mINP": 30.0, "queries": 10, "gallery": 5}
    params = {"trainable": 7, "percent": 1.0}
    (folder / "results.json").write_text(json.dumps({"train_time_s": 60.0, "best_epoch": 2, "selected_on": "val",
                                                     "config": cfg, "metrics": {"val": val}, "parameters": params}))
    rows = [{"epoch": e, "loss": 1.0, "R1": r} for e, r in ((1, val_r1 - 5), (2, val_r1), (3, val_r1 - 1))]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if model is None:  # its petl.json names ../backbone.safetensors
        shutil.copytree(EMBEDDED_DIR / "upperson", folder / "best")
        shutil.copy(EMBEDDED_DIR / "backbone.safetensors", folder / "backbone.safetensors")
    else:
        save_petl(model, folder / "best")


def test_export_ships_the_best_on_val_of_an_equal_budget_and_a_card_that_checks_out(tmp_path, toypedes_root, capsys):
    """export-embedded end to end on ToyPEDES tiny: it selects on val, keeps each run's per-query
    val file and the full fine-tune's per-query test file, and its card's numbers are those files'."""
    from upperson import stats
    from upperson.cli import main
    from upperson.config import load_config
    from upperson.model import build_model

    card0 = read_card()
    up_cfg = card0["training"]["configs"]["upperson"]
    ft_model = build_model(load_config("toypedes-full-finetune").model)
    _fake_run(tmp_path / "up_a", up_cfg, 60.0, 0.001)
    _fake_run(tmp_path / "up_b", up_cfg, 70.0, 0.003)
    _fake_run(tmp_path / "ft_a", card0["training"]["configs"]["full_finetune"], 65.0, 0.0001, ft_model)
    _fake_run(tmp_path / "ft_b", card0["training"]["configs"]["full_finetune"], 64.0, 0.0003, ft_model)
    out = tmp_path / "out"
    shutil.copytree(EMBEDDED_DIR, out)
    args = ["export-embedded", "--data-root", str(toypedes_root), "--out", str(out)]
    assert main([*args, "--upperson-run", str(tmp_path / "up_a"), str(tmp_path / "up_b"),
                 "--full-finetune-run", str(tmp_path / "ft_a")]) == 2  # 2 configurations against 1
    assert "the tuning budget must be equal" in capsys.readouterr().err
    runs = ["--upperson-run", str(tmp_path / "up_a"), "--full-finetune-run", str(tmp_path / "ft_a")]
    assert main([*args, *runs, "--test-root", str(tmp_path / "none")]) == 2
    assert "--test-root" in capsys.readouterr().err and not (tmp_path / "none").exists()
    assert main([*args[:-1], str(tmp_path / "new"), *runs]) == 2  # a new --out has no backbone to keep
    assert "pass --pretrain-run" in capsys.readouterr().err and not (tmp_path / "new").exists()
    assert main([*args, "--upperson-run", str(tmp_path / "up_a"), str(tmp_path / "up_b"),
                 "--full-finetune-run", str(tmp_path / "ft_a"), str(tmp_path / "ft_b")]) == 0

    card = read_card(out)
    selected = {e["method"]: e["run"] for e in card["tuning"]["runs"] if e["selected"]}
    assert selected == {"upperson": "up_b", "full-finetune": "ft_a"}
    assert card["evaluation"]["toypedes"]["preset"] == "tiny"
    ft = stats.read_per_query_csv(out / FT_PER_QUERY)
    assert ft.metrics()["R1"] == pytest.approx(card["metrics"]["full-finetune"]["R1"], abs=0.0051)
    for e in card["tuning"]["runs"]:
        pq = stats.read_per_query_csv(out / "tuning" / e["run"] / "per_query_val.csv")
        ci = stats.bootstrap_ci(pq.values(), resamples=2000, seed=0)["metrics"]["R1"]
        assert e["val_ci"]["R1"] == pytest.approx([ci["low"], ci["high"]], abs=0.0051)
    for rel, f in card["data_files"].items():
        assert sha256_file(out / rel) == f["sha256"]
    verify_assets(out)
    md = (out / "model_card.md").read_text()
    assert "## Tuning log" in md and "upperson - full-finetune" in md
    # the default gallery's features: the exported model's, of every test image
    index = IndexStore.open(out / "gallery-index")
    assert index.manifest.model["key"] == model_key(load_embedded_model("upperson", assets=out))
    test_images = sorted((toypedes_root / "ToyPEDES" / "imgs" / "test").glob("*.png"))
    assert sorted(e.sha1 for e in index.manifest.entries) == sorted(
        hashlib.sha1(p.read_bytes()).hexdigest() for p in test_images) and not (out / "gallery-index" / ".lock").exists()


@pytest.mark.parametrize("doc", ["README.md", "docs/embedded.md"])
def test_the_documented_results_table_is_the_cards(doc):
    from upperson.cli.export_embedded import results_table

    assert results_table(read_card()) in (EMBEDDED_DIR.parent.parent / doc).read_text()


def test_a_backbone_folder_is_a_checked_pretraining_record(tmp_path):
    """--backbone-folder (a shipped record such as assets/world): its backbone is checked against SHA256SUMS and
    its pretraining time is the sum of the epochs' times; a tampered, incomplete or doubled record is refused."""
    import hashlib

    import yaml

    from upperson.embedded_export import BACKBONE_FOLDER_FILES, ExportRequest, backbone_record
    from upperson.model.checkpoint import CheckpointCorruptError

    folder = tmp_path / "world"
    folder.mkdir()
    shutil.copy(EMBEDDED_DIR / "backbone.safetensors", folder / "backbone.safetensors")
    sha = hashlib.sha256((folder / "backbone.safetensors").read_bytes()).hexdigest()
    (folder / "SHA256SUMS").write_text(f"{sha}  backbone.safetensors\n")
    cfg = read_card()["training"]["configs"]["pretrain"]
    cfg = json.loads(json.dumps(cfg))
    cfg["train"]["seed"] = 5
    cfg["model"]["pretrained"] = "random"  # (the old card recorded null)
    (folder / "pretrain_config.yaml").write_text(yaml.safe_dump(cfg))
    (folder / "pretrain_metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "loss": 1.0, "time_s": t}) + "\n"
                                                           for e, t in ((1, 10.25), (2, 20.5))))
    rec = backbone_record(folder)
    assert (rec["pretrain_s"], rec["seed"], rec["sha256"]) == (30.8, 5, sha)  # round(30.75, 1)
    assert rec["config"]["model"] == cfg["model"]

    data = bytearray((folder / "backbone.safetensors").read_bytes())
    data[-1] ^= 1
    (folder / "backbone.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointCorruptError):
        backbone_record(folder)
    (folder / "SHA256SUMS").unlink()
    with pytest.raises(FileNotFoundError, match="SHA256SUMS missing; a backbone folder holds"):
        backbone_record(folder)
    assert "SHA256SUMS" in BACKBONE_FOLDER_FILES
    with pytest.raises(ValueError, match="--pretrain-run or --backbone-folder, not both"):
        ExportRequest(upperson_run=[], full_finetune_run=[], data_root=tmp_path, pretrain_run=tmp_path,
                      backbone_folder=folder)


def test_the_cards_domain_decides_the_embedded_data_and_gallery(tmp_path, monkeypatch):
    """A model trained on a ToyPEDES domain: its card's toypedes.domain makes embedded_data_root (and so the
    demo's default gallery) that domain's split, in its own cache folder."""
    import upperson.embedded as embedded
    from demo.gallery import embedded_gallery

    assert embedded.embedded_domain() == (read_card()["toypedes"].get("domain") or None)  # the shipped card's
    monkeypatch.setenv("UPPERSON_CACHE", str(tmp_path))
    import upperson.assets as assets

    monkeypatch.setattr(assets, "read_card", lambda assets=None: {"toypedes": {"preset": "tiny", "seed": 0,
                                                                               "domain": "icfg"}})
    root = embedded.embedded_data_root(splits=["test"])
    assert root == tmp_path / "toypedes" / "icfg-tiny-seed0-test"
    assert json.loads((root / "ToyPEDES" / "meta.json").read_text())["domain"] == "icfg"
    assert embedded.embedded_domain() == "icfg"
    g = embedded_gallery()
    assert g.name == "embedded ToyPEDES icfg (indoor, winter) test" and len(g.items) > 0


def test_the_zero_shot_model_is_the_shipped_checkpoints_backbone_at_its_resolution():
    """Zero-shot is the UP-Person checkpoint's model with every component off: the same backbone config and
    image size (the card's zero-shot row was once the backbone at the toypedes preset's 96 x 32)."""
    from upperson.embedded import load_embedded_model, zero_shot_config

    up, zs = load_embedded_model("upperson"), load_embedded_model("zero-shot")
    assert zs.config == zero_shot_config(up.config)
    assert tuple(zs.config.image_size) == tuple(read_card()["backbone"]["image_size"])


def test_the_shipped_gallery_features_are_the_embedded_models_encoding_of_the_default_gallery(card_root):
    """assets/embedded/gallery-index: every image of the default gallery (by contents), and the
    embedded model's features of them (a sample, encoded here as the index encodes)."""
    store = IndexStore.open(EMBEDDED_GALLERY_INDEX)
    model = load_embedded_model("upperson")
    remedy = "the embedded model or the generator changed: run scripts/embedded_gallery_index.sh"
    assert store.manifest.model["key"] == model_key(model), remedy
    images = sorted((card_root / "ToyPEDES" / "imgs" / "test").glob("*.png"))
    row = {e.sha1: i for i, e in enumerate(store.manifest.entries)}
    sha1 = [hashlib.sha1(p.read_bytes()).hexdigest() for p in images]
    assert sorted(sha1) == sorted(row) and len(images) == read_card()["metrics"]["upperson"]["gallery"], remedy
    sample = list(range(0, len(images), 97))
    transform = build_transforms(model.image_size, train=False)
    with torch.no_grad():
        batch = torch.stack([transform(load_image(images[i], BuildLimits())) for i in sample])
        expected = F.normalize(model.encode_image(batch).float(), dim=-1).numpy()
    np.testing.assert_allclose(store.features_of([row[sha1[i]] for i in sample]), expected, atol=1e-5)


def test_the_demos_first_start_encodes_no_default_gallery_image(card_root, tmp_path, monkeypatch, caplog):
    """seed_cache_for_embedded_gallery: the default gallery's features come from the shipped index;
    another model, or a damaged copy of the index, adds nothing (said in the log), and then the
    gallery is encoded as without it."""
    from demo.__main__ import seed_cache_for_embedded_gallery
    from demo.gallery import dataset_gallery
    from demo.search import SearchEngine
    from tests.conftest import tiny_model_config
    from upperson.model import build_model

    model = load_embedded_model("upperson")
    gallery = dataset_gallery("toypedes", card_root, "test")
    assert seed_cache_for_embedded_gallery(model, tmp_path / "cache") == len(gallery)
    encoded = []
    real = UPPerson.encode_image
    monkeypatch.setattr(UPPerson, "encode_image", lambda m, images: encoded.append(len(images)) or real(m, images))
    engine = SearchEngine(model, gallery, cache_dir=tmp_path / "cache")
    assert sum(encoded) == 0 and len(engine.search("a woman in a red coat", top_k=3).rankings[0].hits) == 3
    assert seed_cache_for_embedded_gallery(model, tmp_path / "cache") == 0  # already there

    other = build_model(tiny_model_config(pretrained="random")).eval()
    with caplog.at_level(logging.INFO, logger="demo"):
        assert seed_cache_for_embedded_gallery(other, tmp_path / "other") == 0
    assert "not this one's" in caplog.text and not (tmp_path / "other").exists()
    damaged = tmp_path / "damaged"
    shutil.copytree(EMBEDDED_GALLERY_INDEX, damaged)
    segment = next((damaged / "segments").glob("*.npy"))
    segment.write_bytes(segment.read_bytes()[:-512])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="demo"):
        assert seed_cache_for_embedded_gallery(model, tmp_path / "cache2", damaged) == 0
    assert "truncated" in caplog.text
