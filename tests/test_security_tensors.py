"""Attack cases on the tensor files we load: odd dtypes, values that overflow after the cast,
non-finite similarities, pickled backbones (issue: security and durability)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from upperson.metrics import NonFiniteScoresError, retrieval_metrics
from upperson.model import build_model
from upperson.model.backbone import BackboneError, create_clip
from upperson.model.checkpoint import CheckpointCorruptError, load_model, load_petl, save_petl


def _tamper(out, change) -> str:
    """Rewrite ``out``'s petl.safetensors with ``change(state)`` applied; update its sha256 in petl.json."""
    w = out / "petl.safetensors"
    state = load_file(str(w))
    name = sorted(state)[0]
    state[name] = change(state[name])
    save_file(state, str(w))
    meta = json.loads((out / "petl.json").read_text())
    meta["sha256"] = hashlib.sha256(w.read_bytes()).hexdigest()
    (out / "petl.json").write_text(json.dumps(meta))
    return name


def _huge_float64(t):
    t = t.double()
    t.view(-1)[0] = 1e300  # finite in float64, inf in float32
    return t


@pytest.mark.parametrize("change, fragment", [
    (_huge_float64, "float64"),
    (lambda t: t.to(torch.int8), "int8"),
    (lambda t: t > 0, "bool"),
])
def test_petl_weights_of_a_wrong_dtype_are_refused_by_name(tmp_path, tiny_cfg, change, fragment):
    model = build_model(tiny_cfg)
    out = save_petl(model, tmp_path / "ckpt")
    name = _tamper(out, change)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(CheckpointCorruptError, match=fragment) as err:
        load_petl(model, out)
    assert name in str(err.value) and "petl.safetensors" in str(err.value)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_finiteness_is_checked_after_the_cast_to_the_models_dtype(tiny_cfg):
    from upperson.model.weights import UnsafeWeightsError, check_weights

    state = {"w": torch.tensor([1.0, 7e4])}  # finite in float32, inf in float16
    check_weights(state, "f.safetensors", torch.float32)
    with pytest.raises(UnsafeWeightsError, match="w.*float16"):
        check_weights(state, "f.safetensors", torch.float16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_a_bad_value_anywhere_is_refused_and_a_sum_that_overflows_is_not(dtype):
    """check_weights sums a tensor first: NaN and inf are still found anywhere, and finite values whose
    sum overflows (to inf) are still accepted."""
    from upperson.model.weights import UnsafeWeightsError, check_weights

    big = torch.finfo(dtype).max
    check_weights({"w": torch.full((64,), big, dtype=dtype)}, "f.safetensors", dtype)  # sum inf, values finite
    for bad in (math.nan, math.inf, -math.inf):
        for at in (0, 37, 63):
            w = torch.randn(64).to(dtype)
            w[at] = bad
            with pytest.raises(UnsafeWeightsError, match="non-finite values.*'w'"):
                check_weights({"ok": torch.ones(3, dtype=dtype), "w": w}, "f.safetensors", dtype)


def test_evaluate_refuses_a_float64_overflow_before_any_metric(tmp_path, tiny_cfg, toypedes_root, capsys):
    from upperson.cli import main

    out = save_petl(build_model(tiny_cfg), tmp_path / "ckpt")
    _tamper(out, _huge_float64)
    rc = main(["evaluate", "--checkpoint", str(out), "--data-root", str(toypedes_root), "--dataset", "toypedes"])
    captured = capsys.readouterr()
    assert rc == 2
    assert "R1" not in captured.out and "mAP" not in captured.out
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "float64" in errors[0] and "petl.safetensors" in errors[0]


def _backbone(tmp_path, cfg, change):
    clip = create_clip(cfg)
    state = {k: v.contiguous() for k, v in clip.state_dict().items()}
    name = "token_embedding.weight"
    state[name] = change(state[name].clone())
    path = tmp_path / "backbone.safetensors"
    save_file(state, str(path))
    return dataclasses.replace(cfg, pretrained=str(path)), name


def _nan(t):
    t.view(-1)[3] = float("nan")
    return t


@pytest.mark.parametrize("change, fragment", [
    (_nan, "non-finite"),
    (_huge_float64, "float64"),
    (lambda t: t.to(torch.int8), "int8"),
])
def test_a_backbone_file_is_checked_like_petl_weights(tmp_path, tiny_cfg, change, fragment):
    cfg, name = _backbone(tmp_path, tiny_cfg, change)
    with pytest.raises(BackboneError, match=fragment) as err:
        build_model(cfg)
    assert name in str(err.value) and "backbone.safetensors" in str(err.value)


def test_a_pickled_backbone_is_refused_by_name(tmp_path, tiny_cfg):
    clip = create_clip(tiny_cfg)
    path = tmp_path / "weights.pt"
    torch.save(clip.state_dict(), path)  # a pickle (zip archive with data.pkl)
    with pytest.raises(BackboneError, match="pickle") as err:
        build_model(dataclasses.replace(tiny_cfg, pretrained=str(path)))
    assert "weights.pt" in str(err.value) and "safetensors" in str(err.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_similarities_are_refused_before_any_metric(bad):
    sim = torch.rand(4, 6)
    sim[2, 1] = bad
    with pytest.raises(NonFiniteScoresError, match="1 of 24"):
        retrieval_metrics(sim, torch.tensor([0, 1, 2, 0]), torch.tensor([0, 0, 1, 1, 2, 2]))


def _cases():
    g = torch.Generator().manual_seed(0)
    yield torch.randn(9, 13, generator=g)
    yield torch.zeros(9, 13)  # every score tied
    yield torch.randn(9, 13, generator=g) * 1e38  # huge but finite
    yield torch.round(torch.randn(9, 13, generator=g) * 2) / 2  # many ties
    yield -torch.arange(9 * 13, dtype=torch.float64).reshape(9, 13)  # relevant items last
    yield torch.randn(9, 13, generator=g).to(torch.float16)


@pytest.mark.parametrize("case", range(6))
def test_metrics_stay_in_0_100_on_random_and_adversarial_similarities(case):
    sim = list(_cases())[case]
    g = torch.Generator().manual_seed(case)
    q, gp = torch.randint(0, 4, (9,), generator=g), torch.randint(0, 4, (13,), generator=g)
    gp[:4] = torch.arange(4)  # every query has a match
    m = retrieval_metrics(sim, q, gp, ranks=(1, 5, 10))
    for k in ("R1", "R5", "R10", "mAP", "mINP"):
        assert 0.0 <= m[k] <= 100.0, (k, m[k])
    # against a sort-based reference of mAP
    order = torch.sort(sim.float(), dim=1, descending=True, stable=True).indices
    rel = (gp[order] == q.view(-1, 1)).double()
    cum = rel.cumsum(1)
    ap = ((cum / torch.arange(1, 14)) * rel).sum(1) / rel.sum(1)
    assert m["mAP"] == pytest.approx(100 * float(ap.mean()), rel=1e-9)


@pytest.mark.parametrize("column, value", [("ap", "5.0"), ("inp", "nan"), ("first_rank", "0"), ("ap", "-0.5")])
def test_a_per_query_file_with_impossible_values_is_refused(tmp_path, column, value):
    from upperson.stats import read_per_query_csv, write_per_query_csv

    rows = [{"query_index": i, "pid": i, "image_id": i, "caption": "c", "images": 1, "first_rank": 1 + i,
             "ap": 1.0 / (1 + i), "inp": 1.0 / (1 + i)} for i in range(3)]
    path = tmp_path / "q.csv"
    write_per_query_csv(path, rows)
    text = path.read_text().splitlines()
    header = text[0].split(",")
    cells = text[2].split(",")
    cells[header.index(column)] = value
    text[2] = ",".join(cells)
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError, match=f"q.csv.*{column}") as err:
        read_per_query_csv(path).metrics()
    assert "data row 2" in str(err.value)


# ----------------------------------------------------------------------------- format 3: the config bound to the weights


def _edit_json(out, change) -> None:
    meta = json.loads((out / "petl.json").read_text())
    change(meta)
    (out / "petl.json").write_text(json.dumps(meta))


def _set_quick_gelu(meta):
    meta["model"]["quick_gelu"] = meta["backbone"]["quick_gelu"] = False


@pytest.mark.parametrize("change, key", [
    (lambda m: m["model"]["adapter"].update(placement="sequential"), "model.adapter.placement"),
    (_set_quick_gelu, "model.quick_gelu"),
    (lambda m: m["backbone"].update(fingerprint="0" * 16), "backbone.fingerprint"),
])
def test_an_edited_petl_json_is_refused_naming_the_key(tmp_path, tiny_cfg, change, key):
    out = save_petl(build_model(tiny_cfg), tmp_path / "ckpt")
    load_model(out)  # as saved: loads
    _edit_json(out, change)
    with pytest.raises(CheckpointCorruptError, match="changed after saving") as err:
        load_model(out)
    assert key in str(err.value) and "petl.json" in str(err.value)


def test_sidecar_files_are_listed_and_verified(tmp_path, tiny_cfg):
    card = tmp_path / "README.md"
    card.write_text("# a model card\n")
    model = build_model(tiny_cfg)
    out = save_petl(model, tmp_path / "ckpt", files={"README.md": card})
    meta = json.loads((out / "petl.json").read_text())
    assert meta["files"] == {"README.md": hashlib.sha256(card.read_bytes()).hexdigest()}
    load_petl(model, out)
    (out / "README.md").write_text("# edited\n")
    with pytest.raises(CheckpointCorruptError, match="README.md is corrupted"):
        load_petl(model, out)
    (out / "README.md").unlink()
    with pytest.raises(CheckpointCorruptError, match="README.md: listed in petl.json but missing"):
        load_petl(model, out)
    # the map itself is bound: dropping an entry is refused too
    (out / "README.md").write_text("# a model card\n")
    _edit_json(out, lambda m: m.pop("files"))
    with pytest.raises(CheckpointCorruptError, match="files.README.md"):
        load_petl(model, out)
    with pytest.raises(CheckpointCorruptError, match="plain sidecar file name"):
        save_petl(model, tmp_path / "other", files={"../escape.md": card})


def test_a_format_2_checkpoint_still_loads_with_one_line(tmp_path, tiny_cfg, caplog):
    model = build_model(tiny_cfg)
    out = save_petl(model, tmp_path / "ckpt")
    w = out / "petl.safetensors"
    save_file(load_file(str(w)), str(w), metadata={"format": "upperson-petl"})  # as format 2 wrote it
    _edit_json(out, lambda m: m.update(version=2, sha256=hashlib.sha256(w.read_bytes()).hexdigest()))
    with caplog.at_level("INFO", logger="upperson.model.checkpoint"):
        load_petl(model, out)
    lines = [r for r in caplog.records if r.name == "upperson.model.checkpoint"]
    assert len(lines) == 1 and "not bound" in lines[0].getMessage()


def test_upgrade_keeps_every_tensor_bit_for_bit_and_binds_the_config(tmp_path, tiny_cfg):
    from upperson.model.checkpoint import upgrade_checkpoint

    model = build_model(tiny_cfg)
    out = save_petl(model, tmp_path / "ckpt")
    w = out / "petl.safetensors"
    save_file(load_file(str(w)), str(w), metadata={"format": "upperson-petl"})
    _edit_json(out, lambda m: m.update(version=2, sha256=hashlib.sha256(w.read_bytes()).hexdigest()))
    before = load_file(str(w))
    upgrade_checkpoint(out)
    after = load_file(str(w))
    assert json.loads((out / "petl.json").read_text())["version"] == 3
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k].view(torch.uint8), after[k].view(torch.uint8)) for k in before)
    load_petl(model, out)
    _edit_json(out, lambda m: m["model"]["adapter"].update(placement="sequential"))
    with pytest.raises(CheckpointCorruptError, match="model.adapter.placement"):
        load_petl(model, out)


