"""Hub-style folders: save_pretrained / from_pretrained, hf-hub: specs through a local cache, push."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import open_clip
import pytest
import torch
from huggingface_hub import ModelCard
from huggingface_hub import constants as hf_constants
from safetensors.torch import load_file, save_file

from tests.conftest import perturbed_tiny_model, tiny_model_config
from upperson import stats
from upperson.cli import main
from upperson.config import ModelConfig
from upperson.embedded import EMBEDDED_DIR, load_embedded_model
from upperson.hub import HubCard, MetricResult, base_model_id, from_pretrained, save_pretrained
from upperson.hub.card import read_card_metadata
from upperson.hub.push import push
from upperson.model import build_model
from upperson.model.backbone import create_clip
from upperson.model.checkpoint import CheckpointCorruptError, load_model, save_petl
from upperson.sources import resolve_checkpoint

HUB_FILES = {"petl.safetensors", "petl.json", "README.md"}
NO_NETWORK = "http://127.0.0.1:9"  # nothing listens there: a connection is refused at once


@pytest.fixture
def hub_env(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache and UP-Person cache under tmp_path; downloads not allowed."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("UPPERSON_CACHE", str(tmp_path / "upperson-cache"))
    monkeypatch.delenv("UPPERSON_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", NO_NETWORK)
    return cache


def _features(model):
    model = model.eval()
    g = torch.Generator().manual_seed(5)
    images = torch.randn(2, 3, *model.image_size, generator=g)
    tokens = open_clip.get_tokenizer(model.config.name)(["a man in a blue coat", "a woman"])
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def _same_features(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(_features(a), _features(b)))


def _other_tiny_model():
    m = perturbed_tiny_model()
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.mul_(-1.0)
    return m


def lay_out_as_the_hub(cache: Path, repo_id: str, folder: Path, refs: tuple[str, ...] = ("main",)) -> str:
    """Put ``folder``'s files into ``cache`` as huggingface_hub lays out a downloaded repository:
    ``models--ORG--NAME/blobs/<hash>``, ``snapshots/<commit>/<name>`` linking to the blob, and
    ``refs/<ref>`` holding the commit. Returns the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    names = sorted(p.name for p in folder.iterdir())
    commit = hashlib.sha1("".join(hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names)
                          .encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for n in names:
        blob = repo / "blobs" / hashlib.sha256((folder / n).read_bytes()).hexdigest()
        shutil.copyfile(folder / n, blob)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / n)
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)
    return commit


def test_save_pretrained_round_trip_gives_identical_features(tmp_path):
    model = perturbed_tiny_model()
    out = save_pretrained(model, tmp_path / "hub", card=HubCard(name="tiny", license="mit", datasets=("toypedes",)))
    assert {p.name for p in out.iterdir()} == HUB_FILES
    meta = json.loads((out / "petl.json").read_text())
    assert meta["version"] == 3 and meta["model"]["pretrained"] == "random"
    assert meta["files"] == {"README.md": hashlib.sha256((out / "README.md").read_bytes()).hexdigest()}
    assert _same_features(from_pretrained(out), model)
    assert _same_features(load_model(out), model)  # one format: it is a checkpoint folder
    card = read_card_metadata(out / "README.md")
    assert card["library_name"] == "upperson" and card["license"] == "mit" and card["datasets"] == ["toypedes"]
    assert "open_clip" in card["tags"] and "base_model" not in card  # a random backbone has no Hub id
    with pytest.raises(FileExistsError, match="not empty"):
        save_pretrained(model, out)


