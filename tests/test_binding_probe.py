"""``python -m analysis binding``: minimal pairs differ in the probed attribute only, are deterministic,
and are scored right (stub encoders whose similarities we control); per-attribute accuracy; CLI errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from analysis.__main__ import main
from analysis.binding.attributes import FIELDS, attribute_scores, read_attributes
from analysis.binding.output import (ATTRIBUTES_CSV, PAIRS_CSV, PER_PAIR_CSV, ProbeResult, attribute_table,
                                     difference_table, pair_table, write_tables)
from analysis.binding.pairs import CHANGED, PROBES, applies, draw_pairs, probes_for
from analysis.binding.scoring import accuracy, difference, pair_scores, score_pairs
from analysis.binding.texts import names_probe
from tests.conftest import tiny_model_config
from upperson.data.toypedes.attributes import COLOURS
from upperson.data.toypedes.captions import UPPER_PHRASE, canonical_colour
from upperson.embedded import zero_shot_config
from upperson.model import build_model
from upperson.model.checkpoint import save_petl

N = 4  # pairs per probe: each pair is two renders (~20 ms each)


@pytest.fixture(scope="module")
def pairs() -> dict:
    return {probe: draw_pairs(probe, N, seed=3, captions="fine") for probe in PROBES}


def test_twin_differs_in_the_probed_attribute_only(pairs):
    for probe, ps in pairs.items():
        assert len(ps) == N
        for p in ps:
            a, b = p.identity.to_dict(), p.twin.to_dict()
            assert {k for k in a if a[k] != b[k]} == set(CHANGED[probe]), (probe, a, b)
            assert applies(p.identity, probe)
            assert names_probe(p.caption, p.identity, probe), (probe, p.caption)
            diff = np.abs(np.asarray(p.image, dtype=np.int16) - np.asarray(p.twin_image, dtype=np.int16))
            assert diff.max() > 40, f"{probe}: the twin's image is (nearly) the same"
            if probe == "hair":  # the hair changes; below the shoulders only the contrast jitter's mean grey shifts
                below = diff[int(0.45 * p.image.height):]
                assert below.max() <= 3 < diff.max(), (below.max(), diff.max())
    swap = pairs["swap"][0]
    assert (swap.twin.upper_colour, swap.twin.lower_colour) == (swap.identity.lower_colour, swap.identity.upper_colour)


def test_text_twins_are_minimal_pairs(pairs):
    """The text side compares two captions that differ in the probed words only (with fine queries too)."""
    for probe in ("swap", "hair"):
        for p in pairs[probe]:
            mine, twin = p.text_caption.split(), p.twin_caption.split()
            assert len(mine) == len(twin)
            changed = [(a, b) for a, b in zip(mine, twin) if a != b and {a, b} != {"a", "an"}]  # (articles follow)
            if probe == "swap":  # the two colour words exchange places
                assert changed == [changed[0], changed[0][::-1]], (p.text_caption, p.twin_caption)
            else:
                assert len(changed) == 1, (p.text_caption, p.twin_caption)


def test_pairs_are_deterministic(pairs):
    again = draw_pairs("hair", 2, seed=3, captions="fine")  # pair i is the same for any n > i
    for p, q in zip(pairs["hair"], again):
        assert (p.identity, p.twin, p.view, p.caption, p.twin_caption) == (q.identity, q.twin, q.view, q.caption,
                                                                          q.twin_caption)
        assert p.image.tobytes() == q.image.tobytes() and p.twin_image.tobytes() == q.twin_image.tobytes()
    other = draw_pairs("hair", 1, seed=4, captions="template")[0]
    assert other.identity != pairs["hair"][0].identity
    assert other.caption.startswith(f"a {other.identity.gender} with ")


@pytest.mark.parametrize("domain", ["cuhk", "icfg", "rstp"])
def test_domain_pairs_are_minimal_pairs_in_the_domains_look(domain):
    """--domain: the domain's people, camera and annotators; the twins still differ in the probed binding only."""
    from upperson.data.toypedes.domains import DOMAINS

    probes = probes_for(domain)
    assert probes == tuple(p for p in PROBES if p != "umbrella" or DOMAINS[domain].attributes.umbrella > 0)
    for probe in probes:
        ps = draw_pairs(probe, 2, seed=3, captions="fine", domain=domain)
        for p in ps:
            a, b = p.identity.to_dict(), p.twin.to_dict()
            assert {k for k in a if a[k] != b[k]} == set(CHANGED[probe]), (domain, probe)
            assert names_probe(p.caption, p.identity, probe, domain), (domain, probe, p.caption)
            assert p.image.tobytes() != p.twin_image.tobytes()
            if domain == "icfg":  # ICFG-like annotators write head to toe, padded to 32 words and more
                assert len(p.caption.split()) >= 30, p.caption
        again = draw_pairs(probe, 1, seed=3, captions="fine", domain=domain)[0]
        assert (again.identity, again.caption, again.image.tobytes()) == (ps[0].identity, ps[0].caption,
                                                                         ps[0].image.tobytes())
        original = draw_pairs(probe, 1, seed=3, captions="fine")[0]  # the original stream is its own
        assert original.image.tobytes() != ps[0].image.tobytes()