def test_the_shipped_checkpoint_is_format_3_and_loads_without_a_line(caplog):
    from upperson.embedded import EMBEDDED_DIR, embedded_available
    from upperson.model.checkpoint import read_checkpoint_config

    if not embedded_available():
        pytest.skip("assets/embedded is not in this checkout")
    assert read_checkpoint_config(EMBEDDED_DIR / "upperson")["version"] == 3
    with caplog.at_level("INFO", logger="upperson.model.checkpoint"):
        load_model(EMBEDDED_DIR / "upperson")
    assert not [r for r in caplog.records if r.name == "upperson.model.checkpoint"]


def test_a_file_swapped_after_the_checksum_is_not_what_loads(tmp_path, tiny_cfg, monkeypatch):
    import upperson.model.checkpoint as ckpt

    model = build_model(tiny_cfg)
    out = save_petl(model, tmp_path / "ckpt")
    w = out / "petl.safetensors"
    good = load_file(str(w))
    evil = {k: torch.full_like(v, 3.0) for k, v in good.items()}
    real_load = ckpt.load_bytes

    def swap_then_load(data):  # an attacker replaces the file between the hash and the parse
        save_file(evil, str(w), metadata={"format": "upperson-petl"})
        return real_load(data)

    monkeypatch.setattr(ckpt, "load_bytes", swap_then_load)
    load_petl(model, out)
    own = dict(model.named_parameters())
    assert all(torch.equal(own[k].detach(), good[k]) for k in good)


def test_evaluation_names_features_that_overflow_before_any_metric(tiny_cfg, toypedes_root):
    from upperson.data import build_tokenizer, load_dataset
    from upperson.evaluation import evaluate_per_query

    model = build_model(tiny_cfg).eval()
    with torch.no_grad():  # finite float32 weights whose activations overflow
        model.clip.visual.proj.fill_(3e38)
    records = load_dataset("toypedes", toypedes_root).split("test")[:6]
    with pytest.raises(NonFiniteScoresError, match="image features of 6 gallery images"):
        evaluate_per_query(model, records, build_tokenizer("upp-tiny"), precision="fp32", progress=False)
