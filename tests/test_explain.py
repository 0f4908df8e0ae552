"""Explanations tied to the query (analysis/explain.py): the map follows the query, and on the
controlled ToyPEDES case a colour word's map lands on its garment.

The controlled case uses a stub model whose similarity is known (it binds each colour word to
the garment noun after it, and reads the top and the bottom half of the image); how often the
shipped model does the same is measured by ``python -m analysis explain --audit N``
(docs/explain.md), not asserted here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from analysis import explain as E
from analysis.__main__ import main
from tests.conftest import perturbed_tiny_model, random_image
from upperson.data import CLIP_MEAN, CLIP_STD, build_tokenizer, build_transforms
from upperson.data.toypedes.attributes import PALETTE
from upperson.data.toypedes.captions import LOWER_NOUNS, UPPER_NOUNS


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer("upp-tiny")


def _colour_direction(colour: str) -> torch.Tensor:
    """The colour's normalised pixel value minus mid-grey's, unit length (what the stub looks for)."""
    mean, std = torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
    v = (torch.tensor(PALETTE[colour]) / 255.0 - mean) / std - (torch.tensor([0.5, 0.5, 0.5]) - mean) / std
    return v / v.norm()


class StubBinder(nn.Module):
    """A model with a known binding. Image: per patch the mean normalised colour (``conv1``);
    feature = [mean patch of the top half, of the bottom half, 1]. Text: each colour word's
    direction goes to the half of the garment noun that follows it (upper nouns: top)."""

    def __init__(self, tokenizer) -> None:
        super().__init__()
        self.clip = nn.Module()
        self.clip.visual = nn.Module()
        conv = nn.Conv2d(3, 3, 8, stride=8, bias=False)
        with torch.no_grad():
            conv.weight.zero_()
            for c in range(3):
                conv.weight[c, c] = 1.0 / 64
        self.clip.visual.conv1 = conv
        emb = nn.Embedding(tokenizer.vocab_size, 3)
        self.upper_ids, self.lower_ids, self.colour_ids = set(), set(), set()
        with torch.no_grad():
            emb.weight.zero_()
            for colour in PALETTE:
                tid = int(tokenizer(colour)[0, 1])
                emb.weight[tid] = _colour_direction(colour)
                self.colour_ids.add(tid)
        for nouns, ids in ((UPPER_NOUNS, self.upper_ids), (LOWER_NOUNS, self.lower_ids)):
            for options in nouns.values():
                row = tokenizer(options[0])[0]
                ids.add(int(row[row.argmax() - 1]))  # the noun's last token
        self.clip.token_embedding = emb
        self.requires_grad_(False)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        p = self.clip.visual.conv1(x)
        half = p.shape[2] // 2
        one = torch.ones(x.shape[0], 1)
        return torch.cat([p[:, :, :half].mean((2, 3)), p[:, :, half:].mean((2, 3)), one], dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        e = self.clip.token_embedding(tokens)
        out = []
        for b in range(tokens.shape[0]):
            ids = tokens[b].tolist()
            top, bottom = torch.zeros(3), torch.zeros(3)
            for i, t in enumerate(ids):
                if t not in self.colour_ids:
                    continue
                noun = next((u for u in ids[i + 1:] if u in self.upper_ids | self.lower_ids), None)
                if noun in self.upper_ids:
                    top = top + e[b, i]
                elif noun in self.lower_ids:
                    bottom = bottom + e[b, i]
            out.append(torch.cat([top, bottom, torch.tensor([0.5])]))
        return torch.stack(out)


@pytest.mark.parametrize("upper,lower", [("red", "blue"), ("blue", "red")])
def test_colour_word_mass_lands_on_its_garment(tokenizer, upper, lower):
    case = E.garment_case(7, upper=upper, lower=lower)
    upper_only, lower_only = case.upper_rows & ~case.lower_rows, case.lower_rows & ~case.upper_rows
    assert upper_only.sum() > 20 and lower_only.sum() > 20  # the masks are real garments
    caption, iu, il = E.garment_caption(case.identity)
    pixels = build_transforms((96, 32), train=False)(case.image)
    ex = E.explain(StubBinder(tokenizer), tokenizer, pixels, caption, word_indices=[iu, il])
    assert ex.words[iu] == upper and ex.words[il] == lower
    assert E.mass_on_rows(ex.word_maps[iu], upper_only) > 0.5
    assert E.mass_on_rows(ex.word_maps[il], lower_only) > 0.5
    # and the reverse is not true: the upper word's map is not mostly on the lower garment
    assert E.mass_on_rows(ex.word_maps[iu], lower_only) < 0.5


@pytest.mark.parametrize("domain", ["cuhk", "icfg", "rstp"])
def test_a_domain_case_has_real_garment_masks_in_the_domains_camera(domain):
    """--audit-domain: the person from the domain's clothes and camera; the masks are still two garments, the
    upper one above the lower one, and the image is not the original ToyPEDES's."""
    case = E.garment_case(7, domain=domain)
    upper_only, lower_only = case.upper_rows & ~case.lower_rows, case.lower_rows & ~case.upper_rows
    assert upper_only.sum() > 5 and lower_only.sum() > 5, (domain, upper_only.sum(), lower_only.sum())
    assert np.flatnonzero(upper_only).mean() < np.flatnonzero(lower_only).mean()
    assert np.asarray(case.image).tobytes() != np.asarray(E.garment_case(7).image).tobytes()