def test_a_probe_the_domain_never_draws_is_refused():
    assert "umbrella" not in probes_for("icfg") and probes_for(None) == tuple(PROBES)
    with pytest.raises(ValueError, match="umbrella probe does not apply to domain icfg"):
        draw_pairs("umbrella", 1, domain="icfg")
    with pytest.raises(ValueError, match="unknown ToyPEDES domain 'mall'"):
        draw_pairs("swap", 1, domain="mall")


class UpperColourStub:
    """Sees one colour only: an image's feature is the one-hot of its identity's ``field`` colour
    (looked up by the image's bytes), a caption's the one-hot of the colour before its upper garment."""

    def __init__(self, pairs, field: str = "upper_colour"):
        self.by_image = {}
        for ps in pairs.values():
            for p in ps:
                self.by_image[p.image.tobytes()] = getattr(p.identity, field)
                self.by_image[p.twin_image.tobytes()] = getattr(p.twin, field)

    @staticmethod
    def onehot(colour: str) -> np.ndarray:
        v = np.zeros(len(COLOURS))
        v[COLOURS.index(colour)] = 1.0
        return v

    def images(self, images):
        return np.stack([self.onehot(self.by_image[im.tobytes()]) for im in images])

    def texts(self, texts):
        return np.stack([self.onehot(canonical_colour(UPPER_PHRASE.search(t).group(1))) for t in texts])


def reference_scores(ps, stub: UpperColourStub, side: str) -> list[float]:
    """What each pair must score, from the colours themselves (not through the features)."""
    out = []
    for p in ps:
        cap = canonical_colour(UPPER_PHRASE.search(p.caption).group(1))
        if side == "image":
            right, wrong = stub.by_image[p.image.tobytes()] == cap, stub.by_image[p.twin_image.tobytes()] == cap
        else:
            img = stub.by_image[p.image.tobytes()]
            text = canonical_colour(UPPER_PHRASE.search(p.text_caption).group(1))
            right, wrong = img == text, img == canonical_colour(UPPER_PHRASE.search(p.twin_caption).group(1))
        out.append(1.0 if right > wrong else 0.5 if right == wrong else 0.0)
    return out


@pytest.mark.parametrize("field, swap_expected", [("upper_colour", 1.0), ("lower_colour", 0.0)])
def test_scores_on_a_stub_that_sees_one_colour(pairs, field, swap_expected):
    stub = UpperColourStub(pairs, field)
    for probe, ps in pairs.items():
        scores = score_pairs(ps, stub)
        assert set(scores) == ({"image", "text"} if probe in ("swap", "hair") else {"image"})
        for side, got in scores.items():
            assert got.tolist() == reference_scores(ps, stub, side), (probe, side)
    swap = score_pairs(pairs["swap"], stub)
    # seeing the upper colour binds it: every swap is right; seeing the lower colour binds it backwards
    assert swap["image"].tolist() == [swap_expected] * N
    if field == "upper_colour":
        assert swap["text"].tolist() == [1.0] * N
        for probe in ("bag", "umbrella", "hair"):  # the upper colour is the same in both images: ties
            assert score_pairs(pairs[probe], stub)["image"].tolist() == [0.5] * N