def test_card_front_matter_carries_metric_values_and_intervals(tmp_path):
    interval = {"method": "percentile bootstrap over queries", "level": 0.95, "resamples": 2000, "seed": 0}
    card = HubCard(name="tiny", repo_id="org/tiny", license="apache-2.0", datasets=("ToyPEDES",), interval=interval,
                   metrics=(MetricResult("R1", 60.12, "ToyPEDES", low=59.1, high=61.2),
                            MetricResult("mAP", 56.8, "ToyPEDES")))
    out = save_pretrained(perturbed_tiny_model(), tmp_path / "hub", card=card)
    results = ModelCard.load(out / "README.md").data.eval_results
    assert [(r.metric_name, r.metric_value, r.dataset_split) for r in results] == [("R@1", 60.12, "test"),
                                                                                   ("mAP", 56.8, "test")]
    assert results[0].metric_args["interval"] == [59.1, 61.2] and results[0].metric_args["level"] == 0.95
    assert results[1].metric_args is None
    assert "| ToyPEDES | test | R@1 | 60.12 | [59.10, 61.20] |" in (out / "README.md").read_text()
    with pytest.raises(ValueError, match="outside its interval"):
        MetricResult("R1", 70.0, "ToyPEDES", low=59.1, high=61.2)
    with pytest.raises(ValueError, match="say how they were made"):
        HubCard(metrics=(MetricResult("R1", 60.0, "ToyPEDES", low=59.0, high=61.0),))
    assert base_model_id(ModelConfig(name="ViT-B-16", pretrained="openai")) == "timm/vit_base_patch16_clip_224.openai"


def test_a_tampered_card_or_weights_file_is_refused(tmp_path):
    out = save_pretrained(perturbed_tiny_model(), tmp_path / "hub")
    card = (out / "README.md").read_bytes()
    (out / "README.md").write_bytes(card.replace(b"license: unknown", b"license: mit"))
    with pytest.raises(CheckpointCorruptError, match="README.md is corrupted or was changed"):
        from_pretrained(out)
    (out / "README.md").write_bytes(card)
    weights = bytearray((out / "petl.safetensors").read_bytes())
    weights[-3] ^= 1
    (out / "petl.safetensors").write_bytes(bytes(weights))
    with pytest.raises(CheckpointCorruptError, match="petl.safetensors is corrupted"):
        from_pretrained(out)


def test_hf_hub_specs_read_the_local_cache_with_revisions(tmp_path, hub_env):
    main_model, v1_model = perturbed_tiny_model(), _other_tiny_model()
    main = lay_out_as_the_hub(hub_env, "org/upp", save_pretrained(main_model, tmp_path / "a"))
    v1 = lay_out_as_the_hub(hub_env, "org/upp", save_pretrained(v1_model, tmp_path / "b"), refs=("v1",))
    assert (hub_env / "models--org--upp" / "snapshots" / v1 / "README.md").is_symlink()
    assert _same_features(from_pretrained("hf-hub:org/upp"), main_model)
    assert _same_features(from_pretrained("hf-hub:org/upp@v1"), v1_model)
    assert _same_features(from_pretrained(f"hf-hub:org/upp@{v1}"), v1_model)
    assert not _same_features(main_model, v1_model)
    # the resolver behind --checkpoint (index, search, analysis) takes the spec too
    folder = resolve_checkpoint("hf-hub:org/upp@v1")
    assert folder.is_relative_to(tmp_path / "upperson-cache") and _same_features(load_model(folder), v1_model)
    # a card changed in the cache after it was loaded once is refused, not served from the earlier copy
    card = (hub_env / "models--org--upp" / "snapshots" / main / "README.md").resolve()
    card.write_text(card.read_text().replace("license: unknown", "license: mit"))
    with pytest.raises(CheckpointCorruptError, match="README.md is corrupted or was changed"):
        from_pretrained("hf-hub:org/upp")