def test_patch_relevance_is_gradient_times_input(tokenizer):
    """Against a reference computed here: autograd on the stub's own similarity, by the pixels' patch means."""
    model = StubBinder(tokenizer)
    pixels = torch.randn(3, 96, 32)
    tokens = tokenizer("a red shirt and blue jeans")[0]
    sim, pmap, tok = E.relevance(model, pixels, tokens)
    patches = F.avg_pool2d(pixels[None], 8).requires_grad_(True)  # (1, 3, 12, 4): the stub's conv1, by hand
    half = patches.shape[2] // 2
    f_img = torch.cat([patches[:, :, :half].mean((2, 3)), patches[:, :, half:].mean((2, 3)), torch.ones(1, 1)], -1)
    f_txt = model.encode_text(tokens[None])
    ref_sim = F.cosine_similarity(f_img, f_txt).sum()
    (g,) = torch.autograd.grad(ref_sim, [patches])
    np.testing.assert_allclose(pmap, (g * patches).sum(1)[0].detach().numpy(), rtol=1e-4, atol=1e-7)
    assert sim == pytest.approx(float(ref_sim.detach()), abs=1e-6)
    # word weights: the sum over each word's tokens; the stub's zero embeddings weigh nothing
    ex = E.explain(model, tokenizer, pixels, "a red t-shirt and blue jeans")
    assert ex.words == ["a", "red", "t-shirt", "and", "blue", "jeans"]
    assert ex.word_weights[[0, 2, 3, 5]].tolist() == [0, 0, 0, 0] and (ex.word_weights[[1, 4]] != 0).all()


def test_map_changes_with_the_query(tokenizer):
    """A real UP-Person (tiny, random backbone, perturbed components): one colour word changed, another map."""
    model = perturbed_tiny_model()
    pixels = torch.randn(3, 48, 16)
    a = E.explain(model, tokenizer, pixels, "a woman in a red coat and black trousers")
    b = E.explain(model, tokenizer, pixels, "a woman in a green coat and black trousers")
    assert a.patch_map.shape == (6, 2) and np.isfinite(a.patch_map).all()
    assert not np.allclose(a.patch_map, b.patch_map, rtol=1e-3, atol=1e-9)
    assert sorted(a.words[i] for i in a.word_maps) == ["black", "red"]
    assert not np.allclose(a.word_maps[a.words.index("black")], b.word_maps[b.words.index("black")])
    assert model.training is False and all(p.grad is None for p in model.parameters())
    with torch.inference_mode():  # as an app request may run it
        again = E.explain(model, tokenizer, pixels, "a woman in a red coat and black trousers")
    np.testing.assert_allclose(again.patch_map, a.patch_map, rtol=1e-6, atol=1e-12)


def test_cli_figure_and_json(tmp_path):
    img = random_image(tmp_path / "p.png", 0)
    out = tmp_path / "out"
    assert main(["explain", "--image", str(img), "--caption", "a man in a red shirt and blue jeans",
                 "--words", "shirt", "--out", str(out), "--no-progress"]) == 0
    data = json.loads((out / "explain.json").read_text())
    assert (out / "explain.png").stat().st_size > 0 and (out / "explain.svg").exists()
    assert [m["word"] for m in data["word_maps"]] == ["shirt"] and len(data["patch_map"]) == data["grid"][0]
    assert data["words"][data["word_maps"][0]["index"]] == "shirt"
    assert np.array(data["word_maps"][0]["map"]).shape == tuple(data["grid"])


@pytest.mark.parametrize("argv,needle", [
    (["--caption", "a red shirt", "--image", "missing.png"], "--image"),
    (["--audit", "1"], "--audit 1"),
    (["--audit", "3", "--caption", "x"], "--audit"),
    (["--audit-domain", "icfg"], "--audit-domain icfg sets the audit's persons: give --audit N"),
])
def test_cli_refusals_are_one_line(tmp_path, capsys, argv, needle):
    out = tmp_path / "out"
    assert main(["explain", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0]
    assert not out.exists()


def test_words_option_names_caption_words(tokenizer):
    assert E.word_indices_of("A red shirt, red shoes.", tokenizer, "red,shoes") == [1, 3, 4]
    assert E.word_indices_of("a red shirt", tokenizer, None) is None
    with pytest.raises(ValueError, match="'hat'"):
        E.word_indices_of("a red shirt", tokenizer, "hat")


def test_audit_writes_rates_with_intervals(tmp_path):
    model = perturbed_tiny_model()
    path = E.audit_files(model, build_tokenizer("upp-tiny"), 2, tmp_path, resamples=50)
    data = json.loads(path.read_text())
    assert data["cases"] == 2 and set(data["metrics"]) == {"upper", "lower", "both"} and data["domain"] == "original"
    assert json.loads(E.audit_files(model, build_tokenizer("upp-tiny"), 2, tmp_path / "icfg", resamples=50,
                                    domain="icfg").read_text())["domain"] == "icfg"
    for m in data["metrics"].values():
        assert 0 <= m["low"] <= m["value"] <= m["high"] <= 1
    assert 0 < data["uniform_map_mass"]["upper"] < 1
