"""Saving and loading: PETL weights only, safetensors + JSON, clear errors on mismatch."""

from __future__ import annotations

import dataclasses
import json

import open_clip
import pytest
import torch
from safetensors.torch import load_file, save_file

from upperson.model import build_model
from upperson.model.backbone import BackboneError, create_clip, resize_pos_embed
from upperson.model.checkpoint import CheckpointCorruptError, CheckpointMismatchError, load_model, load_petl, save_petl


def _perturb(model):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)


def _features(model):
    torch.manual_seed(5)
    images = torch.randn(2, 3, 48, 16)
    tokens = open_clip.get_tokenizer("upp-tiny")(["a man in a blue coat", "a woman"])
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def _save_backbone(tmp_path, cfg, name="backbone", noise=0.0):
    """Write a (randomly perturbed) backbone to a safetensors file and point the config at it."""
    clip = create_clip(cfg)
    with torch.no_grad():
        for p in clip.parameters():
            p.add_(torch.randn_like(p) * noise)
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    return dataclasses.replace(cfg, pretrained=str(path))


def test_round_trip_gives_identical_features(tmp_path, tiny_cfg):
    cfg = _save_backbone(tmp_path, tiny_cfg)
    model = build_model(cfg).eval()
    _perturb(model)
    out = save_petl(model, tmp_path / "ckpt")
    saved = load_file(str(out / "petl.safetensors"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(saved) == trainable  # only the PETL weights, no backbone
    meta = json.loads((out / "petl.json").read_text())
    assert meta["backbone"]["name"] == "upp-tiny" and meta["backbone"]["fingerprint"] == model.backbone_fingerprint

    again = load_model(out).eval()
    for a, b in zip(_features(model), _features(again)):
        assert torch.equal(a, b)


def test_checkpoint_for_another_backbone_is_refused_clearly(tmp_path, tiny_cfg):
    model = build_model(tiny_cfg)
    save_petl(model, tmp_path / "ckpt")
    other = build_model(dataclasses.replace(tiny_cfg, name="ViT-B-16", image_size=(64, 32)))
    with pytest.raises(CheckpointMismatchError) as err:
        load_petl(other, tmp_path / "ckpt")
    msg = str(err.value)
    assert "backbone: checkpoint 'upp-tiny', model 'ViT-B-16'" in msg
    assert "image size" in msg


def test_random_init_is_reproducible(tiny_cfg):
    torch.manual_seed(1)
    a = build_model(tiny_cfg)
    torch.manual_seed(2)
    b = build_model(tiny_cfg)
    assert a.backbone_fingerprint == b.backbone_fingerprint
    assert torch.equal(a.clip.token_embedding.weight, b.clip.token_embedding.weight)


def test_checkpoint_for_other_backbone_weights_is_refused(tmp_path, tiny_cfg):
    cfg = _save_backbone(tmp_path, tiny_cfg)
    model = build_model(cfg)
    save_petl(model, tmp_path / "ckpt")
    other = build_model(_save_backbone(tmp_path, tiny_cfg, "other", noise=0.01))  # same architecture, other weights
    with pytest.raises(CheckpointMismatchError, match="backbone weights differ"):
        load_petl(other, tmp_path / "ckpt")
    load_petl(other, tmp_path / "ckpt", strict_backbone=False)  # opt-in: only a warning


def test_checkpoint_with_other_components_is_refused(tmp_path, tiny_cfg):
    save_petl(build_model(tiny_cfg), tmp_path / "ckpt")
    no_lora = build_model(dataclasses.replace(tiny_cfg, lora=dataclasses.replace(tiny_cfg.lora, enabled=False)))
    with pytest.raises(CheckpointMismatchError, match="parameter\\(s\\) the model does not have"):
        load_petl(no_lora, tmp_path / "ckpt")


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no UP-Person checkpoint"):
        load_model(tmp_path / "nothing")


def test_pretrained_file_is_loaded_with_bilinear_position_resize(tmp_path, tiny_cfg):
    # a backbone "trained" at a square 48x48 (6x6 grid), loaded at 48x16 (6x2 grid)
    square = dataclasses.replace(tiny_cfg, image_size=(48, 48))
    clip = create_clip(square)
    path = tmp_path / "square.safetensors"
    state = {k: v.contiguous() for k, v in clip.state_dict().items()}
    save_file(state, str(path))
    model = build_model(dataclasses.replace(tiny_cfg, pretrained=str(path)))
    pos = model.clip.visual.positional_embedding.detach()
    src = state["visual.positional_embedding"]
    assert pos.shape == (1 + 6 * 2, src.shape[1])
    assert torch.equal(pos[0], src[0])  # the CLS row is kept
    # the explicit bilinear rule for 6 -> 2 columns, align_corners=False: x_src = (x + 0.5) * 3 - 0.5
    grid = src[1:].reshape(6, 6, -1)
    # (bicubic or antialiased resizing would mix neighbouring columns instead)
    ref = torch.stack([grid[:, 1], grid[:, 4]], dim=1).reshape(12, -1)
    assert torch.allclose(pos[1:], ref, atol=1e-6)
    # every other weight is loaded as is
    assert torch.equal(model.clip.token_embedding.weight, state["token_embedding.weight"])


def test_resize_is_not_open_clips_bicubic():
    pos = torch.randn(1 + 14 * 14, 8)
    ours = resize_pos_embed(pos, (24, 8))
    grid = pos[1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2)
    bicubic = torch.nn.functional.interpolate(grid, size=(24, 8), mode="bicubic", antialias=True)
    assert not torch.allclose(ours[1:], bicubic.permute(0, 2, 3, 1).reshape(-1, 8), atol=1e-3)


def test_wrong_pretrained_file_is_a_clear_error(tmp_path, tiny_cfg):
    path = tmp_path / "other.safetensors"
    save_file({"visual.conv1.weight": torch.zeros(3, 3, 3, 3)}, str(path))
    with pytest.raises(BackboneError, match="do not fit this backbone"):
        build_model(dataclasses.replace(tiny_cfg, pretrained=str(path)))
    with pytest.raises(BackboneError, match="neither a file nor an open_clip tag"):
        build_model(dataclasses.replace(tiny_cfg, pretrained=str(tmp_path / "absent.pt")))


def test_non_square_grids_resize_along_their_own_shape():
    pos = torch.randn(1 + 12 * 4, 8)  # a 12 x 4 grid (upp-tiny at 96 x 32)
    half = resize_pos_embed(pos, (6, 2))
    grid = pos[1:].reshape(1, 12, 4, 8).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(grid, size=(6, 2), mode="bilinear", align_corners=False)
    assert torch.allclose(half[1:], ref.permute(0, 2, 3, 1).reshape(12, 8))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch deprecates jit.script/save; the format remains
def test_openai_style_torchscript_archive_loads(tmp_path, tiny_cfg):
    # OpenAI's ViT-B-16.pt is a TorchScript archive of an fp16 model; make one of upp-tiny
    clip = create_clip(dataclasses.replace(tiny_cfg, image_size=(48, 48)))
    path = tmp_path / "tiny-openai-style.pt"
    torch.jit.save(torch.jit.script(clip.half()), str(path))
    model = build_model(dataclasses.replace(tiny_cfg, pretrained=str(path)))
    assert model.clip.token_embedding.weight.dtype == torch.float32
    assert torch.equal(model.clip.token_embedding.weight, clip.token_embedding.weight.float())
    assert torch.equal(model.clip.visual.positional_embedding[0], clip.visual.positional_embedding[0].float())


# ----------------------------------------------------------------------------- integrity (issue 10)


def _saved(tmp_path, tiny_cfg):
    cfg = _save_backbone(tmp_path, tiny_cfg)
    model = build_model(cfg).eval()
    _perturb(model)
    return model, save_petl(model, tmp_path / "ckpt")


def test_petl_json_records_the_weights_sha256(tmp_path, tiny_cfg):
    import hashlib

    _, out = _saved(tmp_path, tiny_cfg)
    meta = json.loads((out / "petl.json").read_text())
    assert meta["version"] == 3
    assert meta["sha256"] == hashlib.sha256((out / "petl.safetensors").read_bytes()).hexdigest()


@pytest.mark.parametrize("damage, fragment", [
    ("bitflip", "corrupted or truncated"),
    ("truncate", "corrupted or truncated"),
])
def test_damaged_weights_are_refused_naming_the_file(tmp_path, tiny_cfg, damage, fragment):
    model, out = _saved(tmp_path, tiny_cfg)
    w = out / "petl.safetensors"
    data = bytearray(w.read_bytes())
    if damage == "bitflip":
        data[len(data) - 7] ^= 0x10  # inside the last tensor's float32 bytes: a valid file, other numbers
    else:
        data = data[: len(data) // 3]
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorruptError, match=fragment) as err:
        load_model(out)
    assert str(w) in str(err.value)
    with pytest.raises(CheckpointCorruptError):
        load_petl(model, out)


def test_non_finite_weights_are_refused_even_with_a_matching_checksum(tmp_path, tiny_cfg):
    import hashlib

    model, out = _saved(tmp_path, tiny_cfg)
    w = out / "petl.safetensors"
    state = load_file(str(w))
    name = sorted(state)[0]
    state[name][0] = float("nan")
    save_file(state, str(w))
    meta = json.loads((out / "petl.json").read_text())
    meta["sha256"] = hashlib.sha256(w.read_bytes()).hexdigest()
    (out / "petl.json").write_text(json.dumps(meta))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(CheckpointCorruptError, match="non-finite") as err:
        load_petl(model, out)
    assert name in str(err.value) and str(w) in str(err.value)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # nothing was copied in


def test_version_1_checkpoint_without_checksum_loads_with_a_warning(tmp_path, tiny_cfg, caplog):
    model, out = _saved(tmp_path, tiny_cfg)
    meta = json.loads((out / "petl.json").read_text())
    meta.pop("sha256")
    (out / "petl.json").write_text(json.dumps(dict(meta, version=1)))
    with caplog.at_level("WARNING"):
        again = load_model(out).eval()
    assert "without a recorded checksum" in caplog.text
    for a, b in zip(_features(model), _features(again)):
        assert torch.equal(a, b)
    # a version-2 file that lost its checksum is not treated as an old one
    (out / "petl.json").write_text(json.dumps(dict(meta, version=2)))
    with pytest.raises(CheckpointCorruptError, match="records no sha256"):
        load_model(out)


def test_truncated_petl_json_is_one_clear_error(tmp_path, tiny_cfg):
    _, out = _saved(tmp_path, tiny_cfg)
    text = (out / "petl.json").read_text()
    (out / "petl.json").write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointCorruptError, match="petl.json"):
        load_model(out)


def test_recorded_backbone_path_is_relative_to_the_checkpoint(tmp_path, tiny_cfg, monkeypatch):
    _, out = _saved(tmp_path, tiny_cfg)
    meta = json.loads((out / "petl.json").read_text())
    assert meta["model"]["pretrained"] == "../backbone.safetensors"
    moved = tmp_path / "elsewhere" / "deep"
    moved.mkdir(parents=True)
    monkeypatch.chdir(moved)  # not the current directory
    assert load_model(out).backbone_fingerprint == meta["backbone"]["fingerprint"]


def test_failed_save_keeps_the_old_checkpoint(tmp_path, tiny_cfg, monkeypatch):
    import upperson.model.checkpoint as ckpt

    model, out = _saved(tmp_path, tiny_cfg)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def power_cut(*args, **kwargs):
        raise OSError(28, "No space left on device")

    _perturb(model)
    monkeypatch.setattr(ckpt, "save_file", power_cut)
    with pytest.raises(OSError):
        save_petl(model, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temp files, no half file