def test_a_repo_or_revision_missing_from_the_cache_is_one_clear_error(tmp_path, hub_env):
    with pytest.raises(FileNotFoundError, match=r"hf-hub:org/missing is not in the local Hugging Face cache "
                                                r".*`hf download org/missing`.*UPPERSON_ALLOW_DOWNLOAD=1"):
        from_pretrained("hf-hub:org/missing")
    lay_out_as_the_hub(hub_env, "org/upp", save_pretrained(perturbed_tiny_model(), tmp_path / "a"))
    with pytest.raises(FileNotFoundError, match=r"hf-hub:org/upp@nope is not.*hf download org/upp --revision nope"):
        from_pretrained("hf-hub:org/upp@nope")
    with pytest.raises(ValueError, match="give ORG/NAME"):
        from_pretrained("hf-hub:no-slash")


def test_a_download_is_tried_only_with_the_env_var(hub_env, monkeypatch):
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        from_pretrained("hf-hub:org/missing")
    monkeypatch.setenv("UPPERSON_ALLOW_DOWNLOAD", "1")  # now it goes to the (unreachable) endpoint
    with pytest.raises(RuntimeError, match=r"could not download hf-hub:org/missing .*(ConnectError|onnection)"):
        from_pretrained("hf-hub:org/missing")


def _fake_run(tmp_path: Path, model) -> tuple[Path, dict, dict]:
    """A run folder as training and the ablation leave it: best/, results.json, per_query_test.csv."""
    run = tmp_path / "run"
    save_petl(model, run / "best", extra={"epoch": 3, "split": "val"})
    (run / "config.yaml").write_text("model: {}\n")
    g = torch.Generator().manual_seed(1)
    rows = [{"query_index": i, "pid": i // 2, "image_id": i, "caption": "a caption", "images": 2,
             "first_rank": int(torch.randint(1, 12, (1,), generator=g)), "ap": float(torch.rand(1, generator=g)),
             "inp": float(torch.rand(1, generator=g))} for i in range(60)]
    stats.write_per_query_csv(run / "per_query_test.csv", rows)
    per_query = stats.read_per_query_csv(run / "per_query_test.csv")
    test = per_query.metrics()
    (run / "results.json").write_text(json.dumps({"dataset": "toypedes", "selected_on": "val",
                                                  "metrics": {"val": dict(test, R1=50.0), "test": test}}))
    return run, test, stats.bootstrap_ci(per_query.values())