def test_accuracy_and_ties():
    s = pair_scores([0.9, 0.2, 0.5, 0.1], [0.1, 0.3, 0.5, 0.0])
    assert s.tolist() == [1.0, 0.0, 0.5, 1.0]
    a = accuracy(s, resamples=200, seed=1)
    assert (a.value, a.n, a.ties, a.chance) == (62.5, 4, 1, 50.0)
    assert 0.0 <= a.low <= a.value <= a.high <= 100.0
    with pytest.raises(ValueError, match="finite"):
        pair_scores([np.nan], [0.0])


def test_attribute_scores_match_a_brute_force_reference():
    rng = np.random.default_rng(0)
    pids = [1, 2, 3, 4, 5]
    values = {"upper_colour": ["red", "red", "blue", "green", "blue"], "umbrella": [True, False, False, True, False]}
    attrs = {p: {f: (values[f][i] if f in values else "x") for f in FIELDS} for i, p in enumerate(pids)}
    gallery = [1, 1, 2, 3, 3, 4, 5, 5]
    queries = [1, 2, 3, 4, 5, 5]
    sims = rng.normal(size=(len(queries), len(gallery)))
    got = attribute_scores(sims, queries, gallery, attrs)
    assert set(got) == {*FIELDS, "umbrella (present)"}  # (no query's gender etc. is "absent")
    for f in ("upper_colour", "umbrella", "gender", "umbrella (present)"):
        field, present = f.split(" ")[0], f.endswith("(present)")
        hits, chances = [], []
        for qi, q in enumerate(queries):
            if present and attrs[q][field] is False:
                continue
            others = [j for j, g in enumerate(gallery) if g != q]
            best = max(others, key=lambda j: sims[qi, j])
            hits.append(float(attrs[gallery[best]][field] == attrs[q][field]))
            chances.append(np.mean([attrs[gallery[j]][field] == attrs[q][field] for j in others]))
        assert got[f][0].tolist() == hits, f
        assert got[f][1] == pytest.approx(100 * np.mean(chances)), f


def test_read_attributes_checks_the_file(tmp_path):
    good = {"identities": {"7": {f: "x" for f in FIELDS}}}
    path = tmp_path / "attributes.json"
    path.write_text(json.dumps(good))
    assert read_attributes(path, [7]) == {7: {f: "x" for f in FIELDS}}
    with pytest.raises(ValueError, match="identity 8 of the split is missing"):
        read_attributes(path, [8])
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not readable JSON"):
        read_attributes(path, [7])


