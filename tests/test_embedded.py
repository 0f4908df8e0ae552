"""The shipped embedded default: it reproduces its model card, and corruption is caught."""

from __future__ import annotations

import json
import shutil

import pytest

from upperson.data import build_tokenizer, load_dataset
from upperson.data.toypedes import generate_toypedes
from upperson.embedded import (EmbeddedAssetError, EMBEDDED_DIR, embedded_available, load_embedded_model,
                               read_card, verify_assets)
from upperson.evaluation import evaluate_per_query

pytestmark = pytest.mark.skipif(not embedded_available(), reason="assets/embedded is not in this checkout")


@pytest.fixture(scope="module")
def card_test_split(tmp_path_factory):
    """The ToyPEDES test split the card was evaluated on (only those identities are drawn)."""
    spec = read_card()["toypedes"]
    root = tmp_path_factory.mktemp("card-data")
    generate_toypedes(root, preset=spec["preset"], seed=spec["seed"], splits=["test"])
    return load_dataset("toypedes", root).split("test")


@pytest.fixture(scope="module")
def card_per_query(card_test_split):
    """Each shipped model's per-query test results, evaluated as the card was (fp32)."""
    out = {}
    for variant in ("upperson", "zero-shot"):
        model = load_embedded_model(variant)
        out[variant] = evaluate_per_query(model, card_test_split, build_tokenizer(model.config.name),
                                          precision="fp32", progress=False)
    return out


@pytest.mark.parametrize("variant", ["upperson", "zero-shot"])
def test_shipped_model_reproduces_the_model_card(variant, card_per_query):
    card = read_card()
    metrics = card_per_query[variant].metrics()
    expected = card["metrics"][variant]
    assert metrics["queries"] == expected["queries"] and metrics["gallery"] == expected["gallery"]
    for k in ("R1", "R5", "R10", "mAP", "mINP"):
        assert metrics[k] == pytest.approx(expected[k], abs=0.5), k


def test_shipped_model_reproduces_the_model_cards_intervals(card_per_query):
    """The card's 95 % intervals are the bootstrap of these per-query results with the card's resample
    count and seed: equal to the printed 0.01 (and the full fine-tune, not shipped, has none)."""
    from upperson import stats

    iv = read_card()["intervals"]
    assert iv["resamples"] == 2000 and iv["seed"] == 0 and iv["level"] == 0.95
    values = {v: stats.values_of(r.per_query) for v, r in card_per_query.items()}
    for variant, v in values.items():
        ci = stats.bootstrap_ci(v, resamples=iv["resamples"], seed=iv["seed"])["metrics"]
        for k in ("R1", "R5", "R10", "mAP", "mINP"):
            assert iv["models"][variant][k] == pytest.approx([ci[k]["low"], ci[k]["high"]], abs=0.0051), (variant, k)
            assert iv["models"][variant][k][0] <= read_card()["metrics"][variant][k] <= iv["models"][variant][k][1]
    paired = stats.paired_bootstrap(values["upperson"], values["zero-shot"], resamples=iv["resamples"],
                                    seed=iv["seed"])["metrics"]["R1"]
    shipped = iv["upperson_minus_zero_shot"]["R1"]
    assert shipped["diff"] == pytest.approx(paired["diff"], abs=0.0051)
    assert shipped["ci"] == pytest.approx([paired["low"], paired["high"]], abs=0.0051)
    assert "full-finetune" not in iv["models"] and "full-finetune" in iv["not_recomputable"]


def test_the_card_records_what_was_promised():
    card = read_card()
    m = card["metrics"]
    assert set(m) == {"zero-shot", "upperson", "full-finetune"}
    assert card["parameters"]["upperson"]["trainable"] < card["parameters"]["full-finetune"]["trainable"]
    assert card["recipe"] and card["training"]["seeds"]
    assert (EMBEDDED_DIR / "backbone.safetensors").stat().st_size < 25 * 2**20


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
        (run / "results.json").write_text(json.dumps({"train_time_s": 1.0, "best_epoch": 1, "selected_on": "val",
                                                      "config": cfg}))
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