def _digests(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_push_dry_run_builds_a_folder_that_validates(tmp_path, capsys):
    model = perturbed_tiny_model()
    run, test, ci = _fake_run(tmp_path, model)
    before = _digests(run)
    out = tmp_path / "out"
    assert main(["push", str(run), "--repo", "org/upp", "--dry-run", "--out", str(out), "--license", "mit"]) == 0
    assert "dry run: nothing uploaded" in capsys.readouterr().out
    assert _digests(run) == before
    assert {p.name for p in out.iterdir()} == HUB_FILES
    assert _same_features(from_pretrained(out), model)
    results = {r.metric_name: r for r in ModelCard.load(out / "README.md").data.eval_results}
    assert results["R@1"].metric_value == round(test["R1"], 4) and results["R@1"].dataset_split == "test"
    low, high = ci["metrics"]["mAP"]["low"], ci["metrics"]["mAP"]["high"]
    assert results["mAP"].metric_args["interval"] == [round(low, 4), round(high, 4)]
    assert results["mAP"].metric_args["resamples"] == ci["resamples"]
    assert json.loads((out / "petl.json").read_text())["extra"]["source"] == {"checkpoint": "best", "run": "run"}
    # RUN/best named directly is described by its run's results too
    card = push(run / "best", "org/upp", dry_run=True, out=tmp_path / "out-best", license="mit").card
    assert {m.metric: (m.value, m.split, m.low) for m in card.metrics}["mAP"] == (test["mAP"], "test", low)


def test_push_hands_the_validated_folder_to_the_uploader(tmp_path, hub_env):
    calls = []

    def to_local_hub(folder, repo_id, *, revision, private, commit_message):
        calls.append((sorted(p.name for p in folder.iterdir()), repo_id, revision, private))
        return lay_out_as_the_hub(hub_env, repo_id, folder, refs=(revision or "main",))

    source = EMBEDDED_DIR / "upperson"
    result = push(source, "org/upp-tiny", revision="v1", private=True, license="mit", uploader=to_local_hub)
    assert calls == [(sorted(HUB_FILES), "org/upp-tiny", "v1", True)]
    assert not result.folder.exists()  # the temporary folder is gone after the upload
    shipped = load_embedded_model("upperson")
    assert _same_features(from_pretrained("hf-hub:org/upp-tiny@v1"), shipped)
    card = read_card_metadata(Path(resolve_checkpoint("hf-hub:org/upp-tiny@v1")) / "README.md")
    r1 = card["model-index"][0]["results"][0]["metrics"][0]
    assert r1["name"] == "R@1" and r1["args"]["interval"][0] < r1["value"] < r1["args"]["interval"][1]


def test_push_without_network_is_one_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(hf_constants, "ENDPOINT", NO_NETWORK)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    out = tmp_path / "out"
    code = main(["push", str(EMBEDDED_DIR / "upperson"), "--repo", "org/upp", "--out", str(out), "--license", "mit"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1
    assert errors[0].startswith("error: could not push to the Hugging Face Hub repository org/upp (")
    assert "Connect" in errors[0] or "onnection" in errors[0]  # it got as far as the (unreachable) Hub
    assert not out.exists()  # a refused push leaves nothing behind
    assert main(["push", str(EMBEDDED_DIR / "upperson"), "--repo", "not a repo", "--dry-run"]) == 2
    assert "--repo 'not a repo': give ORG/NAME" in capsys.readouterr().err


def test_the_shipped_and_format_2_checkpoints_load_with_from_pretrained(tmp_path, caplog):
    assert _same_features(from_pretrained(EMBEDDED_DIR / "upperson"), load_embedded_model("upperson"))
    model = perturbed_tiny_model()
    out = save_petl(model, tmp_path / "v2")
    w = out / "petl.safetensors"
    save_file(load_file(str(w)), str(w), metadata={"format": "upperson-petl"})  # as format 2 wrote it
    meta = json.loads((out / "petl.json").read_text())
    meta.update(version=2, sha256=hashlib.sha256(w.read_bytes()).hexdigest())
    (out / "petl.json").write_text(json.dumps(meta))
    with caplog.at_level("INFO", logger="upperson.model.checkpoint"):
        loaded = from_pretrained(out)
    lines = [r.getMessage() for r in caplog.records if r.name == "upperson.model.checkpoint"]
    assert len(lines) == 1 and "format-2" in lines[0] and "not bound" in lines[0]
    assert _same_features(loaded, model)


def test_push_refuses_a_run_without_its_selected_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    save_petl(perturbed_tiny_model(), run / "last")  # an unfinished run: only its resumable state
    (run / "config.yaml").write_text("model: {}\n")
    assert main(["push", str(run), "--repo", "org/upp", "--dry-run", "--out", str(tmp_path / "out")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "a run folder without a selected checkpoint" in errors[0]
    assert not (tmp_path / "out").exists()


def test_a_local_backbone_file_is_recorded_by_name_and_needs_pretrained(tmp_path, caplog):
    backbone = tmp_path / "elsewhere" / "my-backbone.safetensors"
    backbone.parent.mkdir()
    clip = create_clip(tiny_model_config())
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(backbone))
    model = build_model(tiny_model_config(pretrained=str(backbone))).eval()
    with caplog.at_level("WARNING", logger="upperson.hub"):
        out = save_pretrained(model, tmp_path / "hub")
    assert any("records its name only" in r.getMessage() for r in caplog.records)
    assert json.loads((out / "petl.json").read_text())["model"]["pretrained"] == "my-backbone.safetensors"
    with pytest.raises(FileNotFoundError, match="pass --pretrained FILE"):
        from_pretrained(out)
    assert _same_features(from_pretrained(out, pretrained=str(backbone)), model)