def test_tables_and_paired_differences(tmp_path):
    zs, up = np.array([1, 0, 0.5, 0]), np.array([1, 1, 1, 0])
    results = []
    for probe, side in (("swap", "image"), ("swap", "text")):
        results.append(ProbeResult("zero-shot backbone", probe, side, accuracy(zs, resamples=100), zs))
        results.append(ProbeResult("UP-Person", probe, side, accuracy(up, resamples=100), up, "zero-shot backbone",
                                   difference(up, zs, resamples=100)))
    d = results[1].diff
    assert d.value == pytest.approx(100 * np.mean(up - zs)) and d.low <= d.value <= d.high
    attrs = {"UP-Person": {"bag": accuracy(np.array([1.0, 0.0]), chance=30.0, resamples=100)}}
    paths = write_tables(tmp_path, results, attrs, captions="fine", seed=0)
    assert [p.name for p in paths] == [PAIRS_CSV, PER_PAIR_CSV, ATTRIBUTES_CSV]
    rows = list(csv.DictReader(open(paths[0])))
    assert [(r["model"], r["side"], float(r["accuracy"])) for r in rows][:2] == [
        ("zero-shot backbone", "image", 37.5), ("UP-Person", "image", 75.0)]
    assert rows[0]["ties"] == "1" and rows[0]["diff"] == "" and rows[2]["captions"] == "template"
    assert (rows[1]["diff_vs"], float(rows[1]["diff"])) == ("zero-shot backbone", pytest.approx(37.5))
    per_pair = list(csv.DictReader(open(paths[1])))
    assert [float(r["score"]) for r in per_pair[:4]] == zs.tolist() and len(per_pair) == 16
    assert difference_table(results).splitlines()[2].startswith("| UP-Person | zero-shot backbone | swap | +37.5 |")
    table = attribute_table({**attrs, "zero-shot backbone": {}})  # (the figure: test_command_end_to_end)
    assert table.splitlines()[2] == "| bag | 30.0 | 50.0 [0.0, 100.0] | - |"
    assert pair_table(results).splitlines()[3].startswith("| swap (text) | 4 | 50 | 37.5 [")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    backbone = build_model(zero_shot_config(tiny_model_config()))
    save_file({k: v.contiguous() for k, v in backbone.clip.state_dict().items()}, str(d / "backbone.safetensors"))
    save_petl(build_model(tiny_model_config(pretrained=str(d / "backbone.safetensors"))), d / "upperson")
    return d / "upperson"


def test_command_end_to_end(checkpoint, tmp_path, capsys, monkeypatch):
    from upperson.data.toypedes import generate_toypedes

    monkeypatch.setenv("TQDM_DISABLE", "1")
    root = generate_toypedes(tmp_path / "data", preset="tiny", seed=0, splits=["test"]).parent
    out = tmp_path / "out"
    rc = main(["binding", "--checkpoint", str(checkpoint), "--data-root", str(root), "--pairs", "2",
               "--resamples", "50", "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    payload = json.loads(captured.out)
    assert {r["model"] for r in payload["pairs"]} == {"zero-shot backbone", "UP-Person (upperson)"}
    assert {(r["probe"], r["side"]) for r in payload["pairs"]} == {
        *((p, "image") for p in PROBES), ("swap", "text"), ("hair", "text")}
    assert all(r["n"] == 2 and r["chance"] == 50.0 for r in payload["pairs"])
    assert set(FIELDS) <= set(payload["attributes"]["UP-Person (upperson)"])
    assert all(("diff" in r) == (r["model"] != "zero-shot backbone") for r in payload["pairs"])
    assert {p.name for p in out.iterdir()} == {"binding.csv", "binding_per_pair.csv", "binding_attributes.csv",
                                               "README.md", "binding.png", "binding.svg"}

    # --domain: the original data root is refused for a domain's pairs (before any model is loaded) ...
    other = tmp_path / "other"
    assert main(["binding", "--checkpoint", str(checkpoint), "--data-root", str(root), "--domain", "cuhk",
                 "--out", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --data-root") and "original" in err and err.count("\n") == 1, err
    assert not other.exists()
    # ... and the domain's pairs leave out, out loud, a probe the domain never draws
    rc = main(["binding", "--checkpoint", str(checkpoint), "--domain", "icfg", "--no-attributes", "--pairs", "1",
               "--resamples", "20", "--out", str(other), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    payload = json.loads(captured.out)
    assert {r["probe"] for r in payload["pairs"]} == {"swap", "bag", "hair"}
    assert "domain icfg" in payload["details"]["pairs"] and "left out: umbrella" in payload["details"]["pairs"]
    assert "umbrella" in (other / "README.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--pairs", "0"], "--pairs must be from 1 to"),
    (["--data-root", "/nonexistent/toy"], "--data-root /nonexistent/toy: no such path"),
    (["--compare", "/nonexistent/run"], "--compare /nonexistent/run: no such folder"),
    (["--domain", "cuhk"], "--domain cuhk: the per-attribute part needs that domain's test split"),
])
def test_errors_are_one_line_and_change_nothing(args, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["binding", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()
